"""The registry of merge methods: the one list the config, the plan, the engine and the kernels read.

A method written here, in one function, and registered with one call merges through run_merge
like the built-in ones: that is all a new method takes.
"""

import json
import subprocess
import sys

import pytest
import torch
from hpcadapt_merge import kernels, methods, run_merge
from hpcadapt_merge.config import ConfigError, load_config
from hpcadapt_merge.plan import build_plan
from merge_helpers import load_tensors, slerp_config
from test_engine import multi_config

BUILTIN = ("slerp", "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")


# ---- a toy method: the mean of the parents, times an optional `scale` ----------------------


def mean_job(job, out_fd, counts, extra):
    scale = job.params["scale"]
    kernels.elementwise(job, out_fd, counts, lambda chunks: sum(chunks) / len(chunks) * scale)
    return {"name": job.name, "method": job.method}


MEAN = methods.MergeMethod("mean", kernel=mean_job, parameters=(methods.Parameter("scale", 1.0, interval="(0, 2]"),))


@pytest.fixture
def mean_method():
    methods.register(MEAN)
    try:
        yield MEAN
    finally:
        methods.unregister(MEAN.name)


def mean_config(models, **parameters) -> dict:
    return {"merge_method": "mean", "models": [str(models[k]) for k in ("base", "tuned", "other")],
            "parameters": parameters, "dtype": "bfloat16"}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_registered_method_merges_through_the_normal_entry_point(models, tmp_path, mean_method, workers):
    summary = run_merge(mean_config(models, scale=0.5), tmp_path / "out", workers=workers, progress=False, fsync=False)
    merged = load_tensors(tmp_path / "out")
    parents = [load_tensors(models[k]) for k in ("base", "tuned", "other")]
    assert summary.tensors == len(merged) == len(parents[0])
    for name, out in merged.items():
        expected = sum(p[name] for p in parents) / 3 * 0.5  # elementwise in bf16: chunking changes no bit
        assert out.dtype == torch.bfloat16 and torch.equal(out.view(torch.int16), expected.view(torch.int16)), name
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["method"] == "mean" and report["parents"] == [models[k].name for k in ("base", "tuned", "other")]
    assert "# Merged model (mean)" in (tmp_path / "out" / "README.md").read_text()


def test_a_registered_method_gets_its_parameters_checked_and_defaulted(models, mean_method):
    plan = build_plan(load_config(mean_config(models)))
    assert {job.params["scale"] for job in plan.jobs} == {1.0}  # the entry's default
    assert plan.options == {"precise": None, "mergekit_sort": None, "random_seed": None}  # it reads none of them
    with pytest.raises(ConfigError, match=r"parameters.scale: 3.0 is outside \(0, 2\]"):
        load_config(mean_config(models, scale=3))
    with pytest.raises(ConfigError, match=r"mean takes no parameter\(s\) weight \(it takes scale\)"):
        load_config(mean_config(models, weight=1.0))


def test_registering_twice_or_a_reserved_name_is_refused(mean_method):
    with pytest.raises(ValueError, match="already registered"):
        methods.register(MEAN)
    with pytest.raises(ValueError, match="copied verbatim"):
        methods.register(methods.MergeMethod("copy", kernel=mean_job))
    with pytest.raises(ValueError, match="unknown option"):
        methods.MergeMethod("fast", kernel=mean_job, options=("turbo",))


# ---- the registry is what the config accepts ---------------------------------------------------


def valid_recipe(models, name: str) -> dict:
    return slerp_config(models) if name == "slerp" else multi_config(models, name)


def test_the_registered_names_are_the_methods_the_config_accepts(models, mean_method):
    assert methods.METHOD_NAMES == BUILTIN + ("mean",)
    for name in methods.METHOD_NAMES:
        recipe = mean_config(models) if name == "mean" else valid_recipe(models, name)
        assert load_config(recipe).method == name
    with pytest.raises(ConfigError) as refused:
        load_config({**valid_recipe(models, "ties"), "merge_method": "slurp"})
    assert str(refused.value) == f"unknown merge_method 'slurp'; this merger implements {', '.join(BUILTIN)}, mean"


def test_an_unregistered_method_is_refused_naming_the_registered_ones(models):
    methods.register(MEAN)
    methods.unregister(MEAN.name)
    assert methods.METHOD_NAMES == BUILTIN
    with pytest.raises(ConfigError, match=f"unknown merge_method 'mean'; this merger implements {', '.join(BUILTIN)}$"):
        load_config(mean_config(models))


@pytest.mark.parametrize("name", BUILTIN)
def test_each_method_takes_the_parameters_its_entry_declares(models, name):
    declared = sorted(p.name for p in methods.get(name).parameters)
    recipe = valid_recipe(models, name)
    recipe["parameters"] = {**recipe.get("parameters", {}), "no_such_parameter": 1}
    with pytest.raises(ConfigError,
                       match=rf"{name} takes no parameter\(s\) no_such_parameter \(it takes {', '.join(declared)}\)"):
        load_config(recipe)


def test_the_registry_imports_no_kernel_and_no_torch():
    script = ("import sys; import hpcadapt_merge.methods, hpcadapt_merge.config, hpcadapt_merge.plan; "
              "print(sorted(m for m in ('torch', 'hpcadapt_merge.kernels') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
