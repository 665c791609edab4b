"""Command line: ``python -m pmed.demo --size default|ci|benchmark [--out DIR] [--seed N]
[--no-image-signal] [--no-heterogeneity]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pmed import config
from pmed.demo.generate import generate


def main(argv: list[str] | None = None) -> None:
    """Generate the demo data set with the sizes/rates of params.yaml ``demo``."""
    params = config.load_params()
    demo = params["demo"]
    parser = argparse.ArgumentParser(prog="python -m pmed.demo", description=__doc__)
    parser.add_argument("--size", default=demo["size"], choices=sorted(demo["sizes"]),
                        help="entry of params.yaml demo.sizes (default: demo.size)")
    parser.add_argument("--out", type=Path, default=config.path("raw"),
                        help="output folder (default: data/raw of the workspace)")
    parser.add_argument("--seed", type=int, default=params["common"]["seed"],
                        help="master seed (default: common.seed)")
    parser.add_argument("--workers", type=int, default=demo["imaging_workers"],
                        help="processes rendering CTs (default: demo.imaging_workers)")
    parser.add_argument("--image-signal", action=argparse.BooleanOptionalAction,
                        default=demo.get("image_signal", True),
                        help="tumour traits affect hazard; --no-image-signal: trait log-HRs 0, null "
                             "data for the added value of imaging (default: demo.image_signal)")
    parser.add_argument("--heterogeneity", action=argparse.BooleanOptionalAction,
                        default=demo.get("heterogeneity", True),
                        help="arm effects vary with PD-L1 and driver status; --no-heterogeneity: constant "
                             "effect per arm, no interaction (default: demo.heterogeneity)")
    args = parser.parse_args(argv)
    gt = generate(args.out, args.size, args.seed, demo, workers=args.workers, image_signal=args.image_signal,
                  heterogeneity=args.heterogeneity)
    print(f"pmed.demo: wrote {gt['n_persons']} persons ({gt['n_eligible']} eligible) to {args.out}")


if __name__ == "__main__":
    main()
