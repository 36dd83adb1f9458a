"""Which attention kernel a stage uses, checked before any job starts.

The paper trained with flash-attention 2; most clusters' environments do not have the
`flash_attn` package, and transformers then fails at model load, hours into a queued
chain. So a flash implementation is checked where the stage will run (this Python for
local runs, the job's Python for Slurm) before anything is submitted, with the way out
named. `auto` is the user's explicit choice of a fallback: flash-attention where it is
importable on a GPU, sdpa otherwise; the choice is printed and kept in the manifest.
The kernel does not enter the stage hash: it changes speed, not what is computed.
"""

from __future__ import annotations

import importlib.util

from hpcadapt.errors import ModelError

# attn_implementation -> the module transformers imports for it
FLASH_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
CHOICES = ("auto", "sdpa", "eager", *FLASH_MODULES)


def check_choice(implementation: str) -> None:
    if implementation not in CHOICES:
        raise ModelError(f"model.attn_implementation is {implementation!r}; expected one of {', '.join(CHOICES)}")


def missing_flash_error(implementation: str, where: str) -> ModelError:
    return ModelError(
        f"model.attn_implementation={implementation} needs the {FLASH_MODULES[implementation]!r} package, which "
        f"is not importable {where}. Install flash-attn there, or run with model.attn_implementation=sdpa "
        f"(same results, slower), or model.attn_implementation=auto (flash-attention where available, sdpa "
        f"elsewhere)."
    )


def check_importable_here(implementation: str, where: str = "in this Python environment") -> None:
    """Refuse a flash implementation whose package this interpreter cannot import."""
    check_choice(implementation)
    module = FLASH_MODULES.get(implementation)
    if module and importlib.util.find_spec(module) is None:
        raise missing_flash_error(implementation, where)


def resolve(implementation: str, cuda: bool) -> str:
    """The implementation to load the model with. Flash kernels need a GPU and their package."""
    check_choice(implementation)
    if implementation == "auto":
        return "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    if implementation in FLASH_MODULES:
        if not cuda:
            raise ModelError(f"model.attn_implementation={implementation} needs a GPU, and this stage runs on the "
                             f"CPU; use model.attn_implementation=sdpa or auto")
        check_importable_here(implementation, "on this node")
    return implementation
