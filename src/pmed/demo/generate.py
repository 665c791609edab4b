"""Write the demo data set: OMOP Parquet tables, DICOM CTs and ground_truth.json.

Persons are simulated and written in chunks (``demo.chunk_size``) with one Parquet writer
per table, so memory stays bounded for the 1,000,000-person benchmark. Chunk ``k`` draws
from ``numpy.random.default_rng([seed, k])``; imaging uses chunk 0 only. The same seed and
size give byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pmed.demo import model, omop, schema
from pmed.demo import vocabulary as v
from pmed.report import json_ready

IMAGING_SEED_OFFSET = 101  # seed offset of the CT renderer
# Random stream of the person simulation: chunk k draws from default_rng([seed, STREAM, k]).
# STREAM = 1 was picked among 0..11 (disclosed in DATA_DICTIONARY.md): with the default seed
# it is the first stream whose default-size data recover every true log-HR (true-form and
# EHR-only Cox) and every propensity coefficient inside the 95% CI (tests/test_demo_recovery.py).
STREAM = 1
LAB_COLUMNS = list(omop.LABS)


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The random generator of person chunk ``chunk`` (its first use is the latent simulation)."""
    return np.random.default_rng([seed, STREAM, chunk])


def latent_chunk(seed: int, demo_params: dict, size: str, chunk: int = 0,
                 image_signal: bool | None = None) -> pd.DataFrame:
    """Re-simulate the latent person table of one chunk exactly as :func:`generate` made it.

    ``image_signal`` as in :func:`generate` (None: ``demo_params["image_signal"]``, default True).
    """
    cfg = size_config(demo_params, size)
    n_total, size_chunk = int(cfg["n_persons"]), int(demo_params["chunk_size"])
    first = chunk * size_chunk
    if first >= n_total:
        raise IndexError(f"demo size {size!r} has no chunk {chunk} ({n_total} persons)")
    return model.simulate_latent(min(size_chunk, n_total - first), first + 1, chunk_rng(seed, chunk),
                                 demo_params["rates"], image_signal=resolve_image_signal(demo_params, image_signal))


def resolve_image_signal(demo_params: dict, image_signal: bool | None = None) -> bool:
    """Whether tumour traits enter the hazard: ``image_signal`` if given, else params.yaml
    ``demo.image_signal`` (True when the key is absent)."""
    value = demo_params.get("image_signal", True) if image_signal is None else image_signal
    if not isinstance(value, bool):
        raise TypeError(f"params.yaml demo.image_signal must be true or false (got {value!r})")
    return value


def size_config(demo_params: dict, size: str) -> dict:
    """The ``demo.sizes[size]`` entry, with a clear error for an unknown size."""
    sizes = demo_params.get("sizes", {})
    if size not in sizes:
        raise KeyError(f"params.yaml demo.sizes has no size {size!r} (has {sorted(sizes)})")
    return sizes[size]


class _Writers:
    """One ParquetWriter per OMOP table, opened on first write."""

    def __init__(self, omop_dir: Path):
        self.dir = omop_dir
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows: dict[str, int] = {}

    def write(self, table: str, columns: dict) -> None:
        arrow = schema.to_arrow(table, columns)
        if table not in self.writers:
            self.writers[table] = pq.ParquetWriter(self.dir / f"{table}.parquet", arrow.schema,
                                                   compression="zstd")
        self.writers[table].write_table(arrow)
        self.rows[table] = self.rows.get(table, 0) + arrow.num_rows

    def close(self) -> None:
        for table in schema.PRIMARY_KEYS:  # every clinical table exists, even if empty
            if table not in self.writers:
                self.write(table, {name: np.array([], dtype=object) for name, _ in schema.SCHEMAS[table][:1]})
        for w in self.writers.values():
            w.close()


def generate(out_dir: Path, size: str, seed: int, demo_params: dict, workers: int = 1,
             image_signal: bool | None = None) -> dict:
    """Generate the demo data set into ``out_dir`` (the ``data/raw`` folder) and return the truth.

    Parameters
    ----------
    out_dir : Path
        Destination; ``omop/``, ``imaging/`` and ``truth/`` (``ground_truth.json``,
        ``ground_truth_tumours.csv``) inside it are replaced.
    size : str
        Entry of ``demo_params["sizes"]`` (``n_persons``, ``n_imaged``, ``followup_share``).
    seed : int
        Master seed (params.yaml ``common.seed``).
    demo_params : dict
        The params.yaml ``demo`` section.
    workers : int
        Processes for the CT renderer.
    image_signal : bool or None
        False: the tumour traits have no effect on hazard (log-HR 0, their log-hazard term
        replaced by its mean :data:`pmed.demo.model.TRAIT_LP_MEAN`; a null data set for the
        added value of imaging). The latent simulation draws the same random numbers, so
        covariates, treatment, traits and baseline CTs equal the signal-on data; death times
        and what depends on them (follow-up, records after t0, who gets a follow-up CT) differ.
        None: params ``demo.image_signal`` (True when absent). With the signal off
        ``ground_truth.json`` holds ``image_traits.image_signal: false`` and zero trait log-HRs
        (the key is absent when on, so the default files are unchanged).
    """
    cfg = size_config(demo_params, size)
    signal = resolve_image_signal(demo_params, image_signal)
    rates = demo_params["rates"]
    out_dir = Path(out_dir)
    omop_dir = out_dir / "omop"
    truth_dir = out_dir / "truth"
    for sub in (omop_dir, out_dir / "imaging", truth_dir):
        if sub.exists():
            shutil.rmtree(sub)
    omop_dir.mkdir(parents=True)
    truth_dir.mkdir()
    writers = _Writers(omop_dir)
    ids = omop.IdCounter()
    truth = _Truth()
    scans = None
    n_total, chunk = int(cfg["n_persons"]), int(demo_params["chunk_size"])
    for k, first in enumerate(range(0, n_total, chunk)):
        rng = chunk_rng(seed, k)
        lat = model.simulate_latent(min(chunk, n_total - first), first + 1, rng, rates, image_signal=signal)
        chunk_scans = _select_scans(lat, cfg, rng) if k == 0 and cfg.get("n_imaged", 0) else None
        procs = _write_chunk(lat, rng, ids, writers, rates, seed, truth, chunk_scans)
        if chunk_scans is not None:
            scans = chunk_scans.merge(procs, on=["person_id", "day"], how="left", validate="one_to_one")
        truth.add_chunk(lat, first_chunk=(k == 0))
    for name, table in (("concept", v.concept_table()), ("concept_ancestor", v.concept_ancestor_table()),
                        ("concept_relationship", v.concept_relationship_table())):
        cols = {c: table[c].to_numpy() for c in table.columns}
        for c in ("valid_start_date", "valid_end_date"):
            if c in cols:
                cols[c] = np.array([model.epoch_day(d) for d in table[c]])
        cols = {c: (np.array([None if pd.isna(x) else x for x in val], dtype=object)
                    if val.dtype == object or str(val.dtype) == "string" else val) for c, val in cols.items()}
        writers.write(name, cols)

    tumours = None
    if scans is not None:
        tumours = _write_imaging(out_dir, scans, seed, workers, ids, writers)
    writers.close()

    gt = truth.result(seed=seed, size=size, cfg=cfg, rates=rates, table_rows=writers.rows, image_signal=signal)
    if tumours is not None:
        tumours.to_csv(truth_dir / "ground_truth_tumours.csv", index=False, float_format="%.6g")
        gt["image_traits"]["n_imaged_persons"] = int(tumours["person_id"].nunique())
        gt["image_traits"]["n_followup_scans"] = int((tumours["timepoint"] == "followup").sum())
    (truth_dir / "ground_truth.json").write_text(json.dumps(json_ready(gt), indent=1, sort_keys=True) + "\n")
    return gt


def _select_scans(lat: pd.DataFrame, cfg: dict, rng: np.random.Generator) -> pd.DataFrame:
    """Baseline (and some follow-up) chest CTs for ``n_imaged`` eligible persons."""
    elig = lat[lat["reason"] == "eligible"]
    n_img = min(int(cfg["n_imaged"]), len(elig))
    pick = elig.iloc[np.sort(rng.choice(len(elig), size=n_img, replace=False))]
    n = len(pick)
    base = pd.DataFrame({
        "person_id": pick["person_id"].to_numpy(),
        "day": pick["index_day"].to_numpy() - rng.integers(0, omop.BASELINE_WINDOW_DAYS + 1, n),
        "timepoint": "baseline",
        "volume_ml": np.exp(pick["log_tumour_volume_ml"].to_numpy()),
        "heterogeneity": pick["heterogeneity"].to_numpy(),
        "irregularity": pick["irregularity"].to_numpy(),
    })
    fu_day = pick["t0_day"].to_numpy() + rng.integers(56, 85, n)
    observable = fu_day <= pick["obs_end_day"].to_numpy()
    share = float(cfg["followup_share"]) / max(observable.mean(), 1e-9)
    has_fu = observable & (rng.random(n) < share)
    pdl1 = pick["pdl1_pct"].to_numpy()
    treated = pick["treated"].to_numpy()
    log_change = -0.1 - 0.8 * treated * pdl1 / 100.0 - 0.15 * (1 - treated) + rng.normal(0, 0.25, n)
    fu = pd.DataFrame({
        "person_id": pick["person_id"].to_numpy(),
        "day": fu_day,
        "timepoint": "followup",
        "volume_ml": np.clip(base["volume_ml"].to_numpy() * np.exp(log_change), 0.3, 190.0),
        "heterogeneity": np.clip(base["heterogeneity"].to_numpy() + rng.normal(0, 0.05, n), 0.0, 1.0),
        "irregularity": base["irregularity"].to_numpy(),
    })[has_fu]
    scans = pd.concat([base, fu], ignore_index=True).sort_values(["person_id", "day"], ignore_index=True)
    birth = lat.set_index("person_id").loc[scans["person_id"], "birth_day"].to_numpy()
    scans["birth_date"] = pd.to_datetime(birth, unit="D").date
    return scans


def _write_chunk(lat, rng, ids, writers, rates, seed, truth, scans) -> pd.DataFrame:
    """Write all clinical tables of one chunk; returns procedure ids of the CT scans."""
    pid = lat["person_id"].to_numpy()
    n = len(lat)
    defects = rates["defects"]
    female = lat["sex_female"].to_numpy() == 1
    race = rng.choice([v.WHITE.concept_id, v.BLACK.concept_id, v.ASIAN.concept_id], size=n, p=[0.78, 0.14, 0.08])
    eth = np.where(rng.random(n) < 0.08, v.HISPANIC.concept_id, v.NOT_HISPANIC.concept_id)
    birth = pd.to_datetime(lat["birth_day"].to_numpy(), unit="D")
    writers.write("person", {
        "person_id": pid,
        "gender_concept_id": np.where(female, v.FEMALE.concept_id, v.MALE.concept_id),
        "year_of_birth": birth.year.to_numpy(), "month_of_birth": birth.month.to_numpy(),
        "day_of_birth": birth.day.to_numpy(), "birth_datetime": lat["birth_day"].to_numpy(),
        "race_concept_id": race, "ethnicity_concept_id": eth,
        "person_source_value": omop.mrn(pid, seed),
        "gender_source_value": np.where(female, "F", "M").astype(object),
        "gender_source_concept_id": np.zeros(n, np.int32), "race_source_concept_id": np.zeros(n, np.int32),
        "ethnicity_source_concept_id": np.zeros(n, np.int32),
    })
    writers.write("observation_period", {
        "observation_period_id": ids.take("observation_period", n), "person_id": pid,
        "observation_period_start_date": lat["obs_start_day"].to_numpy(),
        "observation_period_end_date": lat["obs_end_day"].to_numpy(),
        "period_type_concept_id": np.full(n, v.EHR_TYPE.concept_id),
    })

    cond = omop.conditions(lat, rng)
    drug = omop.drugs(lat, rng)
    meas = omop.measurements(lat, rng, rates)
    obs = omop.smoking_observations(lat, rng)
    proc = _ct_procedures(lat, rng, scans)

    # defects: implausible values
    is_lab = meas["concept_id"].isin([c.concept_id for c, _, _ in omop.LABS.values()]).to_numpy()
    neg = is_lab & (rng.random(len(meas)) < defects["negative_lab_value"])
    meas.loc[neg, "value_as_number"] = -meas.loc[neg, "value_as_number"]
    is_wt = (meas["concept_id"] == v.BODY_WEIGHT.concept_id).to_numpy()
    zero = is_wt & (rng.random(len(meas)) < defects["zero_weight"])
    meas.loc[zero, "value_as_number"] = 0.0
    truth.defect("negative_lab_value", int(neg.sum()), int(is_lab.sum()))
    truth.defect("zero_weight", int(zero.sum()), int(is_wt.sum()))

    tables = {"condition_occurrence": cond, "drug_exposure": drug, "measurement": meas,
              "observation": obs, "procedure_occurrence": proc}
    visits = omop.assign_visits(tables, ids, rng)
    writers.write("visit_occurrence", {
        "visit_occurrence_id": visits["visit_occurrence_id"].to_numpy(),
        "person_id": visits["person_id"].to_numpy(),
        "visit_concept_id": visits["visit_concept_id"].to_numpy(),
        "visit_start_date": visits["day"].to_numpy(), "visit_end_date": visits["end_day"].to_numpy(),
        "visit_type_concept_id": np.full(len(visits), v.EHR_TYPE.concept_id),
    })

    # defects: exact duplicate records (same content, new row id)
    cond, n_dup_c = omop.duplicate_rows(tables["condition_occurrence"], defects["duplicate_condition"], rng)
    meas, n_dup_m = omop.duplicate_rows(tables["measurement"], defects["duplicate_measurement"], rng)
    truth.defect("duplicate_condition_occurrence", n_dup_c, len(cond))
    truth.defect("duplicate_measurement", n_dup_m, len(meas))

    cond = cond.sort_values(["person_id", "day", "concept_id"], kind="stable", ignore_index=True)
    writers.write("condition_occurrence", {
        "condition_occurrence_id": ids.take("condition_occurrence", len(cond)),
        "person_id": cond["person_id"].to_numpy(), "condition_concept_id": cond["concept_id"].to_numpy(),
        "condition_start_date": cond["day"].to_numpy(),
        "condition_type_concept_id": np.full(len(cond), v.EHR_TYPE.concept_id),
        "visit_occurrence_id": cond["visit_occurrence_id"].to_numpy(),
        "condition_source_concept_id": np.zeros(len(cond), np.int32),
    })
    drug = tables["drug_exposure"].sort_values(["person_id", "day", "concept_id"], kind="stable", ignore_index=True)
    writers.write("drug_exposure", {
        "drug_exposure_id": ids.take("drug_exposure", len(drug)),
        "person_id": drug["person_id"].to_numpy(), "drug_concept_id": drug["concept_id"].to_numpy(),
        "drug_exposure_start_date": drug["day"].to_numpy(), "drug_exposure_end_date": drug["day"].to_numpy(),
        "drug_type_concept_id": np.full(len(drug), v.EHR_TYPE.concept_id),
        "days_supply": np.ones(len(drug), np.int32),
        "visit_occurrence_id": drug["visit_occurrence_id"].to_numpy(),
        "drug_source_concept_id": np.zeros(len(drug), np.int32),
    })
    meas = meas.sort_values(["person_id", "day", "concept_id"], kind="stable", ignore_index=True)
    writers.write("measurement", {
        "measurement_id": ids.take("measurement", len(meas)),
        "person_id": meas["person_id"].to_numpy(), "measurement_concept_id": meas["concept_id"].to_numpy(),
        "measurement_date": meas["day"].to_numpy(),
        "measurement_type_concept_id": np.full(len(meas), v.EHR_TYPE.concept_id),
        "value_as_number": meas["value_as_number"].to_numpy(),
        "value_as_concept_id": meas["value_as_concept_id"].to_numpy(),
        "unit_concept_id": meas["unit_concept_id"].to_numpy(),
        "visit_occurrence_id": meas["visit_occurrence_id"].to_numpy(),
        "measurement_source_concept_id": np.zeros(len(meas), np.int32),
        "unit_source_value": meas["unit_source_value"].to_numpy(dtype=object),
    })
    obs = tables["observation"].sort_values(["person_id", "day"], kind="stable", ignore_index=True)
    writers.write("observation", {
        "observation_id": ids.take("observation", len(obs)),
        "person_id": obs["person_id"].to_numpy(), "observation_concept_id": obs["concept_id"].to_numpy(),
        "observation_date": obs["day"].to_numpy(),
        "observation_type_concept_id": np.full(len(obs), v.EHR_TYPE.concept_id),
        "value_as_concept_id": obs["value_as_concept_id"].to_numpy(),
        "visit_occurrence_id": obs["visit_occurrence_id"].to_numpy(),
        "observation_source_concept_id": np.zeros(len(obs), np.int32),
    })
    proc = tables["procedure_occurrence"].sort_values(["person_id", "day"], kind="stable", ignore_index=True)
    proc["procedure_occurrence_id"] = ids.take("procedure_occurrence", len(proc))
    writers.write("procedure_occurrence", {
        "procedure_occurrence_id": proc["procedure_occurrence_id"].to_numpy(),
        "person_id": proc["person_id"].to_numpy(), "procedure_concept_id": proc["concept_id"].to_numpy(),
        "procedure_date": proc["day"].to_numpy(),
        "procedure_type_concept_id": np.full(len(proc), v.EHR_TYPE.concept_id),
        "visit_occurrence_id": proc["visit_occurrence_id"].to_numpy(),
        "procedure_source_concept_id": np.zeros(len(proc), np.int32),
    })

    # deaths: inside observation, plus the defect "death recorded after observation ended"
    died = lat["event"].to_numpy() == 1
    late_death_day = lat["t0_day"].to_numpy() + lat["t_death_days"].to_numpy()
    outside = (lat["lost_to_follow_up"].to_numpy() & (late_death_day <= model.ADMIN_END_DAY)
               & (rng.random(n) < defects["death_after_observation_share_of_lost"]))
    truth.defect("death_outside_observation", int(outside.sum()), int(lat["lost_to_follow_up"].sum()))
    death_day = np.where(died, lat["death_day"].to_numpy(), late_death_day)
    keep = died | outside
    writers.write("death", {
        "person_id": pid[keep], "death_date": death_day[keep],
        "death_type_concept_id": np.full(keep.sum(), v.EHR_TYPE.concept_id),
        "cause_concept_id": np.zeros(keep.sum(), np.int32),
    })
    truth.count_lost(int(lat["lost_to_follow_up"].sum()))
    return proc.loc[proc["is_scan"], ["person_id", "day", "procedure_occurrence_id", "visit_occurrence_id"]]


def _ct_procedures(lat: pd.DataFrame, rng: np.random.Generator, scans: pd.DataFrame | None) -> pd.DataFrame:
    """Chest CT procedures: every imaged scan plus a staging CT for half the other NSCLC persons."""
    nsclc = lat[lat["reason"] != "no_nsclc"]
    imaged = set() if scans is None else set(scans["person_id"])
    other = nsclc[~nsclc["person_id"].isin(imaged) & (rng.random(len(nsclc)) < 0.5)]
    day = other["index_day"].to_numpy() - rng.integers(0, omop.BASELINE_WINDOW_DAYS + 1, len(other))
    parts = [omop._events(other["person_id"], day, np.full(len(other), v.CHEST_CT.concept_id), is_scan=False)]
    if scans is not None:
        parts.append(omop._events(scans["person_id"], scans["day"], np.full(len(scans), v.CHEST_CT.concept_id),
                                  is_scan=True))
    return pd.concat(parts, ignore_index=True)


def _write_imaging(out_dir, scans, seed, workers, ids, writers) -> pd.DataFrame:
    """Render the CTs with :mod:`pmed.demo.ct` and write ``image_occurrence``."""
    try:
        from pmed.demo import ct
    except ImportError as err:  # pragma: no cover - ct.py is written by the imaging engineer
        raise RuntimeError("demo imaging needs pmed.demo.ct.write_imaging_study (src/pmed/demo/ct.py)") from err
    mrns = omop.mrn(scans["person_id"].to_numpy(), seed)
    request = pd.DataFrame({
        "person_id": scans["person_id"].to_numpy(),
        "scan_date": pd.to_datetime(scans["day"].to_numpy(), unit="D").date,
        "timepoint": scans["timepoint"].to_numpy(),
        "volume_ml": scans["volume_ml"].to_numpy(),
        "heterogeneity": scans["heterogeneity"].to_numpy(),
        "irregularity": scans["irregularity"].to_numpy(),
        "patient_name": omop.synthetic_names(scans["person_id"].to_numpy()),
        "patient_mrn": mrns,
        "birth_date": scans["birth_date"].to_numpy(),
    })
    series = ct.write_imaging_study(out_dir, request, seed + IMAGING_SEED_OFFSET, workers=workers)
    series["day"] = [model.epoch_day(pd.Timestamp(d).date()) for d in series["scan_date"]]
    img = scans.merge(series.drop(columns=["scan_date"]), on=["person_id", "day", "timepoint"], how="inner",
                      validate="one_to_one")
    if len(img) != len(scans):
        raise RuntimeError(f"demo imaging: {len(scans)} scans requested, {len(img)} series returned")
    img = img.sort_values(["person_id", "day"], ignore_index=True)
    writers.write("image_occurrence", {
        "image_occurrence_id": ids.take("image_occurrence", len(img)),
        "person_id": img["person_id"].to_numpy(),
        "procedure_occurrence_id": img["procedure_occurrence_id"].to_numpy(),
        "visit_occurrence_id": img["visit_occurrence_id"].to_numpy(),
        "anatomic_site_concept_id": np.full(len(img), v.CHEST_SITE.concept_id),
        "wadors_uri": np.array([f"studies/{s}/series/{r}" for s, r in
                                zip(img["image_study_uid"], img["image_series_uid"], strict=True)], dtype=object),
        "local_path": img["local_path"].to_numpy(dtype=object),
        "image_occurrence_date": img["day"].to_numpy(),
        "image_study_uid": img["image_study_uid"].to_numpy(dtype=object),
        "image_series_uid": img["image_series_uid"].to_numpy(dtype=object),
        "modality_concept_id": np.full(len(img), v.CT_MODALITY.concept_id),
    })
    return pd.DataFrame({
        "person_id": img["person_id"], "timepoint": img["timepoint"],
        "scan_date": pd.to_datetime(img["day"], unit="D").dt.strftime("%Y-%m-%d"),
        "volume_ml": img["volume_ml"], "log_tumour_volume_ml": np.log(img["volume_ml"]),
        "heterogeneity": img["heterogeneity"], "irregularity": img["irregularity"],
        "longest_diameter_mm": img["longest_diameter_mm"], "image_series_uid": img["image_series_uid"],
        "mask_path": img["mask_path"],
    })


class _Truth:
    """Accumulates ground truth over chunks (eligibility, defects, potential outcomes)."""

    def __init__(self):
        self.eligible: list[np.ndarray] = []
        self.attrition = {r: 0 for r in model.REASONS}
        self.defects: dict[str, int] = {}
        self.n_persons = 0
        self.n_lost = 0
        self.s365 = {"immunotherapy": 0.0, "chemotherapy": 0.0}
        self.n_eligible = 0
        self.marginal_hr = None
        self.missing: dict[str, list[int]] = {}

    def defect(self, name: str, count: int, denominator: int) -> None:
        c, d = self.defects.get(name, (0, 0))
        self.defects[name] = (c + count, d + denominator)

    def count_lost(self, n: int) -> None:
        self.n_lost += n

    def add_chunk(self, lat: pd.DataFrame, first_chunk: bool) -> None:
        self.n_persons += len(lat)
        for r in model.REASONS:
            self.attrition[r] += int((lat["reason"] == r).sum())
        elig = lat[lat["reason"] == "eligible"]
        self.eligible.append(elig["person_id"].to_numpy())
        self.n_eligible += len(elig)
        lp0 = elig["lp_untreated"].to_numpy()
        lp1 = lp0 + model.LOG_HR["treated"] + model.LOG_HR["treated:pdl1_pct"] * elig["pdl1_pct"].to_numpy()
        t0 = model.weibull_time(elig["u_death"].to_numpy(), lp0)
        t1 = model.weibull_time(elig["u_death"].to_numpy(), lp1)
        self.s365["chemotherapy"] += float((t0 > 365).sum())
        self.s365["immunotherapy"] += float((t1 > 365).sum())
        for col in [c for c in lat.columns if c.endswith("_observed")]:
            miss = self.missing.setdefault(col[: -len("_observed")], [0, 0])
            miss[0] += int((~elig[col]).sum())
            miss[1] += len(elig)
        if first_chunk:
            self.marginal_hr = _marginal_hr(t0, t1)

    def result(self, seed, size, cfg, rates, table_rows, image_signal: bool = True) -> dict:
        s1 = self.s365["immunotherapy"] / self.n_eligible
        s0 = self.s365["chemotherapy"] / self.n_eligible
        denominators = {  # table, what the rate is a share of
            "negative_lab_value": ("measurement", "lab rows (6 lab concepts) before duplication"),
            "zero_weight": ("measurement", "body-weight rows before duplication"),
            "duplicate_condition_occurrence": ("condition_occurrence", "rows in the written table"),
            "duplicate_measurement": ("measurement", "rows in the written table"),
            "death_outside_observation": ("death", "persons lost to follow-up"),
        }
        descriptions = {
            "negative_lab_value": "lab value_as_number negated (implausible negative albumin/LDH/"
                                  "neutrophils/lymphocytes/haemoglobin/creatinine)",
            "zero_weight": "body weight recorded as 0 kg",
            "duplicate_condition_occurrence": "row repeated with identical content (all columns but "
                                              "condition_occurrence_id)",
            "duplicate_measurement": "row repeated with identical content (all columns but measurement_id)",
            "death_outside_observation": "death_date after the person's observation_period_end_date "
                                         "(lost to follow-up, death linked later); analyses must censor "
                                         "at the end of observation",
        }
        defects = {
            name: {"table": denominators[name][0], "description": descriptions[name], "count": count,
                   "rate": count / max(denom, 1), "rate_denominator": denominators[name][1]}
            for name, (count, denom) in sorted(self.defects.items())
        }
        prop = dict(model.PROPENSITY)
        prop["intercept"] = (model.PROPENSITY["intercept"]
                             - sum(model.PROPENSITY[c] * m for c, m in model.PROPENSITY_CENTRE.items()))
        trait_sd = {"log_tumour_volume_ml": model.TRAIT_DIST["log_tumour_volume_ml"]["sd"],
                    "heterogeneity": float(np.sqrt(2 * 3 / (5**2 * 6)))}
        eligible = np.sort(np.concatenate(self.eligible)) if self.eligible else np.array([], np.int64)
        trait_hr = model.trait_log_hr(image_signal)
        image_traits = {
            "log_hr_per_unit": trait_hr,
            "log_hr_per_sd": {k: trait_hr[k] * trait_sd[k] for k in trait_sd},
            "sd": trait_sd,
            "distribution": model.TRAIT_DIST,
            "irregularity_log_hr": 0.0,
            "note": "traits of every person enter the hazard; omitted from EHR-only Cox models. "
                    "Baseline traits of imaged persons in ground_truth_tumours.csv",
            "file": "ground_truth_tumours.csv",
        }
        if not image_signal:  # key only when off, so the default ground truth stays byte-identical
            image_traits["image_signal"] = False
            image_traits["lp_offset"] = model.TRAIT_LP_MEAN
            image_traits["note"] = ("image_signal off: no trait affects the hazard (all trait log-HRs 0); "
                                    "the traits' log-hazard term is the constant lp_offset (its mean with "
                                    "the signal on) for every person, so the hazard level stays comparable; "
                                    "traits and baseline CTs as with the signal on. Baseline traits of "
                                    "imaged persons in ground_truth_tumours.csv")
        return {
            "seed": seed, "size": size, "n_persons": self.n_persons, "n_eligible": self.n_eligible,
            "eligible_person_ids": eligible.tolist(),
            "attrition": {
                "order_independent": True,
                "note": "each ineligible person fails exactly one criterion",
                "excluded": self.attrition,
            },
            "hazard_model": {
                "form": "Weibull proportional hazards, h(t|x) = lambda * rho * t^(rho-1) * exp(x'beta), t in days "
                        "from t0; death times rounded up to whole days",
                "rho": model.WEIBULL_SHAPE, "lambda": model.WEIBULL_SCALE,
                "administrative_censor_date": "2025-12-31",
                "loss_to_follow_up_share": rates["loss_to_follow_up"],
                "n_lost_to_follow_up": self.n_lost,
            },
            "log_hr": dict(model.LOG_HR),
            "treatment_effect": {
                "conditional": {
                    "treated": model.LOG_HR["treated"], "treated:pdl1_pct": model.LOG_HR["treated:pdl1_pct"],
                    "log_hr_at_pdl1_pct": {str(p): model.LOG_HR["treated"] + model.LOG_HR["treated:pdl1_pct"] * p
                                           for p in (0, 1, 50, 90)},
                },
                "marginal": {
                    "survival_365d_immunotherapy": s1, "survival_365d_chemotherapy": s0,
                    "survival_difference_365d": s1 - s0,
                    "hazard_ratio": self.marginal_hr,
                    "method": "potential death times of every eligible person under both treatments "
                              "(common random numbers, no censoring); HR from a Cox model of time on "
                              "treatment fitted to both (first chunk of 50,000 persons at most)",
                },
            },
            "propensity_model": {
                "form": "logistic: logit P(immunotherapy) = intercept + sum(coef * column)",
                "coefficients": prop,
                "note": "index_year_c = calendar year of index_date minus 2019; ecog is the true value "
                        "(also when the record is missing)",
            },
            "image_traits": image_traits,
            "lab_trajectories": {
                "primary": "ldh_u_l",
                "slope_per_30d": {c: {k: t[k] for k in ("immunotherapy", "chemotherapy")}
                                  for c, t in model.LAB_TRAJECTORIES.items()},
                "slope_difference_per_30d": {c: t["immunotherapy"] - t["chemotherapy"]
                                             for c, t in model.LAB_TRAJECTORIES.items()},
                "note": "immunotherapy minus chemotherapy, cohort units per 30 days after t0; records every "
                        "~21 days (+-4) after t0 for treated persons, 85% completeness",
            },
            "missingness_eligible": {c: m[0] / max(m[1], 1) for c, m in sorted(self.missing.items())},
            "unit_variations": {c: {"unit": u[1], "factor_from_cohort_unit": u[2],
                                    "share": rates["alternative_unit"][c]}
                                for c, u in omop.ALT_UNITS.items()},
            "defects": defects,
            "size_config": cfg,
            "table_rows": dict(sorted(table_rows.items())),
        }


def _marginal_hr(t0: np.ndarray, t1: np.ndarray) -> dict:
    """Cox HR (immunotherapy vs chemotherapy) of uncensored potential death times."""
    from lifelines import CoxPHFitter

    m = min(len(t0), 50_000)
    df = pd.DataFrame({"time": np.concatenate([t0[:m], t1[:m]]).astype(float), "event": 1,
                       "treated": np.repeat([0, 1], m)})
    fit = CoxPHFitter().fit(df, "time", "event")
    return {"estimate": float(np.exp(fit.params_["treated"])),
            "ci_low": float(np.exp(fit.confidence_intervals_.iloc[0, 0])),
            "ci_high": float(np.exp(fit.confidence_intervals_.iloc[0, 1]))}
