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
    """The Hydra task: validate, then run or submit with the launcher of `cluster.kind`
    (hpcadapt/launch/__init__.py), or report status.

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
        else:
            from hpcadapt.launch import launch

            launch(cfg)
    except HpcadaptError as e:
        print(f"\nhpcadapt: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the filesystem refused a write (full, quota, read-only): not a bug
        from hpcadapt.errors import write_failure

        why = write_failure(e)
        if why is None:
            raise
        where = e.filename or f"writing under {cfg.output_root}"
        print(f"\nhpcadapt: error: {where}: {why}. No stage was marked complete by this failure; free "
              f"space (or set output_root=... to another folder) and run the same command again.", file=sys.stderr)
        sys.exit(2)


def usage() -> str:
    """What `--help` says before Hydra's own help: the commands, and the choices shipped in conf/."""

    def names(group: str) -> str:
        return ", ".join(sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")))

    return f"""hpcadapt: domain adaptation of LLMs on Slurm (CPT -> SFT -> DPO/ORPO -> SLERP -> evaluation)

  python -m hpcadapt                                   the tiny CPU demo (+experiment=tiny_demo)
  python -m hpcadapt +experiment=NAME                  run an experiment here (cluster=local)
  python -m hpcadapt +experiment=NAME scale=rehearsal  the same on stand-ins with the real tokenizers, on a CPU
  python -m hpcadapt +grid=NAME                        compare strategies: one graph of shared stages, ranked
  python -m hpcadapt ... cluster=slurm cluster.partition=P   submit everything at once (or cluster=SITE)
  python -m hpcadapt ... dry_run=true                  the plan (and sbatch scripts); runs nothing
  python -m hpcadapt ... status=true                   where each stage stands, results when finished
  python -m hpcadapt ... --cfg job                     the composed config
  python -m hpcadapt.data fetch +experiment=NAME       download the paper's datasets (where there is network)
  python -m hpcadapt.chat MODEL_OR_STAGE_DIR           talk to a trained or merged model
  python -m hpcadapt verify STAGE_DIR|RUN_DIR          check finished stages file by file (sha256/xxh3)
  hpcadapt-merge RECIPE.yml OUT                        the standalone merger

  experiments: {names("experiment")}
  grids:       {names("grid")}
  clusters:    {names("cluster")}   (add your site's with --config-dir)
  deepspeed:   {names("deepspeed")}
  scales:      {names("scale")}

Hydra's own help follows.
"""


def main() -> None:
    import hydra

    from hpcadapt.config import register_configs

    if sys.argv[1:2] == ["verify"]:  # not a Hydra run: check finished folders against their manifests
        from hpcadapt.stagedir import main as verify

        sys.exit(verify(sys.argv[2:]))
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(usage())
    # `-v` is ours, not Hydra's: every stage's full output on the terminal.
    sys.argv = [a if a not in ("-v", "--verbose") else "verbose=true" for a in sys.argv]
    register_configs()
    sys.argv = [sys.argv[0], *with_default_experiment(sys.argv[1:])]
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
