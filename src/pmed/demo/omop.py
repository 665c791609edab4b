"""OMOP CDM clinical tables from the latent person table (one chunk of persons at a time).

Row ids are global: :class:`IdCounter` hands out consecutive ids per table across chunks.
Injected data-quality defects are counted here and reported in ``ground_truth.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pmed.demo import model
from pmed.demo import vocabulary as v

EHR = v.EHR_TYPE.concept_id

# Baseline numeric measurements: cohort column -> (concept, standard unit concept, source unit)
LABS = {
    "albumin_g_dl": (v.ALBUMIN, v.UNITS["g/dL"], "g/dL"),
    "ldh_u_l": (v.LDH, v.UNITS["U/L"], "U/L"),
    "neutrophils_10e9_l": (v.NEUTROPHILS, v.UNITS["10*9/L"], "10*9/L"),
    "lymphocytes_10e9_l": (v.LYMPHOCYTES, v.UNITS["10*9/L"], "10*9/L"),
    "hemoglobin_g_dl": (v.HEMOGLOBIN, v.UNITS["g/dL"], "g/dL"),
    "creatinine_mg_dl": (v.CREATININE, v.UNITS["mg/dL"], "mg/dL"),
}
# Alternative units recorded for a share of records: column -> (unit concept, code, factor, decimals)
ALT_UNITS = {
    "albumin_g_dl": (v.UNITS["g/L"], "g/L", 10.0, 0),
    "hemoglobin_g_dl": (v.UNITS["g/L"], "g/L", 10.0, 0),
    "creatinine_mg_dl": (v.UNITS["umol/L"], "umol/L", 88.4, 0),
}
BASELINE_WINDOW_DAYS = 28  # baseline records fall in [index - 28, index]


@dataclass
class IdCounter:
    """Next free row id per table (ids start at 1 and never repeat across chunks)."""

    next_id: dict[str, int] = field(default_factory=dict)

    def take(self, table: str, n: int) -> np.ndarray:
        """``n`` fresh consecutive ids for ``table``."""
        start = self.next_id.get(table, 1)
        self.next_id[table] = start + n
        return np.arange(start, start + n, dtype=np.int64)


def mrn(person_id: np.ndarray, seed: int) -> np.ndarray:
    """Synthetic, unique 8-digit medical record numbers (a bijection of person_id)."""
    offset = seed % 90_000_000
    return np.array([f"MRN{10_000_000 + (p * 7919 + offset) % 90_000_000:08d}" for p in person_id], dtype=object)


_FAMILY = ["Alder", "Birch", "Cedar", "Dunmore", "Elmsworth", "Fenwick", "Garrow", "Hollin",
           "Ivers", "Jarrow", "Kestrel", "Lindqvist", "Morrow", "Norland", "Oakes", "Pryce"]
_GIVEN = ["Ada", "Bram", "Cleo", "Dov", "Edda", "Finn", "Greta", "Hugo", "Ines", "Jon",
          "Kaia", "Lev", "Mira", "Nils", "Oona", "Pim"]


def synthetic_names(person_id: np.ndarray) -> np.ndarray:
    """Synthetic DICOM PatientName values ("Family^Given") derived from person_id."""
    return np.array(
        [f"{_FAMILY[p % 16]}{p // 256}^{_GIVEN[(p // 16) % 16]}" for p in person_id], dtype=object
    )


def _events(person_id, day, concept, **extra) -> pd.DataFrame:
    df = pd.DataFrame({"person_id": np.asarray(person_id, np.int64), "day": np.asarray(day, np.int64),
                       "concept_id": np.asarray(concept, np.int64)})
    for k, val in extra.items():
        df[k] = val
    return df


def conditions(lat: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Condition events: NSCLC diagnosis (+ repeats), comorbidities, other cancers."""
    parts = []
    has_nsclc = lat["reason"].to_numpy() != "no_nsclc"
    n = len(lat)
    dx_concept = rng.choice(
        [v.NSCLC.concept_id, v.LUNG_ADENOCARCINOMA.concept_id, v.LUNG_SQUAMOUS.concept_id], size=n, p=[0.4, 0.4, 0.2]
    )
    idx = lat["index_day"].to_numpy()
    t0 = lat["t0_day"].to_numpy()
    end = lat["obs_end_day"].to_numpy()
    start = lat["obs_start_day"].to_numpy()
    pid = lat["person_id"].to_numpy()
    parts.append(_events(pid[has_nsclc], idx[has_nsclc], dx_concept[has_nsclc]))
    for k in (1, 2, 3):  # follow-up records of the cancer every ~90 days while observed
        day = np.maximum(t0, idx) + 90 * k
        keep = has_nsclc & (day <= end)
        parts.append(_events(pid[keep], day[keep], dx_concept[keep]))
    # comorbidities: one record before index, inside observation
    for col, concept in (("copd", v.COPD), ("diabetes", v.T2DM), ("heart_failure", v.HEART_FAILURE), ("ckd", v.CKD)):
        has = lat[col].to_numpy() == 1
        day = idx - rng.integers(1, np.maximum(idx - start, 2))
        parts.append(_events(pid[has], day[has], np.full(has.sum(), concept.concept_id)))
    other = np.where(lat["sex_female"].to_numpy() == 1, v.BREAST_CANCER.concept_id, v.PROSTATE_CANCER.concept_id)
    before = lat["reason"].to_numpy() == "other_cancer_before"
    day = idx - rng.integers(0, np.maximum(idx - start, 1))
    parts.append(_events(pid[before], day[before], other[before]))
    # eligible people may get a second primary after index (must NOT exclude them)
    after = (lat["reason"].to_numpy() == "eligible") & (rng.random(n) < 0.02)
    day = idx + 1 + rng.integers(0, np.maximum(end - idx, 1))
    after &= day <= end
    parts.append(_events(pid[after], day[after], other[after]))
    parts.extend(_pneumonitis_records(lat, rng))
    out = pd.concat(parts, ignore_index=True)
    out["visit_concept"] = out["visit_concept"].fillna(0).astype(np.int64)
    return out


def _pneumonitis_records(lat: pd.DataFrame, rng: np.random.Generator) -> list[pd.DataFrame]:
    """Pneumonitis condition records with the visit type they must be linked to.

    The outcome: one record on the admission day of each hospitalisation (inpatient visit) after
    t0. Noise a correct outcome rule must ignore: an outpatient follow-up record 7-60 days after
    half of the admissions; a pneumonitis history before t0 (3% of NSCLC persons, half of them
    inpatient); outpatient (70%) or emergency-room records after t0 without admission (4% of
    treated persons, never on an admission day).
    """
    n = len(lat)
    pid = lat["person_id"].to_numpy()
    t0 = lat["t0_day"].to_numpy()
    start, end = lat["obs_start_day"].to_numpy(), lat["obs_end_day"].to_numpy()
    nsclc = lat["reason"].to_numpy() != "no_nsclc"
    concept = np.full(n, v.PNEUMONITIS.concept_id)
    ip, op, er = v.INPATIENT_VISIT.concept_id, v.OUTPATIENT_VISIT.concept_id, v.ER_VISIT.concept_id
    event = lat["pneumonitis_status"].to_numpy() == 1
    day = t0 + lat["pneumonitis_time_days"].to_numpy().astype(np.int64)
    follow = event & (rng.random(n) < 0.5)
    fday = day + rng.integers(7, 61, n)
    follow &= fday <= end
    hist = nsclc & (rng.random(n) < 0.03)
    hday = start + rng.integers(0, np.maximum(t0 - start, 1))
    hvisit = np.where(rng.random(n) < 0.5, ip, op)
    noise = nsclc & ~lat["untreated"].to_numpy() & (rng.random(n) < 0.04)
    nday = t0 + 1 + rng.integers(0, np.maximum(end - t0, 1))
    noise &= (nday <= end) & ~(event & (nday == day))
    nvisit = np.where(rng.random(n) < 0.7, op, er)
    return [
        _events(pid[event], day[event], concept[event], visit_concept=ip),
        _events(pid[follow], fday[follow], concept[follow], visit_concept=op),
        _events(pid[hist], hday[hist], concept[hist], visit_concept=hvisit[hist]),
        _events(pid[noise], nday[noise], concept[noise], visit_concept=nvisit[noise]),
    ]


def drugs(lat: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Drug events of the first-line regimen: 21-day cycles while observed (2-8 cycles).

    chemo: platinum (carboplatin 70% / cisplatin 30%, first 4 cycles at most) + pemetrexed
    (every cycle); io: one PD-(L)1 inhibitor every cycle; chemo_io: both, the later of the two
    starting 0 days (60%) or 1-14 days after the other (either first; never after the end of
    follow-up). A quarter of chemo persons
    get second-line immunotherapy (up to 4 cycles) 21-119 days after their last cycle.
    """
    treated_any = ~lat["untreated"].to_numpy() & (lat["reason"].to_numpy() != "no_nsclc")
    lat = lat[treated_any]
    n = len(lat)
    pid = lat["person_id"].to_numpy()
    t0 = lat["t0_day"].to_numpy()
    end = lat["obs_end_day"].to_numpy()
    arm = lat["arm"].to_numpy()
    io_drug = rng.choice([v.PEMBROLIZUMAB.concept_id, v.NIVOLUMAB.concept_id, v.ATEZOLIZUMAB.concept_id],
                         size=n, p=[0.6, 0.25, 0.15])
    platinum = rng.choice([v.CARBOPLATIN.concept_id, v.CISPLATIN.concept_id], size=n, p=[0.7, 0.3])
    n_cycles = rng.integers(2, 9, n)
    # the later drug starts before the end of follow-up, so the data show the regimen the hazard used
    offset = np.minimum(np.where(rng.random(n) < 0.6, 0, rng.integers(1, 15, n)), end - t0)
    io_first = rng.random(n) < 0.5
    combo = arm == "chemo_io"
    chemo_start = t0 + np.where(combo & io_first, offset, 0)
    io_start = t0 + np.where(combo & ~io_first, offset, 0)
    has_chemo, has_io = arm != "io", arm != "chemo"
    parts = []
    for k in range(8):
        jitter = rng.integers(-2, 3, n) if k else 0
        cday, iday = chemo_start + 21 * k + jitter, io_start + 21 * k + jitter
        ch = has_chemo & (k < n_cycles) & (cday <= end)
        plat = ch & (k < 4)
        parts.append(_events(pid[plat], cday[plat], platinum[plat]))
        parts.append(_events(pid[ch], cday[ch], np.full(ch.sum(), v.PEMETREXED.concept_id)))
        io = has_io & (k < n_cycles) & (iday <= end)
        parts.append(_events(pid[io], iday[io], io_drug[io]))
    second = (arm == "chemo") & (rng.random(n) < 0.25)
    sday = t0 + 21 * n_cycles + rng.integers(21, 120, n)
    for k in range(4):
        keep = second & (sday + 21 * k <= end)
        parts.append(_events(pid[keep], sday[keep] + 21 * k, io_drug[keep]))
    return pd.concat(parts, ignore_index=True)


def measurements(lat: pd.DataFrame, rng: np.random.Generator, rates: dict) -> pd.DataFrame:
    """Measurement events with values: baseline labs/vitals/PD-L1/ECOG/stage, history, trajectories."""
    nsclc = lat[lat["reason"].to_numpy() != "no_nsclc"]
    n = len(nsclc)
    pid = nsclc["person_id"].to_numpy()
    idx = nsclc["index_day"].to_numpy()
    start = nsclc["obs_start_day"].to_numpy()
    parts = []

    def add(mask, day, concept, value, unit, unit_src, value_concept=None):
        df = _events(pid[mask], day[mask], np.full(mask.sum(), concept))
        df["value_as_number"] = np.asarray(value, dtype=float)[mask]
        df["unit_concept_id"] = np.asarray(unit)[mask] if np.ndim(unit) else unit
        df["unit_source_value"] = np.asarray(unit_src, dtype=object)[mask] if np.ndim(unit_src) else unit_src
        df["value_as_concept_id"] = value_concept[mask] if value_concept is not None else 0
        parts.append(df)

    for col, (concept, unit, unit_code) in LABS.items():
        observed = nsclc[f"{col}_observed"].to_numpy()
        value = nsclc[col].to_numpy(dtype=float)
        units = np.full(n, unit)
        codes = np.full(n, unit_code, dtype=object)
        if col in ALT_UNITS:
            alt_unit, alt_code, factor, dec = ALT_UNITS[col]
            alt = rng.random(n) < rates["alternative_unit"][col]
            value = np.where(alt, np.round(value * factor, dec), value)
            units = np.where(alt, alt_unit, units)
            codes = np.where(alt, alt_code, codes)
        day = idx - rng.integers(0, BASELINE_WINDOW_DAYS + 1, n)
        add(observed, day, concept.concept_id, value, units, codes)
        # older history (outside the baseline window), up to 3 records at distinct days
        for k in range(3):
            hday = idx - 91 - 90 * k - rng.integers(0, 60, n)
            keep = (hday >= start) & (rng.random(n) < 0.5)
            noisy = np.round(nsclc[col].to_numpy(dtype=float) * np.exp(rng.normal(0, 0.15, n)),
                             model.DECIMALS[col])
            add(keep, hday, concept.concept_id, noisy, unit, unit_code)

    vit = nsclc["weight_kg_observed"].to_numpy()
    day = idx - rng.integers(0, BASELINE_WINDOW_DAYS + 1, n)
    add(vit, day, v.BODY_WEIGHT.concept_id, nsclc["weight_kg"], v.UNITS["kg"], "kg")
    add(vit, day, v.BMI.concept_id, nsclc["bmi_kg_m2"], v.UNITS["kg/m2"], "kg/m2")
    obs = nsclc["pdl1_pct_observed"].to_numpy()
    add(obs, idx - rng.integers(0, BASELINE_WINDOW_DAYS + 1, n), v.PDL1.concept_id, nsclc["pdl1_pct"],
        v.UNITS["%"], "%")
    obs = nsclc["ecog_observed"].to_numpy()
    add(obs, idx - rng.integers(0, 15, n), v.ECOG.concept_id, nsclc["ecog"], 0, None)
    obs = nsclc["stage_iv_observed"].to_numpy()
    stage_val = np.where(nsclc["stage_iv"].to_numpy() == 1, v.STAGE_IV.concept_id, v.STAGE_III.concept_id)
    add(obs, idx - rng.integers(0, 15, n), v.STAGE_GROUP.concept_id, np.full(n, np.nan), 0, None, stage_val)

    # driver testing between diagnosis and t0: EGFR first; ALK (a later day) only if EGFR negative
    t0 = nsclc["t0_day"].to_numpy()
    last = np.maximum(t0, idx)
    egfr_day = idx - 14 + np.floor(rng.random(n) * (last - idx + 13)).astype(np.int64)
    alk_day = egfr_day + 1 + np.floor(rng.random(n) * (last - egfr_day)).astype(np.int64)
    tested = nsclc["driver_positive_observed"].to_numpy()
    dtype = nsclc["driver_type"].to_numpy()
    pos, neg = v.VALUE_CONCEPTS["positive"], v.VALUE_CONCEPTS["negative"]
    add(tested, egfr_day, v.EGFR_TEST.concept_id, np.full(n, np.nan), 0, None, np.where(dtype == "EGFR", pos, neg))
    alk = tested & (dtype != "EGFR")
    add(alk, alk_day, v.ALK_TEST.concept_id, np.full(n, np.nan), 0, None, np.where(dtype == "ALK", pos, neg))

    # repeated labs after t0 (treated persons): person slope around the arm mean, every ~21 days
    treated_rows = ~nsclc["untreated"].to_numpy()
    end = nsclc["obs_end_day"].to_numpy()
    arm = nsclc["arm"].to_numpy()
    for col, traj in model.LAB_TRAJECTORIES.items():
        concept, unit, unit_code = LABS[col]
        slope = np.select([arm == a for a in model.ARMS], [traj[a] for a in model.ARMS])
        slope = slope + rng.normal(0, traj["slope_sd"], n)
        base = nsclc[col].to_numpy(dtype=float)
        for k in range(1, 9):
            day = t0 + 21 * k + rng.integers(-4, 5, n)
            val = base + slope * (day - t0) / 30.0 + rng.normal(0, traj["noise_sd"], n)
            val = np.round(np.maximum(val, 0.01 if model.DECIMALS[col] else 1.0), model.DECIMALS[col])
            keep = treated_rows & (day <= end) & (rng.random(n) < 0.85)
            add(keep, day, concept.concept_id, val, unit, unit_code)
    return pd.concat(parts, ignore_index=True)


def smoking_observations(lat: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One tobacco smoking status observation per person with known status (before index)."""
    keep = lat["smoking_observed"].to_numpy() & (lat["reason"].to_numpy() != "no_nsclc")
    sub = lat[keep]
    value = np.select(
        [sub["smoking_current"].to_numpy() == 1, sub["smoking_former"].to_numpy() == 1],
        [v.VALUE_CONCEPTS["current_smoker"], v.VALUE_CONCEPTS["former_smoker"]],
        v.VALUE_CONCEPTS["never_smoker"],
    )
    day = sub["index_day"].to_numpy() - rng.integers(0, 61, len(sub))
    day = np.maximum(day, sub["obs_start_day"].to_numpy())
    df = _events(sub["person_id"], day, np.full(len(sub), v.SMOKING_STATUS.concept_id))
    df["value_as_concept_id"] = value
    return df


def assign_visits(event_tables: dict[str, pd.DataFrame], ids: IdCounter, rng: np.random.Generator) -> pd.DataFrame:
    """Create one visit per (person, day) with any event and set ``visit_occurrence_id`` in place.

    Visits are numbered in (person_id, day) order. An event table may carry ``visit_concept``
    (visit concept id its visit must have, 0 = any). Returns the visit table (person_id, day,
    end_day, visit_concept_id, visit_occurrence_id).
    """
    names = list(event_tables)
    keys = np.concatenate([_visit_key(event_tables[n]) for n in names])
    unique, inverse = np.unique(keys, return_inverse=True)
    visit_ids = ids.take("visit_occurrence", len(unique))
    start = 0
    for n in names:
        stop = start + len(event_tables[n])
        event_tables[n] = event_tables[n].assign(visit_occurrence_id=visit_ids[inverse[start:stop]])
        start = stop
    # visit type: forced by an event's `visit_concept` (inpatient > emergency room > outpatient),
    # else inpatient for 3% of visits at random
    rank = {0: 0, v.OUTPATIENT_VISIT.concept_id: 1, v.ER_VISIT.concept_id: 2, v.INPATIENT_VISIT.concept_id: 3}
    forced_rank = np.zeros(len(unique), np.int64)
    for n in names:
        if "visit_concept" in event_tables[n].columns:
            codes = event_tables[n]["visit_concept"].to_numpy(dtype=np.int64)
            np.maximum.at(forced_rank, np.searchsorted(unique, _visit_key(event_tables[n])),
                          np.array([rank[c] for c in codes], dtype=np.int64))
    by_rank = np.array([0, v.OUTPATIENT_VISIT.concept_id, v.ER_VISIT.concept_id, v.INPATIENT_VISIT.concept_id])
    random_ip = rng.random(len(unique)) < 0.03
    concept = np.where(forced_rank > 0, by_rank[forced_rank],
                       np.where(random_ip, v.INPATIENT_VISIT.concept_id, v.OUTPATIENT_VISIT.concept_id))
    inpatient = concept == v.INPATIENT_VISIT.concept_id
    day = unique % _DAY_RANGE
    return pd.DataFrame({
        "visit_occurrence_id": visit_ids,
        "person_id": unique // _DAY_RANGE,
        "day": day,
        "end_day": day + np.where(inpatient, rng.integers(1, 6, len(unique)), 0),
        "visit_concept_id": concept,
    })


_DAY_RANGE = 1 << 20  # epoch days fit in 20 bits (dates up to year 4840)


def _visit_key(events: pd.DataFrame) -> np.ndarray:
    day = events["day"].to_numpy(dtype=np.int64)
    if len(day) and (day.min() < 0 or day.max() >= _DAY_RANGE):
        raise ValueError("demo visits: event day outside 1970..4840")
    return events["person_id"].to_numpy(dtype=np.int64) * _DAY_RANGE + day


def duplicate_rows(df: pd.DataFrame, share: float, rng: np.random.Generator) -> tuple[pd.DataFrame, int]:
    """Append exact copies (all columns except the row id) of a random ``share`` of rows."""
    pick = np.flatnonzero(rng.random(len(df)) < share)
    out = pd.concat([df, df.iloc[pick]], ignore_index=True)
    return out, len(pick)
