"""Packed CPT rows keep their documents apart: no token attends to another document's tokens.

The CPT stage packs document windows into rows (TRL's best-fit packing, padding-free: one
row per batch with position ids restarting at each document). Under sdpa, transformers
builds a block-diagonal causal mask from those position ids, but only when no KV cache is
in play; TRL's loss turns the cache off. Checked here on the trainer's own path: each
document's logits inside a packed batch equal its logits alone.
"""

from __future__ import annotations

import datasets
import torch
from trl import SFTConfig, SFTTrainer

from hpcadapt.demo.tiny import build_model, build_tokenizer


def test_packed_documents_do_not_attend_to_each_other(tmp_path):
    tokenizer = build_tokenizer(["Varnite is a red alloy that melts at 1200 K. Quelium is blue and strong."] * 30,
                                vocab_size=300)
    model = build_model(tokenizer)
    docs = [tokenizer(t)["input_ids"] for t in ("Varnite is a red alloy that melts at 1200 K.",
                                                "Quelium is blue and strong.", "Both are alloys.")]
    args = SFTConfig(output_dir=str(tmp_path), packing=True, max_length=64, per_device_train_batch_size=4,
                     use_cpu=True, bf16=False, report_to=[], completion_only_loss=False)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_dict({"input_ids": docs}))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (1, sum(map(len, docs)))  # one padding-free row holding all three
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 3
    model.eval()
    with torch.no_grad():
        _, packed = trainer.compute_loss(model, dict(batch), return_outputs=True)
        row = batch["input_ids"][0].tolist()
        for start, end in zip(starts, [*starts[1:], len(row)]):
            alone = model(torch.tensor([row[start:end]]), use_cache=False).logits[0]
            torch.testing.assert_close(packed.logits[0, start:end], alone, atol=1e-5, rtol=1e-5)
    # What the mask prevents: the same row without document boundaries gives other logits.
    with torch.no_grad():
        joined = model(batch["input_ids"], use_cache=False).logits[0]
    assert not torch.allclose(joined[starts[1]:starts[2]], packed.logits[0, starts[1]:starts[2]], atol=1e-3)
