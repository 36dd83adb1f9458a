"""tiny_init: a BPE tokenizer trained on the mix's texts and a random ~1M-parameter Llama.

The first stage of the CPU demo (`python -m hpcadapt`): the pipeline then pretrains it
into its own "Base" model and instruction-tunes that into "Instruct", so the whole
recipe runs with no model hub. Settings: `extra.vocab_size`, `extra.arch`, and the
TinyShape fields (`extra.hidden_size`, ...).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from hpcadapt.demo.tiny import TinyShape, build_model, build_tokenizer, save_pretrained_dir
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    extra = dict(spec.settings.get("extra", {}))
    texts = []
    for src in spec.data_sources:
        with open(src["path"], encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    shape = TinyShape(**{f.name: extra[f.name] for f in fields(TinyShape) if f.name in extra})
    tokenizer = build_tokenizer(texts, vocab_size=int(extra.get("vocab_size", 2048)))
    model = build_model(tokenizer, arch=extra.get("arch", "llama"), shape=shape, seed=spec.settings["seed"])
    save_pretrained_dir(model, tokenizer, Path(spec.staging_dir))
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "texts": len(texts)}
