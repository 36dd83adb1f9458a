"""Rehearsing the whole pipeline on a CPU with stand-ins of the paper's real models.

`standins` builds tiny Base/Instruct model folders that carry the real tokenizers, chat
templates, special tokens and config families of Mistral-7B-v0.3, Llama-3.1-8B and
SmolLM-1.7B, so the traps of the real models show up on a laptop before a cluster run.
Importing this package is cheap: torch and transformers load only when a build runs.
"""

from hpcadapt.rehearsal.standins import (
    FAMILIES,
    FORMAT_VERSION,
    StandinError,
    StandinPair,
    StandinShape,
    StandinSourceMissing,
    build_standins,
)

__all__ = [
    "FAMILIES",
    "FORMAT_VERSION",
    "StandinError",
    "StandinPair",
    "StandinShape",
    "StandinSourceMissing",
    "build_standins",
]
