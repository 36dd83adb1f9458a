"""`hpcadapt-merge CONFIG OUT`: the merger from the command line."""

from __future__ import annotations

import argparse
import os
import sys

from .checkpoint import CheckpointError
from .config import ConfigError, MergeError


def parse_size(text: str) -> int:
    """'5GB', '500M', '1e9' -> bytes (decimal units, like mergekit's --out-shard-size)."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    clean = text.strip().upper().rstrip("B")
    if clean and clean[-1] in units:
        return int(float(clean[:-1]) * units[clean[-1]])
    return int(float(clean))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcadapt-merge",
                                     description="Merge two or more safetensors checkpoints (mergekit-style YAML).")
    parser.add_argument("config", help="mergekit-style YAML recipe")
    parser.add_argument("out", nargs="?", help="output model folder (created atomically)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--plan", action="store_true",
                        help="dry run: print per tensor the method, t, sources and output shard")
    parser.add_argument("--plot-schedule", metavar="PNG", help="draw the t schedule over depth into this PNG")
    parser.add_argument("--out-shard-size", default="5GB", help="maximum output shard size (default 5GB)")
    parser.add_argument("--precise", action="store_true",
                        help="linear, task arithmetic, TIES, DARE: keep intermediates in float32 instead of rounding "
                             "each step to the recipe's dtype as mergekit does")
    parser.add_argument("--mergekit-sort", action="store_true",
                        help="TIES: among equal magnitudes at the density cut keep the ones torch's sort puts first, "
                             "as mergekit does (holds each tensor's |delta| and its sort indices: ~16 bytes per "
                             "element); default: the first by position")
    parser.add_argument("--random-seed", type=int, default=None, metavar="N",
                        help="DARE's seed (default 0); the same N as mergekit-yaml --random-seed N gives the same "
                             "masks")
    parser.add_argument("--no-fsync", action="store_true",
                        help="publish without waiting for the output to reach the disk")
    parser.add_argument("--fail-on-nonfinite", action="store_true",
                        help="a NaN or Inf in any input or output is an error; nothing is published")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, CheckpointError, FileExistsError) as error:
        return _error(str(error), 2)
    except MergeError as error:
        return _error(str(error), 1)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        return _error(f"{where}{error.strerror or error}", 1)
    except KeyboardInterrupt:
        kept = ""
        if args.out:
            out = os.path.abspath(args.out)
            staging = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")
            if os.path.isdir(staging):
                kept = f"; the finished tensors are kept in {staging}: run the same command again to resume"
        return _error(f"interrupted{kept}", 130)


def _error(message: str, code: int) -> int:
    print(f"hpcadapt-merge: error: {message}", file=sys.stderr)
    return code


def _run(args) -> int:
    from .config import load_config
    from .plan import build_plan, format_plan

    shard_size = parse_size(args.out_shard_size)
    if args.plan or args.plot_schedule:
        plan = build_plan(load_config(args.config), shard_size=shard_size, precise=args.precise,
                          mergekit_sort=args.mergekit_sort)
        if args.plan:
            print(format_plan(plan))
        if args.plot_schedule:
            from .plot import plot_schedule

            t_spec = plan.config.parameters.get("t")
            if t_spec is None:
                raise ConfigError(f"--plot-schedule: {plan.config.method} has no t schedule to draw")
            print(f"schedule drawn to {plot_schedule(t_spec, plan.num_layers, args.plot_schedule)}", file=sys.stderr)
        if args.plan or not args.out:
            return 0
    if not args.out:
        raise ConfigError("give an output folder: hpcadapt-merge CONFIG OUT")
    from .engine import run_merge

    run_merge(args.config, args.out, workers=args.workers, force=args.force, progress=not args.no_progress,
              shard_size=shard_size, precise=args.precise, mergekit_sort=args.mergekit_sort,
              random_seed=args.random_seed, fsync=not args.no_fsync, fail_on_nonfinite=args.fail_on_nonfinite)
    return 0


def console() -> None:
    """The `hpcadapt-merge` command. It imports torch without its tracing-only modules (see
    kernels._lean_import; HPCADAPT_MERGE_FULL_TORCH=1 turns that off, and a torch that will not
    import so is imported in full by running the command again). Once the merge is published there
    is nothing left to clean up, and unloading torch is ~0.5 s of interpreter teardown: leave
    without it."""
    from . import kernels

    kernels.lean_import = not os.environ.get("HPCADAPT_MERGE_FULL_TORCH")
    try:
        code = main()
    except kernels.LeanImportFailed:
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "hpcadapt_merge.cli", *sys.argv[1:]],
                  {**os.environ, "HPCADAPT_MERGE_FULL_TORCH": "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
