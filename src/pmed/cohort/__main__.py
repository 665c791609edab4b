"""``python -m pmed.cohort --sql postgres|spark|duckdb``: print the extraction as one SQL script.

The script reads params.yaml ``cohort:`` and runs on any database holding the OMOP CDM v5.4
tables under their standard names, qualified by ``cohort.source.cdm_schema`` /
``vocabulary_schema`` when set (the cohort ends up in the temporary table ``cohort``). The
stage itself runs through notebooks/01_cohort.ipynb, on the engine of ``cohort.source``
(:mod:`pmed.cohort.engine`).
"""

from __future__ import annotations

import argparse

from pmed import config
from pmed.cohort.definition import parse_definition
from pmed.cohort.queries import DIALECTS, render_script


def main(argv: list[str] | None = None) -> None:
    """Print :func:`pmed.cohort.queries.render_script` for the chosen dialect."""
    parser = argparse.ArgumentParser(prog="python -m pmed.cohort", description=__doc__)
    parser.add_argument("--sql", required=True, choices=sorted(DIALECTS),
                        help="SQL dialect of the printed script")
    args = parser.parse_args(argv)
    print(render_script(parse_definition(config.load_params()["cohort"]), args.sql), end="")


if __name__ == "__main__":
    main()
