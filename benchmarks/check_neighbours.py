"""How many kept neighbours per unlearned chunk the check's ``unique`` method needs
(docs/quality.md, "Separation, and the unique method"): its separation and agreement on a
finished validation run, and its wall time on a report, for each count.

    .venv/bin/python benchmarks/check_neighbours.py --eval build/check-eval --neighbours 2 4 \\
        [--report REPORT.json --root ROOT --model MODEL]

For each N it sets ``tda.attribution.check._NEIGHBOURS`` (the method's per-chunk count,
4 in tda) to N, runs ``python -m tda.jobs.quality.check_validation --eval EVAL
--check-method unique`` in this process (its figures are printed and written to
EVAL/check_validation.json, which the next N overwrites: each N's summary line is
printed here), and, with ``--report``, first times ``tda check REPORT --method unique``
on ROOT with MODEL (the check's own wall time, as its report header prints it; torch's
default threads, before the validation pins them to one).
"""

from __future__ import annotations

import argparse

from tda.attribution import check
from tda.attribution.attributor import Attributor
from tda.jobs.quality import check_validation
from tda.schemas import AttributionReport, CheckSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", required=True, help="A finished validation's --eval folder.")
    parser.add_argument("--neighbours", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--report", help="An attribution report (tda attribute --json).")
    parser.add_argument("--root", help="The report's index root.")
    parser.add_argument("--model", help="The report's model.")
    args = parser.parse_args()
    summary = []
    for n in args.neighbours:
        check._NEIGHBOURS = n
        timed = ""
        if args.report:  # first: the validation pins torch to one thread
            attributor = Attributor.from_root(args.root, model=args.model, device="cpu")
            with open(args.report) as handle:
                report = AttributionReport.from_json(handle.read())
            checked = attributor.check(report, CheckSettings(method="unique"))
            timed = f"; tda check of {args.report}: {checked.check.seconds:.1f} s"
        result = check_validation.main(["--eval", args.eval, "--check-method", "unique"])
        rho = [m["spearman_per_fact"] for m in result["methods"][:-1]]
        line = (f"neighbours {n}: oracle above every random draw "
                f"{result['oracle_separated']:.0%}, random mean drop "
                f"{result['methods'][-1]['check_mean_drop']:.2f}, Spearman per fact {rho}, "
                f"methods ranked {result['method_ranking_spearman']}, "
                f"{result['check_seconds_per_fact']} s per fact")  # fmt: skip
        summary.append(line + timed)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
