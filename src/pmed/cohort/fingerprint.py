"""``python -m pmed.cohort.fingerprint``: a small JSON that changes when the CDM changes.

DVC hashes files; a CDM in a database has none. The ``cdm_fingerprint`` stage (always run,
a few aggregate queries) writes ``<paths.interim>/cdm_fingerprint.json``; the cohort stage
depends on it, so ``dvc repro`` reruns the cohort exactly when the fingerprint differs.

Content (aggregates only, no person-level value): the engine and schemas, the
``cdm_source`` row when the CDM has that table, and for every table the cohort reads its
row count and latest date (the maximum of its required date columns). With params
``cohort.source.data_version`` set, the JSON holds that label instead and nothing is
queried (for a CDM whose release label is the version of record, or where counting is
too slow).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

from pmed import config
from pmed.cohort import extract, omop
from pmed.cohort.definition import CohortDefinition, parse_definition
from pmed.cohort.engine import Engine

OUTPUT = "cdm_fingerprint.json"


def _plain(value):
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()[:10] if not isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def table_summary(eng: Engine, table: str, date_columns: list[str]) -> dict:
    """{"rows": n, "max_date": ISO date or None} of one CDM table (one aggregate query)."""
    dates = [f"MAX(CAST({c} AS DATE))" for c in date_columns]
    latest = f"GREATEST({', '.join(dates)})" if len(dates) > 1 else (dates or ["NULL"])[0]
    n, last = eng.rows(f"SELECT COUNT(*), {latest} FROM {table}")[0]
    return {"rows": int(n), "max_date": _plain(last)}


def fingerprint(eng: Engine, d: CohortDefinition, data_version: str | None = None) -> dict:
    """The fingerprint of the CDM open in ``eng`` (see the module docstring)."""
    spec = d.source
    out: dict = {"engine": spec.engine, "cdm_schema": spec.cdm_schema,
                 "vocabulary_schema": spec.vocabulary}
    if data_version is not None:
        return out | {"data_version": str(data_version)}
    if eng.has_table("cdm_source"):
        names, rows = eng._fetch(eng.render("SELECT * FROM cdm_source"))
        out["cdm_source"] = [{k: _plain(v) for k, v in zip(names, r, strict=True)}
                             for r in sorted(rows, key=repr)]
    else:
        out["cdm_source"] = None
    tables = extract.cdm_tables(d)
    tables |= {t: dict(c) for t, c in omop.OPTIONAL_TABLES.items() if eng.has_table(t)}
    out["tables"] = {t: table_summary(eng, t, [c for c, f in cols.items() if f == "date"])
                     for t, cols in sorted(tables.items())}
    return out


def write_fingerprint(path: Path, params: dict | None = None) -> dict:
    """Open the CDM of params ``cohort.source``, write its fingerprint to ``path`` (JSON)."""
    params = config.load_params() if params is None else params
    d = parse_definition(params["cohort"])
    version = (params["cohort"].get("source") or {}).get("data_version")
    if version is not None:
        info = fingerprint(None, d, version)  # type: ignore[arg-type]
    else:
        eng = extract.open_cdm(config.workspace() / params["paths"]["omop"], d, threads=1)
        try:
            info = fingerprint(eng, d)
        finally:
            eng.close()
    if d.source.engine == "files":
        info["omop"] = params["paths"]["omop"]  # relative: the same in every clone
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return info


def main() -> None:
    """Write ``<paths.interim>/cdm_fingerprint.json``."""
    path = config.path("interim") / OUTPUT
    info = write_fingerprint(path)
    what = info.get("data_version") or f"{len(info.get('tables', {}))} tables"
    print(f"cdm_fingerprint: {path} ({info['engine']}, {what})")


if __name__ == "__main__":
    main()
