"""A stage kind and a merge method of one's own: one file each that registers itself (and the
stage's YAML), nothing else touched.

The package lives in a temporary folder; the config names it in `plugins`, and a
`--config-dir` adds its stage YAML. The stage is IPO (DPO's identity-preference loss), a
preference method the paper did not use; the merge method is the parents' mean, scaled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from spine_helpers import FAST, write_toy_domain

from hpcadapt.config import ConfigError
from hpcadapt.stages import kinds

RECIPE = textwrap.dedent('''
    """IPO: preference optimisation with the identity loss (TRL's DPOTrainer, loss_type="ipo")."""
    from hpcadapt import preflight, tracking, training
    from hpcadapt.datamix import load_mix
    from hpcadapt.stages.kinds import PREFERENCE, REQUIRED, StageKind, register

    register(StageKind("ipo", __name__, trains=True, data_fields=PREFERENCE, chat=True, reads={"beta": REQUIRED}))


    def run(spec):
        from trl import DPOConfig, DPOTrainer

        env = training.setup(spec)
        s = spec.settings
        tokenizer = training.load_tokenizer(spec.input_model, spec)
        notes = preflight.ensure_chat_template(tokenizer, spec)
        dataset = load_mix(spec.data_sources, spec.kind, seed=s["seed"])
        args = DPOConfig(**training.with_extra({**training.trainer_kwargs(spec, env), "beta": s["beta"],
                                                "loss_type": "ipo", "max_length": s["max_length"]}, spec))
        model = training.load_model(spec.input_model, spec, env)
        notes += preflight.ensure_pad_token(tokenizer, model)
        trainer = DPOTrainer(model=model, ref_model=training.load_reference_model(spec, env, tokenizer), args=args,
                             train_dataset=dataset, processing_class=tokenizer)
        return {**training.train_and_save(trainer, tokenizer, spec, env, notes), "loss_type": args.loss_type}
''')
MERGE_METHOD = textwrap.dedent('''
    """The parents' mean times `scale`: a merge method registered in the merger's registry."""
    from hpcadapt_merge import kernels, methods


    def mean_job(job, out_fd, counts, extra):
        scale = job.params["scale"]
        kernels.elementwise(job, out_fd, counts, lambda chunks: sum(chunks) / len(chunks) * scale)
        return {"name": job.name, "method": job.method}


    methods.register(methods.MergeMethod("mean", kernel=mean_job, models=2,
                                         parameters=(methods.Parameter("scale", 1.0, interval="(0, 2]"),)))
''')
STAGE_YAML = textwrap.dedent('''
    # IPO from a plugin: preference pairs, beta as the paper's DPO.
    kind: ipo
    data: preference
    learning_rate: 2.0e-3
    beta: 0.1
    global_batch_size: 8
    per_device_train_batch_size: 8
    max_length: 128
    gradient_checkpointing: false
''')


@pytest.mark.slow
def test_a_new_preference_kind_is_one_file_and_one_yaml(tmp_path):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "ipo_stage.py").write_text(RECIPE)
    (package / "mean_merge.py").write_text(MERGE_METHOD)
    (tmp_path / "conf" / "stage").mkdir(parents=True)
    (tmp_path / "conf" / "stage" / "ipo.yaml").write_text(STAGE_YAML)
    write_toy_domain(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{package}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "hpcadapt", "--config-dir", str(tmp_path / "conf"), f"output_root={tmp_path}", *FAST,
         "wandb.enabled=false", "plugins=[ipo_stage,mean_merge]", "+stage@stages.ipo=ipo", "stages.ipo.max_steps=3",
         "pipeline.chain=[sft,ipo]", "pipeline.merge=true", "merge.method=mean", "+merge.parameters.scale=0.5"],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (manifest,) = [json.loads(p.read_text()) for p in tmp_path.glob("stages/ipo-*/manifest.json")]
    assert manifest["kind"] == "ipo" and manifest["metrics"]["loss_type"] == ["ipo"]  # TRL keeps a list
    assert manifest["metrics"]["steps"] == 3 and manifest["settings"]["beta"] == 0.1
    # The merge: the Instruct model and the IPO stage's, averaged and halved, tensor by tensor.
    from safetensors.torch import load_file

    (merged,) = tmp_path.glob("stages/merge-*")
    (ipo,) = tmp_path.glob("stages/ipo-*")
    recipe = json.loads((merged / "manifest.json").read_text())["settings"]
    assert recipe["method"] == "mean" and recipe["parameters"] == {"scale": 0.5}
    def weights(folder: Path) -> dict:
        return {k: v for shard in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(shard).items()}

    instruct = weights(json.loads((merged / "spec.json").read_text())["base_model"])
    tuned, out = weights(ipo), weights(merged)
    assert set(out) == set(tuned)
    for name, tensor in out.items():
        assert (tensor - (instruct[name] + tuned[name]) / 2 * 0.5).abs().max() < 1e-6, name


def test_settings_a_kind_does_not_read_are_refused_by_name():
    from spine_helpers import compose_cfg

    from hpcadapt.config import validate

    for override, message in (("stages.orpo.loss_type=ipo", r"stages\.orpo\.loss_type is set, but a orpo stage"),
                              ("stages.cpt.beta=0.1", r"stages\.cpt\.beta is set, but a cpt stage"),
                              ("stages.sft.max_prompt_length=64", r"stages\.sft\.max_prompt_length is set")):
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg([override]))
    with pytest.raises(ConfigError, match="stage kind 'ipo' is unknown"):
        validate(compose_cfg(["stages.orpo.kind=ipo"]))
    assert set(kinds.names(lambda k: k.chat)) == {"sft", "dpo", "orpo", "kto", "simpo"}
