"""Settings every test needs: one thread, no network, no W&B service.

On 2 shared cores torch's own threading makes step times swing tenfold, and nothing in
a test may reach a model hub or W&B. DeepSpeed's JIT-compiled ops are cached in the
checkout's git-ignored .cache/ so only the first ZeRO-3 test pays for compiling them.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.pop("WANDB_API_KEY", None)
