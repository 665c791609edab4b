"""The imaging feature stage end to end (notebooks/05_imaging_features.ipynb runs it).

:func:`run_stage` reads the cohort and OMOP ``image_occurrence``, extracts features
(:mod:`pmed.imaging.extract`), computes stability (:mod:`pmed.imaging.stability`) and
delta-radiomics (:mod:`pmed.imaging.response`), and compares features with the demo's
ground truth when ``data/raw/truth/ground_truth_tumours.csv`` exists. :func:`write_outputs`
writes the processed tables; :func:`stage_metrics` the numbers for ``write_metrics``.

Outputs (``config.path("processed")`` unless noted)

- image_features.parquet: person_id, image_occurrence_id, timepoint + one numeric column
  per feature (only persons of cohort.parquet).
- image_features_settings.json: the radiomics settings, their hash, library versions.
- image_feature_catalog.csv: per feature its IBSI tag, IBSI-verified flag, ICC and stable.
- feature_stability.csv: feature, icc, stable, n_images, n_perturbations, icc_type.
- image_response.parquet: per person with both scans, :func:`response.delta_table`.
- omop_image_feature.parquet, omop_image_feature_measurement.parquet: the features as
  MI-CDM ``image_feature`` rows and the OMOP ``measurement`` rows holding their values
  (:mod:`pmed.imaging.micdm`), for loading into an OMOP database.
- image_series_selection.csv: series considered / chosen / rejected per rule (counts below
  common.min_cell_size suppressed), :func:`pmed.imaging.selection.selection_report`.
- ``config.path("interim")``/image_exclusions.csv: excluded scans and reasons (file names;
  never shown in a report).

MR series (params ``imaging_features.mr``, :func:`modality_params`) run through the same
steps with their own selection rules, intensity preprocessing (:mod:`pmed.imaging.preprocess`)
and discretisation, and go to their own files: image_features_mr.parquet,
image_features_settings_mr.json, image_feature_catalog_mr.csv, feature_stability_mr.csv,
image_series_selection_mr.csv and interim/image_exclusions_mr.csv (empty when MR is disabled);
their MI-CDM rows follow the CT rows in the omop_image_feature files. No table mixes CT and MR
features: MR intensities have no unit, so their features are not comparable with CT's.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import radiomics
import SimpleITK as sitk
from scipy import stats

from pmed import config
from pmed.imaging import extract, micdm, selection
from pmed.imaging import radiomics as rad
from pmed.imaging.preprocess import Preprocessing
from pmed.imaging.response import delta_table
from pmed.imaging.stability import stability_table

TRUTH_FILE = "ground_truth_tumours.csv"  # written by the demo generator into data/raw/truth
MEASURES = [*extract.MEASURE_COLUMNS, "image_series_uid", "image_occurrence_date", "days_from_t0"]
STABILITY_SEED_OFFSET = 501  # common.seed + offset seeds the stability subset and noise


@dataclass
class StageResult:
    """Everything the stage computes (tables keyed by person_id / image_occurrence_id)."""

    scans: pd.DataFrame  # selected scans (extract.SCAN_COLUMNS)
    measured: pd.DataFrame  # analysed scans: keys, MEASURES and features
    exclusions: pd.DataFrame  # person_id, image_occurrence_id, timepoint, reason
    catalog: pd.DataFrame  # feature catalogue with IBSI and stability columns
    stability: pd.DataFrame  # stability.stability_table output
    response: pd.DataFrame  # response.delta_table output
    truth: pd.DataFrame  # trait, feature, n, spearman, ci_low, ci_high (empty w/o truth)
    timing: dict  # n_computed, n_cached, seconds
    settings: dict = field(default_factory=dict)  # what image_features_settings.json holds
    series_selection: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, n (suppressed)
    image_feature: pd.DataFrame = field(default_factory=pd.DataFrame)  # MI-CDM image_feature rows
    feature_measurement: pd.DataFrame = field(default_factory=pd.DataFrame)  # their measurement rows
    mr: StageResult | None = None  # the MR series' own result (CT result only; never pooled)

    @property
    def feature_names(self) -> list[str]:
        return self.catalog["feature"].tolist()

    @property
    def features(self) -> pd.DataFrame:
        """The image_features.parquet table: keys + numeric feature columns."""
        return self.measured[[*extract.KEY_COLUMNS, *self.feature_names]]


MODALITIES = ("CT", "MR")  # analysed apart: CT with the top-level params, MR with imaging_features.mr
TRUTH_FILES = {"CT": TRUTH_FILE, "MR": "ground_truth_tumours_mr.csv"}  # demo truth per modality
OUTPUT_SUFFIX = {"CT": "", "MR": "_mr"}  # file name suffix of a modality's outputs


def modality_params(imaging: dict, modality: str) -> dict:
    """The imaging_features params of one modality.

    CT: the top-level keys. MR: the same with the keys of ``imaging_features.mr`` replacing
    them: ``series_selection`` as a whole (so no CT rule leaks into MR), other mappings
    (``preprocessing``, ``radiomics``, ``stability``, ...) key by key.
    """
    if modality not in MODALITIES:
        raise ValueError(f"imaging modality: expected one of {MODALITIES}, got {modality!r}")
    base = {k: v for k, v in imaging.items() if k != "mr"}
    if modality == "CT":
        return base
    out = dict(base)
    for key, value in (imaging.get("mr") or {}).items():
        if key == "enabled":
            continue
        merge = isinstance(value, dict) and isinstance(base.get(key), dict) and key != "series_selection"
        out[key] = {**base[key], **value} if merge else value
    return out


def mr_enabled(imaging: dict) -> bool:
    """True when params ``imaging_features.mr.enabled`` asks for the MR analysis."""
    return bool((imaging.get("mr") or {}).get("enabled", False))


def run_stage(common: dict, imaging: dict, cohort: pd.DataFrame | None = None) -> StageResult:
    """Run the imaging feature stage on the workspace data (params as in params.yaml).

    Returns the CT result; its ``mr`` attribute holds the MR result (None when
    ``imaging_features.mr.enabled`` is false or no MR series meets the MR rules). CT and MR
    never share a table: each has its own selection, preprocessing, features and stability.
    """
    if cohort is None:
        cohort = pd.read_parquet(config.path("processed") / "cohort.parquet")
    occurrences = extract.load_image_occurrence(config.path("omop"))
    considered = in_windows(occurrences, cohort, imaging["baseline_window_days"],
                            imaging["followup_window_days"])
    headers = selection.series_headers(config.path("raw"), considered)
    result = run_modality(common, modality_params(imaging, "CT"), cohort, occurrences, headers, "CT")
    if mr_enabled(imaging):
        mr = run_modality(common, modality_params(imaging, "MR"), cohort, occurrences, headers, "MR",
                          require=False)
        if mr is not None:
            result.mr = mr
            result.image_feature, result.feature_measurement = micdm.append_tables(
                (result.image_feature, result.feature_measurement),
                (mr.image_feature, mr.feature_measurement))
    return result


def run_modality(common: dict, imaging: dict, cohort: pd.DataFrame, occurrences: pd.DataFrame,
                 headers: pd.DataFrame, modality: str, require: bool = True) -> StageResult | None:
    """Select, extract and assess the series of one modality (``imaging``: its params,
    :func:`modality_params`; ``headers``: :func:`selection.series_headers` of the series in
    the time windows). None when ``require`` is false and no series was selected."""
    rules = selection.SeriesRules.from_params(imaging.get("series_selection"))
    reasons = selection.apply_rules(headers, rules)
    eligible = headers.loc[reasons == "", "image_occurrence_id"]
    scans = extract.select_scans(
        occurrences[occurrences["image_occurrence_id"].isin(eligible)], cohort,
        imaging["mask_path_template"], imaging["baseline_window_days"],
        imaging["followup_window_days"], config.path("raw"), rules.baseline_choice,
    )
    if scans.empty and not require:
        return None
    series_report = selection.selection_report(headers, reasons, scans["image_occurrence_id"],
                                               int(common["min_cell_size"]))
    workers = extract.n_workers(imaging["workers"])
    settings = imaging["radiomics"]
    prep = imaging.get("preprocessing")
    progress = bool(imaging.get("progress", True))
    reading = (imaging.get("dicom"), imaging.get("masks"), prep)
    cache = config.path("interim") / "radiomics_cache"
    measured, exclusions, timing = extract.extract_all(
        scans, config.path("raw"), cache, settings, imaging["on_error"], workers, progress, *reading)
    if measured.empty:
        raise RuntimeError(f"imaging_features ({modality}): none of {len(scans)} selected scans "
                           f"could be analysed; see the exclusion reasons")
    feature_names = [c for c in measured.columns if c not in [*extract.KEY_COLUMNS, *MEASURES]]
    catalog = rad.feature_catalog(feature_names)
    stab_params = imaging["stability"]
    seed = int(common["seed"]) + STABILITY_SEED_OFFSET
    analysed = scans[scans["image_occurrence_id"].isin(measured["image_occurrence_id"])]
    perturbed = extract.perturbation_features(
        analysed, config.path("raw"), cache, settings, stab_params, seed, workers, progress, *reading)
    stability = stability_table(perturbed, float(stab_params["icc_threshold"]),
                                str(stab_params["icc_type"]))
    catalog = catalog.merge(stability[["feature", "icc", "stable"]], on="feature", how="left")
    catalog["stable"] = catalog["stable"].fillna(False).astype(bool)
    resp = imaging["response"]
    response = delta_table(measured, list(resp["key_features"]), float(resp["pr_pct"]),
                           float(resp["pd_pct"]), float(resp["pd_min_increase_mm"]))
    truth = truth_correlations(measured, config.path("truth") / TRUTH_FILES[modality],
                               imaging.get("truth_features", {}))
    saved = {
        "modality": modality,
        "radiomics": settings, "settings_hash": rad.settings_hash(settings),
        "mask_path_template": imaging["mask_path_template"],
        "baseline_window_days": imaging["baseline_window_days"],
        "followup_window_days": imaging["followup_window_days"],
        "versions": {"pyradiomics": radiomics.__version__, "SimpleITK": sitk.Version_VersionString(),
                     "python": platform.python_version()},
        "n_features": len(feature_names),
        "n_ibsi_verified": int(catalog["ibsi_verified"].sum()),
    }
    if prep is not None:
        saved["preprocessing"] = vars(Preprocessing.from_params(prep))
    saved["series_selection"] = {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in vars(rules).items()}
    site = (occurrences.set_index("image_occurrence_id")["anatomic_site_concept_id"]
            if "anatomic_site_concept_id" in occurrences.columns else None)
    key = rad.settings_hash(extract.cache_settings(settings, prep))
    alg = f"pmed imaging_features {modality}; pyradiomics {radiomics.__version__}; settings {key}"
    image_feature, feature_measurement = micdm.micdm_tables(
        measured, [*extract.MEASURE_COLUMNS[:2], *feature_names], alg, site)
    return StageResult(scans, measured, exclusions, catalog, stability, response, truth,
                       timing, saved, series_report, image_feature, feature_measurement)


def in_windows(occurrences: pd.DataFrame, cohort: pd.DataFrame, baseline_window_days: int,
               followup_window_days) -> pd.DataFrame:
    """Image occurrences of cohort persons dated in the baseline or the follow-up window."""
    occ = occurrences.merge(cohort[["person_id", "t0_date"]], on="person_id", how="inner")
    days = (pd.to_datetime(occ["image_occurrence_date"]) - pd.to_datetime(occ["t0_date"])).dt.days
    lo, hi = (int(d) for d in followup_window_days)
    keep = days.between(-int(baseline_window_days), 0) | days.between(lo, hi)
    return occ.loc[keep, occurrences.columns].reset_index(drop=True)


def truth_correlations(measured: pd.DataFrame, truth_file: Path, pairs: dict) -> pd.DataFrame:
    """Spearman correlation of each feature with its true tumour trait (demo data only).

    ``pairs`` maps a ground-truth column (e.g. volume_ml) to a feature name; the truth file
    is joined on image_series_uid. CIs: Fisher z with SE sqrt(1.06 / (n - 3)) (Fieller,
    Hartley & Pearson 1957). Returns an empty table when the file does not exist.
    """
    columns = ["trait", "feature", "n", "spearman", "ci_low", "ci_high"]
    truth_file = Path(truth_file)
    if not truth_file.is_file() or not pairs:
        return pd.DataFrame(columns=columns)
    truth = pd.read_csv(truth_file)
    needed = ["image_series_uid", *pairs]
    missing = [c for c in needed if c not in truth.columns]
    if missing:
        raise KeyError(f"{truth_file.name}: missing columns {missing}")
    joined = measured.merge(truth[needed], on="image_series_uid", how="inner",
                            suffixes=("", "_true"))
    rows = []
    for trait, feature in pairs.items():
        if feature not in joined.columns:
            raise KeyError(f"imaging_features.truth_features.{trait}: unknown feature {feature!r}")
        true_col = f"{trait}_true" if trait in measured.columns else trait
        ok = joined[[true_col, feature]].dropna()
        n = len(ok)
        rho = stats.spearmanr(ok[true_col], ok[feature]).statistic if n > 3 else np.nan
        half = 1.959964 * np.sqrt(1.06 / (n - 3)) if n > 3 else np.nan
        z = np.arctanh(np.clip(rho, -1 + 1e-12, 1 - 1e-12))
        rows.append({"trait": trait, "feature": feature, "n": n, "spearman": rho,
                     "ci_low": np.tanh(z - half), "ci_high": np.tanh(z + half)})
    return pd.DataFrame(rows, columns=columns)


# exclusion reason categories for reports (the full reasons name files; they stay in interim)
REASON_CATEGORIES = {
    "not a readable DICOM file": "corrupt DICOM file",
    "cannot decode pixel data": "corrupt DICOM pixel data",
    "no DICOM files": "missing image",
    "not found": "missing image or mask",
    "unreadable NIfTI": "corrupt mask file",
    "mask is empty": "empty mask",
    "does not match image": "mask/image geometry mismatch",
    "duplicate slice position": "inconsistent DICOM series",
    "missing slice": "inconsistent DICOM series",
    "non-uniform slice spacing": "inconsistent DICOM series",
    "differs from": "inconsistent DICOM series",
    "mixed ": "inconsistent DICOM series",
    "multi-frame": "unsupported DICOM object",
    "is not CT or MR": "unsupported DICOM object",
    "gantry tilt": "gantry tilt",
    "FrameOfReferenceUID": "mask/image reference mismatch",
    "references series": "mask/image reference mismatch",
    "expected exactly one": "mask structure not found",
    "has no voxel on the grid": "empty mask",
    "expected a DICOM SEG": "unsupported mask object",
}


def reason_category(reason: str) -> str:
    """Short, file-free category of an exclusion reason (for tables in a report)."""
    return next((cat for text, cat in REASON_CATEGORIES.items() if text in reason), "other error")


def write_outputs(result: StageResult) -> dict[str, Path]:
    """Write the stage's tables (module docstring) and return their paths: the CT ones, and
    the MR ones under ``<name>_mr`` keys (empty tables when no MR series was analysed, so the
    stage's outputs always exist)."""
    paths = _write_modality(result, "CT")
    mr = result.mr if result.mr is not None else _empty_result()
    paths.update({f"{k}_mr": v for k, v in _write_modality(mr, "MR").items()})
    return paths


def _write_modality(result: StageResult, modality: str) -> dict[str, Path]:
    """Write one modality's tables; MR file names end in ``_mr`` and have no response or MI-CDM
    file (MR has no follow-up scan; its MI-CDM rows are appended to the CT result's)."""
    processed, interim = config.path("processed"), config.path("interim")
    processed.mkdir(parents=True, exist_ok=True)
    interim.mkdir(parents=True, exist_ok=True)
    sfx = OUTPUT_SUFFIX[modality]
    paths = {
        "features": processed / f"image_features{sfx}.parquet",
        "settings": processed / f"image_features_settings{sfx}.json",
        "catalog": processed / f"image_feature_catalog{sfx}.csv",
        "stability": processed / f"feature_stability{sfx}.csv",
        "exclusions": interim / f"image_exclusions{sfx}.csv",
        "series_selection": processed / f"image_series_selection{sfx}.csv",
    }
    if modality == "CT":
        paths.update({
            "response": processed / "image_response.parquet",
            "image_feature": processed / "omop_image_feature.parquet",
            "feature_measurement": processed / "omop_image_feature_measurement.parquet",
        })
    result.features.to_parquet(paths["features"], index=False)
    paths["settings"].write_text(json.dumps(result.settings, indent=2, sort_keys=True) + "\n")
    result.catalog.to_csv(paths["catalog"], index=False, float_format="%.6g")
    result.stability.to_csv(paths["stability"], index=False, float_format="%.6g")
    result.exclusions.to_csv(paths["exclusions"], index=False)
    result.series_selection.to_csv(paths["series_selection"], index=False)
    if modality == "CT":
        result.response.to_parquet(paths["response"], index=False)
        result.image_feature.to_parquet(paths["image_feature"], index=False)
        result.feature_measurement.to_parquet(paths["feature_measurement"], index=False)
    return paths


def _empty_result() -> StageResult:
    """The MR result when no MR series was analysed: empty tables, settings saying so."""
    empty = pd.DataFrame(columns=extract.KEY_COLUMNS)
    catalog = pd.DataFrame(columns=["feature", "image_type", "feature_class", "ibsi_tag",
                                    "ibsi_verified", "note", "icc", "stable"])
    return StageResult(
        pd.DataFrame(columns=extract.SCAN_COLUMNS), empty, pd.DataFrame(columns=[*extract.KEY_COLUMNS, "reason"]),
        catalog, pd.DataFrame(columns=["feature", "icc", "stable", "n_images", "n_perturbations", "icc_type"]),
        pd.DataFrame(), pd.DataFrame(), {"n_computed": 0, "n_cached": 0, "seconds": 0.0},
        {"modality": "MR", "analysed": False}, pd.DataFrame(columns=["step", "n"]))


def stage_metrics(result: StageResult) -> dict:
    """Numbers for ``write_metrics("imaging_features", ...)`` (aggregates only).

    Only results: cache hits and timings vary between runs of the same data and params, so
    they are printed by the notebook (and measured by benchmarks/bench_imaging.py) instead.
    """
    metrics = {
        "n_scans_selected": len(result.scans),
        "n_images": len(result.measured),
        "n_excluded": len(result.exclusions),
        "n_features": len(result.feature_names),
        "n_ibsi_verified": int(result.catalog["ibsi_verified"].sum()),
        "n_stable": int(result.catalog["stable"].sum()),
        "n_stability_images": int(result.stability["n_images"].max()) if len(result.stability) else 0,
        "n_followup_pairs": len(result.response),
    }
    for row in result.truth.itertuples():
        metrics[f"truth_spearman_{row.trait}"] = {
            "estimate": row.spearman, "ci_low": row.ci_low, "ci_high": row.ci_high,
        }
    if result.mr is not None:
        mr = stage_metrics(result.mr)
        for key in ("n_followup_pairs",):  # MR: baseline series only
            mr.pop(key)
        metrics["mr"] = {**mr, "preprocessing": result.mr.settings.get("preprocessing", {})}
    return metrics
