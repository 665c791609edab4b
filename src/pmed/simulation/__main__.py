"""``python -m pmed.simulation``: run the simulation study, write its report (default build/simulation/).

Settings come from params.yaml ``simulation`` (master seed, replicates, persons per data set,
scenarios); the options below override them. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pmed import config
from pmed.simulation import design, report, study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pmed.simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/simulation"), help="output folder")
    parser.add_argument("--replicates", type=int, help="R data sets per scenario (params: simulation.replicates)")
    parser.add_argument("--n-persons", type=int, help="persons simulated per data set (simulation.n_persons)")
    parser.add_argument("--workers", type=int, help="worker processes (simulation.workers)")
    parser.add_argument("--estimands", help=f"comma-separated subset of {','.join(design.ESTIMANDS)} (default all)")
    parser.add_argument("--from-run", type=Path,
                        help="re-summarise the replicate table of an earlier run's folder (no simulation)")
    parser.add_argument("--max-minutes", type=float,
                        help="start no new batch of replicates after this many minutes (default: no limit)")
    args = parser.parse_args(argv)
    if args.from_run is not None:
        result, text = report.read_run(args.from_run)
        paths = report.write_outputs(result, args.out, text)
        print(f"simulation: re-summarised {args.from_run} into {paths['report']}", file=sys.stderr)
        return
    params = config.load_params()
    chosen = tuple(e.strip() for e in args.estimands.split(",") if e.strip()) if args.estimands else None
    settings = study.Settings.from_params(params, replicates=args.replicates, n_persons=args.n_persons,
                                          workers=args.workers, estimands=chosen)
    settings.max_minutes = args.max_minutes
    result = study.run(settings)
    text = {"master seed": settings.seed, "replicates per scenario": settings.replicates,
            "persons simulated per data set": settings.n_persons,
            "imaged persons per imaging data set": settings.n_imaged,
            "persons in the population-truth sample": settings.truth_n_persons,
            "scenarios": "; ".join(f"{s.name} (heterogeneity {s.heterogeneity}, image signal {s.image_signal}: "
                                   f"{', '.join(settings.groups(s))})" for s in settings.scenarios),
            "stage settings": "params.yaml survival, outcomes, treatment, imaging_analysis (as the stages)"}
    paths = report.write_outputs(result, args.out, text)
    print(f"simulation: wrote {paths['report']} and {paths['metrics']}", file=sys.stderr)


if __name__ == "__main__":
    main()
