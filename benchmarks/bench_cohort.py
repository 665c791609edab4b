"""Benchmark: cohort extraction in DuckDB vs a straightforward pandas version.

Usage::

    python benchmarks/bench_cohort.py --persons 100000 1000000 [--workdir /tmp/bench_cohort]
    python benchmarks/bench_cohort.py --omop DIR        # an existing OMOP folder

``--persons N`` generates the demo's EHR-only ``benchmark`` size with N persons (the demo's
own CLI has no size override, so this calls :func:`pmed.demo.generate.generate` with
``demo.sizes.benchmark.n_persons = N``) into ``<workdir>/p<N>/raw`` unless it is there.
Each engine runs in its own subprocess (so peak RSS is its own), prints wall time, CPU time
(user + system, whole process incl. imports; less sensitive than wall time to other load on
a shared machine) and peak RSS, and the cohorts are compared for equality.

The pandas version below implements the same definition (params.yaml ``cohort:``) the
obvious way: read the needed columns of each table into memory, filter, merge, group.
It skips the data-quality counts (a like-for-like comparison of the extraction itself;
the DuckDB timing is reported both with and without them).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pmed import config
from pmed.cohort import contract, parse_definition
from pmed.cohort.definition import OUTCOME_TABLES, CohortDefinition


def _read(folder: Path, table: str, columns: list[str]) -> pd.DataFrame:
    path = folder / f"{table}.parquet"
    if path.exists():
        return pd.read_parquet(path, columns=columns)
    return pd.read_csv(folder / f"{table}.csv", usecols=columns)


def _expand(folder: Path, d: CohortDefinition) -> tuple[dict[str, set[int]], pd.DataFrame]:
    """Concept sets with descendants, and concept_ancestor itself."""
    ca = _read(folder, "concept_ancestor", ["ancestor_concept_id", "descendant_concept_id"])
    out = {}
    for name, ids in d.concept_sets.items():
        desc = ca.loc[ca["ancestor_concept_id"].isin(ids), "descendant_concept_id"]
        out[name] = set(ids) | (set(desc) if d.include_descendants else set())
    return out, ca


def _days(a: pd.Series, b: pd.Series) -> pd.Series:
    return (pd.to_datetime(b) - pd.to_datetime(a)).dt.days


def _in(off: pd.Series, window) -> pd.Series:
    lo, hi = window
    return ((off >= lo) if lo is not None else True) & ((off <= hi) if hi is not None else True)


def _value_levels(c, ca: pd.DataFrame, include_descendants: bool) -> dict[int, str | None]:
    """value concept id -> level column (None = reference), descendants added when asked."""
    own = {v: lvl for lvl, vs in c.levels.items() for v in vs} | {v: None for v in c.reference}
    out = dict(own)
    if include_descendants:
        for v, lvl in own.items():
            for desc in ca.loc[ca["ancestor_concept_id"] == v, "descendant_concept_id"]:
                if desc not in own:
                    out.setdefault(int(desc), lvl)
    return out


def _outcome_dates(folder: Path, o, sets: dict, x: pd.DataFrame) -> pd.Series:
    """person_id -> first qualifying event date of outcome ``o`` more than blanking days after t0."""
    concept_col, date_col = OUTCOME_TABLES[o.table]
    cols = ["person_id", concept_col, date_col]
    if o.table in ("measurement", "observation"):
        cols += ["value_as_number", "unit_concept_id", "value_as_concept_id"]
    if o.visit_concept_ids and o.table != "visit_occurrence":
        cols.append("visit_occurrence_id")
    t = _read(folder, o.table, cols).merge(x[["person_id", "t0_date"]], on="person_id")
    t[date_col] = pd.to_datetime(t[date_col])
    keep = _days(t["t0_date"], t[date_col]) > o.blanking_days
    if o.concept_set:
        keep &= t[concept_col].isin(sets[o.concept_set])
    if o.visit_concept_ids and o.table == "visit_occurrence":
        keep &= t["visit_concept_id"].isin(o.visit_concept_ids)
    elif o.visit_concept_ids:
        v = _read(folder, "visit_occurrence", ["visit_occurrence_id", "visit_concept_id"])
        keep &= t["visit_occurrence_id"].isin(
            v.loc[v["visit_concept_id"].isin(o.visit_concept_ids), "visit_occurrence_id"])
    if o.value_range is not None:
        keep &= t["value_as_number"].notna() & _in(t["value_as_number"], o.value_range)
    if o.unit_concept_ids:
        keep &= t["unit_concept_id"].fillna(0).isin(o.unit_concept_ids)
    if o.value_concept_ids:
        keep &= t["value_as_concept_id"].isin(o.value_concept_ids)
    return t[keep].groupby("person_id")[date_col].min()


def pandas_cohort(folder: Path, d: CohortDefinition) -> pd.DataFrame:
    """The cohort of ``d`` computed with pandas only (same rules as pmed.cohort.queries)."""
    sets, ca = _expand(folder, d)
    st = d.strategies
    co = _read(folder, "condition_occurrence", ["person_id", "condition_concept_id",
                                                 "condition_start_date"])
    co["condition_start_date"] = pd.to_datetime(co["condition_start_date"])
    dx = (co[co["condition_concept_id"].isin(sets[d.target_concept_set])]
          .groupby("person_id", as_index=False)["condition_start_date"].min()
          .rename(columns={"condition_start_date": "index_date"}))
    op = _read(folder, "observation_period", ["person_id", "observation_period_start_date",
                                              "observation_period_end_date"])
    for c in ("observation_period_start_date", "observation_period_end_date"):
        op[c] = pd.to_datetime(op[c])
    person = _read(folder, "person", ["person_id", "gender_concept_id", "year_of_birth",
                                      "month_of_birth", "day_of_birth"])
    month, day = person["month_of_birth"].fillna(1).astype(int), person["day_of_birth"].fillna(1).astype(int)
    person["birth"] = pd.to_datetime(pd.DataFrame({"year": person["year_of_birth"],
                                                   "month": month, "day": day}))
    death = _read(folder, "death", ["person_id", "death_date"])
    death["death_date"] = pd.to_datetime(death["death_date"])
    bad = set(death.merge(person, on="person_id").query("death_date < birth")["person_id"])
    bad |= set(op.loc[op["observation_period_end_date"] < op["observation_period_start_date"],
                      "person_id"])
    bad |= set(dx.merge(person, on="person_id").query("index_date < birth")["person_id"])
    x = dx[~dx["person_id"].isin(bad)].merge(op, on="person_id")
    x = x[(x["observation_period_start_date"] <= x["index_date"])
          & (x["observation_period_end_date"] >= x["index_date"])
          & (_days(x["observation_period_start_date"], x["index_date"]) >= d.prior_observation_days)]
    x = (x.groupby(["person_id", "index_date"], as_index=False)["observation_period_end_date"]
         .max().rename(columns={"observation_period_end_date": "obs_end_date"}))
    x = x.merge(person, on="person_id")
    month, day = x["month_of_birth"].fillna(1).astype(int), x["day_of_birth"].fillna(1).astype(int)
    completed = (x["index_date"].dt.year - x["year_of_birth"]
                 - ((x["index_date"].dt.month * 100 + x["index_date"].dt.day) < month * 100 + day))
    x["age_years"] = (x["index_date"] - x["birth"]).dt.days / 365.25
    x["sex_female"] = np.select([x["gender_concept_id"] == d.female_concept_id,
                                 x["gender_concept_id"] == d.male_concept_id], [1.0, 0.0], np.nan)
    keep = completed >= d.min_age_years
    if d.max_age_years is not None:
        keep &= completed <= d.max_age_years
    x = x[keep]
    excl_ids = set().union(*(sets[s] for s in d.exclusion_concept_sets))
    ex = co[co["condition_concept_id"].isin(excl_ids)].merge(x[["person_id", "index_date"]])
    ex = ex[_in(_days(ex["index_date"], ex["condition_start_date"]), d.exclusion_window)]
    x = x[~x["person_id"].isin(ex["person_id"])]
    de = _read(folder, "drug_exposure", ["person_id", "drug_concept_id",
                                         "drug_exposure_start_date"])
    de["drug_exposure_start_date"] = pd.to_datetime(de["drug_exposure_start_date"])
    de = de[de["drug_concept_id"].isin(set().union(*(sets[s] for s in st.drug_sets)))]
    de = de.merge(x[["person_id", "index_date"]], on="person_id")
    before = de.loc[de["drug_exposure_start_date"] < de["index_date"], "person_id"]
    x = x[~x["person_id"].isin(before)]
    de = de[de["person_id"].isin(x["person_id"])]
    t0 = de.groupby("person_id", as_index=False)["drug_exposure_start_date"].min().rename(
        columns={"drug_exposure_start_date": "t0_date"})
    x = x.merge(t0, on="person_id")
    x["days_dx_to_treatment"] = _days(x["index_date"], x["t0_date"])
    x = x[x["days_dx_to_treatment"].between(0, st.max_days_after_index)
          & (x["t0_date"] <= x["obs_end_date"])]
    grace = de.merge(x[["person_id", "t0_date"]], on="person_id")
    grace = grace[_days(grace["t0_date"], grace["drug_exposure_start_date"]).between(0, st.grace_days)]
    started = {s: set(grace.loc[grace["drug_concept_id"].isin(sets[s]), "person_id"])
               for s in st.drug_sets}
    x["treatment"] = None
    for label, arm in st.arms.items():
        match = np.ones(len(x), dtype=bool)
        for s in arm.all_of:
            match &= x["person_id"].isin(started[s]).to_numpy()
        for s in arm.none_of:
            match &= ~x["person_id"].isin(started[s]).to_numpy()
        x.loc[match, "treatment"] = label
    x = x[x["treatment"].notna()]
    death = death.groupby("person_id", as_index=False)["death_date"].min()
    x = x.merge(death, on="person_id", how="left")
    x = x[x["death_date"].isna() | (x["death_date"] >= x["t0_date"])]
    end = x["obs_end_date"].clip(upper=pd.Timestamp(d.administrative_censor_date))
    died = x["death_date"].notna() & (x["death_date"] <= end)
    x["event"] = died.astype(int)
    x["time_days"] = _days(x["t0_date"], x["death_date"].where(died, end)).astype(float)
    x["t0_year"] = x["t0_date"].dt.year
    for a in st.non_reference:
        x[f"arm_{a}"] = (x["treatment"] == a).astype(int)
    for o in d.event_outcomes:
        ev = x["person_id"].map(_outcome_dates(folder, o, sets, x))
        ev = ev.where(ev <= end)
        dth = x["death_date"].where(died)
        first = ev.notna() & (dth.isna() | (ev <= dth))
        x[f"{o.name}_status"] = np.select([first, dth.notna()], [1, 2 if o.competing else 0], 0)
        stop = ev.where(first, dth.where(dth.notna(), end))
        x[f"{o.name}_time_days"] = _days(x["t0_date"], stop).astype(float)
    base = x[["person_id", "index_date", "t0_date"]]
    for col, s in d.conditions.items():
        c = co[co["condition_concept_id"].isin(sets[s])].merge(base, on="person_id")
        c = c[_in(_days(c[f"{d.condition_anchor}_date"], c["condition_start_date"]),
                  d.condition_window)]
        x[col] = x["person_id"].isin(c["person_id"]).astype(int)
    del co
    for table in ("measurement", "observation"):
        numeric = [c for c in d.numeric if c.table == table]
        categorical = [c for c in d.categorical if c.table == table]
        if not numeric and not categorical:
            continue
        t = _read(folder, table, [f"{table}_id", "person_id", f"{table}_concept_id",
                                  f"{table}_date", "value_as_number", "value_as_concept_id",
                                  "unit_concept_id"])
        t = t.merge(base, on="person_id")
        offset = {a: _days(t[f"{a}_date"], t[f"{table}_date"]) for a in ("t0", "index")}
        t = t.assign(**{f"offset_{a}": v for a, v in offset.items()})
        t = t.sort_values([f"{table}_date", f"{table}_id"])
        for c in numeric:
            r = t[t[f"{table}_concept_id"].isin(sets[c.concept_set])].copy()
            r["value"] = r["value_as_number"] * r["unit_concept_id"].fillna(0).map(c.units)
            r = r[r["value"].between(*c.plausible) & _in(r[f"offset_{c.anchor}"], c.window)]
            x[c.column] = x["person_id"].map(r.groupby("person_id")["value"].last())
        for c in categorical:
            levels = _value_levels(c, ca, d.include_descendants)
            r = t[t[f"{table}_concept_id"].isin(sets[c.concept_set])
                  & t["value_as_concept_id"].isin(levels)]
            r = r[_in(r[f"offset_{c.anchor}"], c.window)]
            last = r.groupby("person_id")["value_as_concept_id"].last().map(levels)
            for lvl in c.levels:
                x[lvl] = x["person_id"].map((last == lvl).astype(float))
    return contract.coerce(x.sort_values("person_id"), d)


def _run_engine(engine: str, omop: Path, quality: bool) -> dict:
    d = parse_definition(config.load_params()["cohort"])
    start = time.perf_counter()
    if engine == "duckdb":
        from pmed.cohort import extract_cohort
        cohort = extract_cohort(omop, d, check_quality=quality).cohort
    else:
        cohort = pandas_cohort(omop, d)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_gb = usage.ru_maxrss / 1024**2  # Linux: KiB
    return {"engine": engine, "quality": quality, "wall_s": wall, "peak_rss_gb": rss_gb,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "persons": int(len(cohort)), "cohort": cohort}


def generate_demo(n_persons: int, workdir: Path) -> Path:
    """OMOP folder of an EHR-only demo data set with ``n_persons`` (generated once)."""
    raw = workdir / f"p{n_persons}" / "raw"
    if not (raw / "truth" / "ground_truth.json").exists():
        from pmed.demo.generate import generate

        params = config.load_params()
        demo = copy.deepcopy(params["demo"])
        demo["sizes"]["benchmark"]["n_persons"] = n_persons
        start = time.perf_counter()
        generate(raw, "benchmark", params["common"]["seed"], demo)
        print(f"generated {n_persons:,d} persons in {time.perf_counter() - start:.0f} s")
    return raw / "omop"


def compare_engines(omop: Path, engines: list[str]) -> list[dict]:
    """Run each engine in a subprocess on ``omop``; print figures; check equal cohorts."""
    results = []
    outdir = Path(tempfile.mkdtemp(prefix="bench_cohort_"))  # private: runs may overlap
    for engine in engines:
        out = outdir / f"{engine}.parquet"
        proc = subprocess.run([sys.executable, __file__, "--omop", str(omop), "--child",
                               engine, "--out", str(out)], capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["name"], res["out"] = engine, out
        results.append(res)
        print(f"{engine:12s} persons={res['persons']:>9,d} wall={res['wall_s']:8.2f} s "
              f"cpu={res['cpu_s']:8.2f} s peak_rss={res['peak_rss_gb']:6.2f} GB", flush=True)
    cohorts = {r["name"]: pd.read_parquet(r["out"]) for r in results}
    shutil.rmtree(outdir)
    first = results[0]["name"]
    for r in results[1:]:
        pd.testing.assert_frame_equal(cohorts[first], cohorts[r["name"]], check_dtype=False)
    if len(results) > 1:
        print(f"cohorts identical across {', '.join(cohorts)}")
    by = {r["name"]: r for r in results}
    if "pandas" in by and "duckdb-noqc" in by:
        p, q = by["pandas"], by["duckdb-noqc"]
        print(f"pandas / duckdb (extraction only): wall x{p['wall_s'] / q['wall_s']:.1f}, "
              f"cpu x{p['cpu_s'] / q['cpu_s']:.1f}, peak RSS x{p['peak_rss_gb'] / q['peak_rss_gb']:.1f}")
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--omop", type=Path, help="folder of OMOP tables")
    src.add_argument("--persons", type=int, nargs="+", help="generate demo data of these sizes")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_cohort")
    ap.add_argument("--engines", nargs="+", default=["duckdb", "duckdb-noqc", "pandas"],
                    help="duckdb (with quality checks), duckdb-noqc (extraction only), pandas")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = _run_engine(args.child.split("-")[0], args.omop, quality="noqc" not in args.child)
        res.pop("cohort").to_parquet(args.out, index=False)
        print(json.dumps(res))
        return
    folders = [args.omop] if args.omop else [generate_demo(n, args.workdir) for n in args.persons]
    for omop in folders:
        print(f"--- {omop}")
        compare_engines(omop, args.engines)


if __name__ == "__main__":
    main()
