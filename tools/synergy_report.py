"""Write a synergy report from saved evaluation results (results.json of evaluate_models).

    python tools/synergy_report.py EVAL_DIR --merged merged --parents instruct orpo --out REPORT_DIR \
        [--t-spec '[{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"value": 0.5}]'] \
        [--n-boot 2000] [--seed 0]

Prints the summary; report.md, report.json and the PNG plots go to REPORT_DIR.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="folder holding results.json, or the file itself")
    parser.add_argument("--merged", required=True, help="name of the merged model in the results")
    parser.add_argument("--parents", required=True, nargs=2, metavar=("BASE", "OTHER"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--t-spec", default=None, help="the merge's t parameter as JSON (mergekit semantics)")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from hpcadapt.eval.results import EvalResults
    from hpcadapt.eval.synergy import synergy_report

    try:
        t_spec = json.loads(args.t_spec) if args.t_spec else None
    except json.JSONDecodeError as error:
        parser.error(f"--t-spec is not valid JSON: {error}")
    try:
        results = EvalResults.load(args.results)
        report = synergy_report(
            results,
            args.merged,
            tuple(args.parents),
            args.out,
            n_boot=args.n_boot,
            seed=args.seed,
            t_spec=t_spec,
            num_layers=args.num_layers,
        )
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results.table_text())
    print(report.summary_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
