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
LAB_COLUMNS = list(omop.LABS)
CHUNK_MARGINAL_HR = 50_000  # persons of the first chunk used for the marginal HRs


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The random generator of person chunk ``chunk``: ``default_rng([seed, chunk])`` (its first
    use is the latent simulation)."""
    return np.random.default_rng([seed, chunk])


def latent_chunk(seed: int, demo_params: dict, size: str, chunk: int = 0,
                 image_signal: bool | None = None, heterogeneity: bool | None = None) -> pd.DataFrame:
    """Re-simulate the latent person table of one chunk exactly as :func:`generate` made it.

    ``image_signal`` and ``heterogeneity`` as in :func:`generate` (None: from ``demo_params``).
    """
    cfg = size_config(demo_params, size)
    n_total, size_chunk = int(cfg["n_persons"]), int(demo_params["chunk_size"])
    first = chunk * size_chunk
    if first >= n_total:
        raise IndexError(f"demo size {size!r} has no chunk {chunk} ({n_total} persons)")
    return model.simulate_latent(min(size_chunk, n_total - first), first + 1, chunk_rng(seed, chunk),
                                 demo_params["rates"], image_signal=resolve_flag(demo_params, "image_signal", image_signal),
                                 heterogeneity=resolve_flag(demo_params, "heterogeneity", heterogeneity))


def resolve_flag(demo_params: dict, key: str, value: bool | None = None) -> bool:
    """A generator switch (``image_signal``, ``heterogeneity``): ``value`` if given, else params.yaml
    ``demo.<key>`` (True when the key is absent)."""
    value = demo_params.get(key, True) if value is None else value
    if not isinstance(value, bool):
        raise TypeError(f"params.yaml demo.{key} must be true or false (got {value!r})")
    return value


def resolve_image_signal(demo_params: dict, image_signal: bool | None = None) -> bool:
    """Whether tumour traits enter the hazard (:func:`resolve_flag` of ``image_signal``)."""
    return resolve_flag(demo_params, "image_signal", image_signal)


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
             image_signal: bool | None = None, heterogeneity: bool | None = None) -> dict:
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
    heterogeneity : bool or None
        False: constant treatment effect per arm (:data:`pmed.demo.model.CONSTANT_ARM_LOG_HR`),
        every arm interaction 0; same random draws, so only death times and what follows from
        them differ. ``ground_truth.json`` ``heterogeneity`` says which. None: params
        ``demo.heterogeneity`` (True when absent).
    """
    cfg = size_config(demo_params, size)
    signal = resolve_image_signal(demo_params, image_signal)
    het = resolve_flag(demo_params, "heterogeneity", heterogeneity)
    log_hr = model.hazard_log_hr(het)
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
        lat = model.simulate_latent(min(chunk, n_total - first), first + 1, rng, rates, image_signal=signal,
                                    heterogeneity=het)
        chunk_scans = _select_scans(lat, cfg, rng) if k == 0 and cfg.get("n_imaged", 0) else None
        procs = _write_chunk(lat, rng, ids, writers, rates, seed, truth, chunk_scans)
        if chunk_scans is not None:
            scans = chunk_scans.merge(procs, on=["person_id", "day"], how="left", validate="one_to_one")
        truth.add_chunk(lat, log_hr, first_chunk=(k == 0))
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
        tumours, mr_tumours = _write_imaging(out_dir, scans, seed, workers, ids, writers,
                                             demo_params.get("mask_formats"),
                                             float(demo_params.get("mr_share", 0.0)))
    writers.close()

    gt = truth.result(seed=seed, size=size, cfg=cfg, rates=rates, table_rows=writers.rows, image_signal=signal,
                      log_hr=log_hr, heterogeneity=het)
    if tumours is not None:
        tumours.to_csv(truth_dir / "ground_truth_tumours.csv", index=False, float_format="%.6g")
        if mr_tumours is not None:
            mr_tumours.to_csv(truth_dir / "ground_truth_tumours_mr.csv", index=False, float_format="%.6g")
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
    pdl1 = pick["pdl1_pct"].to_numpy() / 100.0
    arm = pick["arm"].to_numpy()
    shrink = np.select([arm == "io", arm == "chemo_io"], [0.1 + 0.8 * pdl1, 0.25 + 0.5 * pdl1], 0.25)
    log_change = -shrink + rng.normal(0, 0.25, n)
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


def _write_imaging(out_dir, scans, seed, workers, ids, writers, mask_formats=None,
                   mr_share: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Render the CTs with :mod:`pmed.demo.ct` and write ``image_occurrence``
    (``mask_formats``: params ``demo.mask_formats``, shares of SEG / RTSTRUCT masks); then the
    baseline MRs of a ``mr_share`` of imaged persons (:func:`_write_mr`). Returns the CT and
    the MR (None when ``mr_share`` is 0) tumour truth tables."""
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
    series = ct.write_imaging_study(out_dir, request, seed + IMAGING_SEED_OFFSET, workers=workers,
                                    mask_formats=mask_formats)
    series["day"] = [model.epoch_day(pd.Timestamp(d).date()) for d in series["scan_date"]]
    img = scans.merge(series.drop(columns=["scan_date"]), on=["person_id", "day", "timepoint"], how="inner",
                      validate="one_to_one")
    if len(img) != len(scans):
        raise RuntimeError(f"demo imaging: {len(scans)} scans requested, {len(img)} series returned")
    img = img.sort_values(["person_id", "day"], ignore_index=True)
    _write_image_occurrence(writers, ids, img, v.CT_MODALITY.concept_id)
    mr_truth = None
    if mr_share > 0:
        base = img["timepoint"] == "baseline"
        base_request = (request[request["timepoint"] == "baseline"].set_index("person_id")
                        .loc[img.loc[base, "person_id"]].reset_index())
        mr_img = _write_mr(out_dir, base_request, img[base], seed + IMAGING_SEED_OFFSET,
                           workers, ids, writers, mr_share)
        mr_truth = _tumour_truth(mr_img).assign(
            gain=mr_img["gain"], offset=mr_img["offset"], bias_gradient=mr_img["bias_gradient"])
    return _tumour_truth(img), mr_truth


def _write_image_occurrence(writers, ids, img: pd.DataFrame, modality_concept_id: int) -> None:
    """``image_occurrence`` rows for the written series ``img`` (fresh ids, one modality)."""
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
        "modality_concept_id": np.full(len(img), modality_concept_id),
    })


def _tumour_truth(img: pd.DataFrame) -> pd.DataFrame:
    """The ground_truth_tumours table of written series."""
    return pd.DataFrame({
        "person_id": img["person_id"], "timepoint": img["timepoint"],
        "scan_date": pd.to_datetime(img["day"], unit="D").dt.strftime("%Y-%m-%d"),
        "volume_ml": img["volume_ml"], "log_tumour_volume_ml": np.log(img["volume_ml"]),
        "heterogeneity": img["heterogeneity"], "irregularity": img["irregularity"],
        "longest_diameter_mm": img["longest_diameter_mm"], "image_series_uid": img["image_series_uid"],
        "mask_path": img["mask_path"],
    })


def _write_mr(out_dir, request, base, seed, workers, ids, writers, share) -> pd.DataFrame:
    """Baseline T2 MRs (:mod:`pmed.demo.mr`) for the persons its own stream draws with
    probability ``share``, on the day and visit of their baseline CT: an MR procedure
    (concept "Magnetic resonance imaging") and an ``image_occurrence`` row each, with ids after
    all CT rows (so no CT row changes). ``request``/``base``: the baseline CT request rows and
    their written image rows (same order). Returns the MR image rows with the scanner draw."""
    from pmed.demo import mr

    pick = mr.has_mr(base["person_id"].to_numpy(), seed, share)
    series = mr.write_mr_series(out_dir, request[pick], seed, workers=workers)
    if len(series) and not (series["person_id"].to_numpy() == base["person_id"].to_numpy()[pick]).all():
        raise RuntimeError("demo MR: series rows out of order with the baseline CT rows")
    img = base[pick].drop(columns=["image_study_uid", "image_series_uid", "local_path", "mask_path",
                                   "longest_diameter_mm", "procedure_occurrence_id"]).reset_index(drop=True)
    img = pd.concat([img, series.drop(columns=["person_id", "scan_date", "timepoint"])], axis=1)
    n = len(img)
    img["procedure_occurrence_id"] = ids.take("procedure_occurrence", n)
    writers.write("procedure_occurrence", {
        "procedure_occurrence_id": img["procedure_occurrence_id"].to_numpy(),
        "person_id": img["person_id"].to_numpy(),
        "procedure_concept_id": np.full(n, v.MR_MODALITY.concept_id),
        "procedure_date": img["day"].to_numpy(),
        "procedure_type_concept_id": np.full(n, v.EHR_TYPE.concept_id),
        "visit_occurrence_id": img["visit_occurrence_id"].to_numpy(),
        "procedure_source_concept_id": np.zeros(n, np.int32),
    })
    _write_image_occurrence(writers, ids, img, v.MR_MODALITY.concept_id)
    return img


class _Truth:
    """Accumulates ground truth over chunks (eligibility, defects, potential outcomes)."""

    def __init__(self):
        self.eligible: list[np.ndarray] = []
        self.attrition = {r: 0 for r in model.REASONS}
        self.defects: dict[str, int] = {}
        self.n_persons = 0
        self.n_lost = 0
        self.n_eligible = 0
        self.n_by_arm = {a: 0 for a in model.ARMS}
        self.person_s365: list[tuple[np.ndarray, np.ndarray]] = []  # (person ids, (n, arms) S(365))
        self.s365_sum = np.zeros(len(model.ARMS))
        self.oracle_sum = 0.0
        self.oracle_count = np.zeros(len(model.ARMS), np.int64)
        self.driver_pos = [0, 0]  # driver-positive persons: io worse than chemo, all
        self.cif_all = np.zeros((len(model.ARMS), len(model.CIF_TIMES_DAYS)))
        self.cif_received = np.zeros((len(model.ARMS), len(model.CIF_TIMES_DAYS)))
        self.n_cif, self.n_cif_by_arm = 0, np.zeros(len(model.ARMS), np.int64)
        self.pneumonitis = {"events": 0, "death_first": 0, "censored": 0}
        self.marginal_hr = None
        self.missing: dict[str, list[int]] = {}

    def defect(self, name: str, count: int, denominator: int) -> None:
        c, d = self.defects.get(name, (0, 0))
        self.defects[name] = (c + count, d + denominator)

    def count_lost(self, n: int) -> None:
        self.n_lost += n

    def add_chunk(self, lat: pd.DataFrame, log_hr: dict[str, float], first_chunk: bool) -> None:
        """Add one chunk: eligibility, every eligible person's potential outcomes under each arm."""
        self.n_persons += len(lat)
        for r in model.REASONS:
            self.attrition[r] += int((lat["reason"] == r).sum())
        elig = lat[lat["reason"] == "eligible"]
        pid = elig["person_id"].to_numpy()
        self.eligible.append(pid)
        self.n_eligible += len(elig)
        arm = elig["arm"].to_numpy()
        for a in model.ARMS:
            self.n_by_arm[a] += int((arm == a).sum())
        lp_x = elig["lp_x"].to_numpy()
        tau = np.column_stack([model.arm_log_hr(elig, a, log_hr) for a in model.ARMS])
        s365 = model.survival_at(365.0, lp_x[:, None] + tau)
        self.person_s365.append((pid, s365))
        self.s365_sum += s365.sum(axis=0)
        self.oracle_sum += float(s365.max(axis=1).sum())
        self.oracle_count += np.bincount(s365.argmax(axis=1), minlength=len(model.ARMS))
        drv = elig["driver_positive"].to_numpy() == 1
        self.driver_pos[0] += int((drv & (tau[:, model.ARMS.index("io")] > 0)).sum())
        self.driver_pos[1] += int(drv.sum())
        if first_chunk:  # true pneumonitis CIFs of the first chunk's eligible persons
            self.n_cif = len(elig)
            self.n_cif_by_arm = np.array([(arm == a).sum() for a in model.ARMS])
            lp_pneu_x = model.linear_predictor(elig.drop(columns=list(model.ARM_COLUMN.values())),
                                               model.PNEUMONITIS_LOG_HR)  # without the arm terms
            for j, a in enumerate(model.ARMS):
                lp_pneu = lp_pneu_x + model.arm_log_hr(elig, a, model.PNEUMONITIS_LOG_HR)
                for start in range(0, len(elig), 5000):
                    sl = slice(start, start + 5000)
                    cif = model.pneumonitis_cif(np.array(model.CIF_TIMES_DAYS), lp_x[sl] + tau[sl, j], lp_pneu[sl])
                    self.cif_all[j] += cif.sum(axis=0)
                    self.cif_received[j] += cif[arm[sl] == a].sum(axis=0)
        status = elig["pneumonitis_status"].to_numpy()
        for key, code in (("events", 1), ("death_first", 2), ("censored", 0)):
            self.pneumonitis[key] += int((status == code).sum())
        for col in [c for c in lat.columns if c.endswith("_observed")]:
            miss = self.missing.setdefault(col[: -len("_observed")], [0, 0])
            miss[0] += int((~elig[col]).sum())
            miss[1] += len(elig)
        if first_chunk:
            u = elig["u_death"].to_numpy()[:CHUNK_MARGINAL_HR]
            times = {a: model.weibull_time(u, lp_x[: len(u)] + tau[: len(u), j]) for j, a in enumerate(model.ARMS)}
            self.marginal_hr = {a: _marginal_hr(times[model.REFERENCE_ARM], times[a])
                                for a in model.ARMS if a != model.REFERENCE_ARM}

    def person_survival(self) -> dict[str, dict[str, float]]:
        """person_id -> {arm: true S(365 days)} of every eligible person."""
        out = {}
        for pid, s in self.person_s365:
            for p, row in zip(pid.tolist(), s.tolist(), strict=True):
                out[str(p)] = dict(zip(model.ARMS, row, strict=True))
        return out

    def result(self, seed, size, cfg, rates, table_rows, image_signal: bool = True,
               log_hr: dict | None = None, heterogeneity: bool = True) -> dict:
        log_hr = dict(model.LOG_HR) if log_hr is None else log_hr
        n_e = max(self.n_eligible, 1)
        ref = model.REFERENCE_ARM
        others = [a for a in model.ARMS if a != ref]
        s365 = dict(zip(model.ARMS, (self.s365_sum / n_e).tolist(), strict=True))
        oracle_value = self.oracle_sum / n_e
        best = max(s365, key=s365.get)
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
        prop = {}
        for a, coef in model.PROPENSITY.items():
            c = dict(coef)
            c["intercept"] = coef["intercept"] - sum(coef[k] * m for k, m in model.PROPENSITY_CENTRE.items())
            prop[a] = c
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
        grid = {f"pdl1_{p}_driver_{d}": {a: float(log_hr[model.ARM_COLUMN[a]]
                                                  + log_hr[f"{model.ARM_COLUMN[a]}:pdl1_pct"] * p
                                                  + log_hr[f"{model.ARM_COLUMN[a]}:driver_positive"] * (d == "pos"))
                                         for a in others}
                for p in (0, 1, 50, 90) for d in ("neg", "pos")}
        times = [str(t) for t in model.CIF_TIMES_DAYS]
        n_cif, n_arm = max(self.n_cif, 1), np.maximum(self.n_cif_by_arm, 1)
        return {
            "seed": seed, "size": size, "n_persons": self.n_persons, "n_eligible": self.n_eligible,
            "eligible_person_ids": eligible.tolist(),
            "attrition": {
                "order_independent": True,
                "note": "each ineligible person fails exactly one criterion",
                "excluded": self.attrition,
            },
            "arms": {
                "labels": list(model.ARMS), "reference": ref, "indicator_columns": model.ARM_COLUMN,
                "n_eligible_by_arm": self.n_by_arm,
                "definition": "chemo: platinum + pemetrexed; io: PD-(L)1 inhibitor alone; chemo_io: both, "
                              "started 0-14 days apart; t0 = first of them",
            },
            "heterogeneity": heterogeneity,
            "hazard_model": {
                "form": "Weibull proportional hazards, h(t|x) = lambda * rho * t^(rho-1) * exp(x'beta), t in days "
                        "from t0; death times rounded up to whole days",
                "rho": model.WEIBULL_SHAPE, "lambda": model.WEIBULL_SCALE,
                "administrative_censor_date": "2025-12-31",
                "loss_to_follow_up_share": rates["loss_to_follow_up"],
                "n_lost_to_follow_up": self.n_lost,
                "note": "log_hr keys are cohort columns; 'a:b' is the product of columns a and b; "
                        "driver_positive is the true status (missing in the cohort when untested)",
            },
            "log_hr": log_hr,
            "treatment_effect": {
                "conditional": {
                    "log_hr_vs_reference": grid,
                    "note": "log-HR of each arm vs chemo at PD-L1 % and driver status (neg/pos)",
                },
                "marginal": {
                    "survival_365d": s365,
                    "survival_difference_365d": {a: s365[a] - s365[ref] for a in others},
                    "hazard_ratio": self.marginal_hr,
                    "method": "survival_365d: mean over eligible persons of the exact S(365 | x, arm) of the "
                              "generating model (latent tumour traits included); hazard_ratio: Cox HR of the "
                              "uncensored potential death times under the arm vs under chemo (common random "
                              "numbers; first chunk, at most 50,000 persons)",
                },
                "person_survival_365d": self.person_survival(),
            },
            "policy": {
                "value_365d": {"oracle": oracle_value, **{f"treat_all_{a}": s365[a] for a in model.ARMS}},
                "best_single_arm": best,
                "oracle_gain_over_best_single_arm": oracle_value - s365[best],
                "oracle_share_by_arm": dict(zip(model.ARMS, (self.oracle_count / n_e).tolist(), strict=True)),
                "driver_positive_io_worse_than_chemo_share": self.driver_pos[0] / max(self.driver_pos[1], 1),
                "note": "oracle: each eligible person gets the arm with the highest true S(365); under "
                        "proportional hazards that is the arm with the lowest log-HR vs chemo, a function of "
                        "the true PD-L1 % and driver status only",
            },
            "propensity_model": {
                "form": "multinomial logit, reference chemo: log P(arm)/P(chemo) = intercept + sum(coef * column)",
                "coefficients": prop,
                "centre": model.PROPENSITY_CENTRE,
                "note": "coefficients per unit of the cohort columns (intercepts for uncentred columns; "
                        "t0_year = calendar year of t0); driver_positive is the true status (also when "
                        "untested), ecog the true value (also when the record is missing)",
            },
            "competing_outcomes": {
                "pneumonitis": {
                    "definition": "first pneumonitis condition record linked to an inpatient visit "
                                  "(visit_concept_id 9201) after t0; death first = competing event (status 2)",
                    "cause_specific_hazard": {
                        "form": "Weibull, h(t|x) = lambda * rho * t^(rho-1) * exp(x'gamma), t in days from t0",
                        "rho": model.PNEUMONITIS_SHAPE, "lambda": model.PNEUMONITIS_SCALE,
                        "log_hr": dict(model.PNEUMONITIS_LOG_HR),
                    },
                    "competing_cause_specific_log_hr": "log_hr (death hazard does not change after pneumonitis)",
                    "cif_all_treated_with_arm": {a: dict(zip(times, (self.cif_all[j] / n_cif).tolist(), strict=True))
                                                 for j, a in enumerate(model.ARMS)},
                    "cif_among_receiving_arm": {a: dict(zip(times, (self.cif_received[j] / n_arm[j]).tolist(),
                                                            strict=True))
                                                for j, a in enumerate(model.ARMS)},
                    "observed_status_counts": self.pneumonitis,
                    "method": "CIF(t) = int_0^t S_death(s) dF_pneumonitis(s) per eligible person by numeric "
                              "integration (400-point geometric grid), averaged over all eligible persons "
                              "(everyone given the arm) or over those who received it (what Aalen-Johansen "
                              "by arm estimates without censoring bias); first chunk (at most 50,000 persons, "
                              "so every person of the ci and default sizes)",
                },
            },
            "image_traits": image_traits,
            "lab_trajectories": {
                "primary": "ldh_u_l",
                "slope_per_30d": {c: {a: t[a] for a in model.ARMS} for c, t in model.LAB_TRAJECTORIES.items()},
                "slope_difference_per_30d": {c: {a: t[a] - t[ref] for a in others}
                                             for c, t in model.LAB_TRAJECTORIES.items()},
                "note": "each arm minus chemo, cohort units per 30 days after t0; records every ~21 days "
                        "(+-4) after t0 for treated persons, 85% completeness",
            },
            "missingness_eligible": {c: m[0] / max(m[1], 1) for c, m in sorted(self.missing.items())},
            "unit_variations": {c: {"unit": u[1], "factor_from_cohort_unit": u[2],
                                    "share": rates["alternative_unit"][c]}
                                for c, u in omop.ALT_UNITS.items()},
            "defects": defects,
            "size_config": cfg,
            "table_rows": dict(sorted(table_rows.items())),
        }


def _marginal_hr(t_ref: np.ndarray, t_arm: np.ndarray) -> dict:
    """Cox HR (arm vs reference) of uncensored potential death times of the same persons."""
    from lifelines import CoxPHFitter

    df = pd.DataFrame({"time": np.concatenate([t_ref, t_arm]).astype(float), "event": 1,
                       "arm": np.repeat([0, 1], len(t_ref))})
    fit = CoxPHFitter().fit(df, "time", "event")
    return {"estimate": float(np.exp(fit.params_["arm"])),
            "ci_low": float(np.exp(fit.confidence_intervals_.iloc[0, 0])),
            "ci_high": float(np.exp(fit.confidence_intervals_.iloc[0, 1]))}
