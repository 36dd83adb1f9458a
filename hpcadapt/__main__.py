"""`python -m hpcadapt [+experiment=NAME] [overrides...]`: compose, check, run or submit.

    python -m hpcadapt                                  # the tiny CPU demo (+experiment=tiny_demo)
    python -m hpcadapt +experiment=mistral_orpo_slerp --cfg job    # print the composed config
    python -m hpcadapt +experiment=mistral_orpo_slerp cluster=slurm   # submit the chain to Slurm
    python -m hpcadapt -m +experiment=tiny_demo stages.cpt.learning_rate=1e-3,2e-3   # sweep

Nothing heavy is imported here: composing and printing a config, or submitting to
Slurm from a login node, never imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_EXPERIMENT = "tiny_demo"


def conf_dir() -> Path:
    """The shipped configs: inside the package in a wheel, top-level `conf/` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"hpcadapt's configs are missing: neither {here / 'conf'} nor {here.parent / 'conf'} exists")


def with_default_experiment(argv: list[str]) -> list[str]:
    """Add `+experiment=tiny_demo` unless the user chose an experiment or a grid (or asked for help).

    Hydra's parser takes overrides as one run of positional arguments, so the default goes
    right before the user's first override (or last, when there is none), never apart.
    """
    chosen = any(a.lstrip("+~").startswith(("experiment=", "grid=")) for a in argv)
    helping = any(a in ("-h", "--help", "--hydra-help") for a in argv)
    if chosen or helping:
        return argv
    first = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
    return [*argv[:first], f"+experiment={DEFAULT_EXPERIMENT}", *argv[first:]]


def run(cfg) -> None:
    """The Hydra task: validate, then run locally, submit to Slurm, or report status.

    A config is one pipeline, or a grid of strategies (`+grid=...`); either is planned as one
    graph of unique stages by the preparation every launcher shares (hpcadapt/launch/prepare.py).
    """
    from hpcadapt.config import validate
    from hpcadapt.errors import HpcadaptError

    try:
        validate(cfg)
        if cfg.status:
            from hpcadapt.launch.status import print_status

            print_status(cfg)
        elif cfg.cluster.kind == "slurm":
            from hpcadapt.launch.slurm_sweep import in_multirun

            if in_multirun():  # the SweepToArrays callback submits every point at the end
                print(
                    f"hpcadapt: sweep point {cfg.pipeline.name} checked; submitted with the others when the sweep ends"
                )
                return
            from hpcadapt.launch.prepare import graph_name, prepare
            from hpcadapt.launch.slurm_submit import submit_graph

            submit_graph(prepare([cfg], graph_name(cfg)))
        else:
            from hpcadapt.launch.local import run_local

            run_local(cfg)
    except HpcadaptError as e:
        print(f"\nhpcadapt: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    import hydra

    from hpcadapt.config import register_configs

    register_configs()
    sys.argv = [sys.argv[0], *with_default_experiment(sys.argv[1:])]
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
