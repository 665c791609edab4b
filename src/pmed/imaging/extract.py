"""The imaging feature stage: select scans, extract features in parallel with a cache.

Steps (notebooks/05_imaging_features.ipynb calls them in this order):

1. :func:`load_image_occurrence` and :func:`select_scans`: one baseline (last scan in
   [t0 - window, t0]) and one follow-up scan (first scan in the follow-up window after t0)
   per cohort person.
2. :func:`extract_all`: for each scan read the image (DICOM series or NIfTI) and its mask,
   check geometry, compute the pyradiomics features, the mask volume and the longest axial
   diameter. Images run in parallel (``workers`` processes, tqdm progress bar); each result
   is cached in ``data/interim/radiomics_cache/<series_uid>-<settings hash>.parquet`` so a
   rerun computes only new images. A cached result is used only if the scan's *inputs* are
   unchanged: :func:`input_fingerprint` hashes the image_occurrence row, the bytes of every
   file of the image (each DICOM slice) and of the mask. Content hashes (not size + mtime)
   cost one read of the images per run (~1 s for the 656 MB default demo) and stay valid in
   a fresh clone, where every mtime is new. A failing image is excluded with its reason
   (``on_error: exclude``) or stops the stage with an error naming it (``raise``).
3. :func:`perturbation_features`: the same features under the perturbations of
   :mod:`pmed.imaging.stability` for a seeded subset of baseline images.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from pmed.cohort.omop import find_table_file
from pmed.imaging import radiomics as rad
from pmed.imaging.io import ImagingError, SeriesChecks, read_image
from pmed.imaging.masks import MaskChoice, read_roi_mask
from pmed.imaging.preprocess import Preprocessing
from pmed.imaging.response import longest_axial_diameter_mm
from pmed.imaging.stability import perturb

KEY_COLUMNS = ["person_id", "image_occurrence_id", "timepoint"]
SCAN_COLUMNS = [*KEY_COLUMNS, "image_occurrence_date", "days_from_t0", "image_series_uid",
                "local_path", "mask_path"]
MEASURE_COLUMNS = ["volume_ml", "longest_diameter_mm", "mask_voxels"]
ON_ERROR = ("exclude", "raise")

_EXTRACTOR = None  # per-process pyradiomics extractor, built by _init_worker
_CHECKS = SeriesChecks()  # per-process DICOM series tolerances, set by _init_worker
_CHOICE = MaskChoice()  # per-process choice of SEG segment / RTSTRUCT ROI, set by _init_worker
_PREP = Preprocessing()  # per-process intensity preprocessing (MR normalisation), set by _init_worker


def n_workers(requested: int) -> int:
    """Worker processes: ``requested``, or every CPU core when it is 0 (or less)."""
    return int(requested) if int(requested) > 0 else (os.cpu_count() or 1)


def load_image_occurrence(omop_dir: Path) -> pd.DataFrame:
    """OMOP ``image_occurrence`` (Parquet or CSV) with the columns the stage needs (and
    anatomic_site_concept_id when present)."""
    path = find_table_file(Path(omop_dir), "image_occurrence")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    needed = ["image_occurrence_id", "person_id", "image_occurrence_date", "image_series_uid",
              "local_path"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise KeyError(f"OMOP image_occurrence ({path}): missing columns {missing}")
    optional = [c for c in ("anatomic_site_concept_id",) if c in table.columns]
    table = table[needed + optional].copy()
    table["image_occurrence_date"] = pd.to_datetime(table["image_occurrence_date"])
    return table


def select_scans(
    image_occurrence: pd.DataFrame, cohort: pd.DataFrame, mask_path_template: str | list[str],
    baseline_window_days: int, followup_window_days: tuple[int, int],
    raw_dir: Path | None = None, baseline_choice: str = "latest",
) -> pd.DataFrame:
    """The baseline and follow-up scan of each cohort person (``SCAN_COLUMNS``).

    Baseline: the last (``baseline_choice`` "latest") or first ("earliest") scan with
    t0 - ``baseline_window_days`` <= date <= t0 (t0 = cohort t0_date, start of first-line
    treatment). Follow-up: the first scan with
    ``followup_window_days[0]`` <= date - t0 <= ``followup_window_days[1]`` days. Ties on
    the date keep the lowest image_occurrence_id. Persons not in the cohort are dropped.
    ``mask_path`` is ``mask_path_template`` formatted with the image_occurrence row; a
    list of templates (e.g. NIfTI, SEG and RTSTRUCT names) gives the first that exists
    under ``raw_dir`` (the first template when none does, so extraction reports it).
    """
    for col in ("person_id", "t0_date"):
        if col not in cohort.columns:
            raise KeyError(f"cohort: missing column {col!r}")
    lo, hi = (int(d) for d in followup_window_days)
    occurrences = image_occurrence.assign(
        image_occurrence_date=pd.to_datetime(image_occurrence["image_occurrence_date"]))
    scans = occurrences.merge(cohort[["person_id", "t0_date"]], on="person_id", how="inner")
    scans["days_from_t0"] = (scans["image_occurrence_date"] - pd.to_datetime(scans["t0_date"])).dt.days
    order = ["person_id", "image_occurrence_date", "image_occurrence_id"]
    base = scans[scans["days_from_t0"].between(-int(baseline_window_days), 0)]
    latest = {"latest": True, "earliest": False}[baseline_choice]
    base = base.sort_values(order, ascending=[True, not latest, True]).drop_duplicates("person_id")
    follow = scans[scans["days_from_t0"].between(lo, hi)]
    follow = follow.sort_values(order).drop_duplicates("person_id")
    out = pd.concat([base.assign(timepoint="baseline"), follow.assign(timepoint="followup")])
    templates = [mask_path_template] if isinstance(mask_path_template, str) else list(mask_path_template)
    try:
        out["mask_path"] = [_mask_path(templates, row, raw_dir) for row in out.to_dict("records")]
    except KeyError as err:
        raise KeyError(f"imaging_features.mask_path_template: unknown field {err} "
                       f"(image_occurrence columns: {list(image_occurrence.columns)})") from err
    out["image_occurrence_date"] = out["image_occurrence_date"].dt.date
    return out.sort_values(["person_id", "timepoint"], ignore_index=True)[SCAN_COLUMNS]


def _mask_path(templates: list[str], row: Mapping, raw_dir: Path | None) -> str:
    """The first of ``templates`` (formatted with ``row``) that exists under ``raw_dir``."""
    paths = [t.format(**row) for t in templates]
    if raw_dir is not None:
        return next((p for p in paths if (Path(raw_dir) / p).is_file()), paths[0])
    return paths[0]


def extract_all(
    scans: pd.DataFrame, raw_dir: Path, cache_dir: Path, settings: Mapping, on_error: str,
    workers: int = 1, progress: bool = True, dicom: Mapping | None = None,
    masks: Mapping | None = None, preprocessing: Mapping | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Features of every scan, from the cache or computed in parallel.

    Parameters
    ----------
    scans : DataFrame with ``SCAN_COLUMNS`` (from :func:`select_scans`).
    raw_dir : folder the scan ``local_path`` and ``mask_path`` are relative to.
    cache_dir : per-image result cache (created if missing).
    settings : params ``imaging_features.radiomics``.
    on_error : "exclude" (record the failure and go on) or "raise".
    dicom : params ``imaging_features.dicom`` (:class:`pmed.imaging.io.SeriesChecks`).
    masks : params ``imaging_features.masks`` (:class:`pmed.imaging.masks.MaskChoice`).
    preprocessing : params ``imaging_features.preprocessing``
        (:class:`pmed.imaging.preprocess.Preprocessing`), applied before the features.

    Returns
    -------
    features : DataFrame, one row per analysed scan: ``SCAN_COLUMNS`` except the paths,
        ``MEASURE_COLUMNS`` (volume_ml from the voxel count of the original mask, longest
        axial diameter in mm) and the features (``<image>_<class>_<feature>``).
    exclusions : DataFrame person_id, image_occurrence_id, timepoint, reason.
    timing : dict n_computed, n_cached, seconds (wall time of the computed images).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"imaging_features.on_error: expected one of {ON_ERROR}, got {on_error!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = rad.settings_hash(cache_settings(settings, preprocessing))
    results, todo, inputs = {}, [], {}
    for scan in scans.to_dict("records"):
        inputs[scan["image_occurrence_id"]] = input_fingerprint(Path(raw_dir), scan)
        cached = _read_cache(cache_dir, scan, key, inputs[scan["image_occurrence_id"]])
        if cached is not None:
            results[scan["image_occurrence_id"]] = cached
        else:
            todo.append(scan)
    start = time.perf_counter()
    computed = _map(_analyse_scan, [(Path(raw_dir), s) for s in todo], settings, workers,
                    progress, "radiomics", (dicom, masks, preprocessing))
    seconds = time.perf_counter() - start
    for scan, result in zip(todo, computed, strict=True):
        fingerprint = inputs[scan["image_occurrence_id"]]
        if "error" not in result and fingerprint is not None:
            _write_cache(cache_dir, scan, key, {**result, "input_sha256": fingerprint})
        results[scan["image_occurrence_id"]] = result
    rows, excluded = [], []
    for scan in scans.to_dict("records"):
        result = results[scan["image_occurrence_id"]]
        ident = {c: scan[c] for c in KEY_COLUMNS}
        if "error" in result:
            if on_error == "raise":
                raise ImagingError(result["error"])
            excluded.append({**ident, "reason": result["error"]})
        else:
            result = {k: v for k, v in result.items() if k != "input_sha256"}
            rows.append({**ident, "image_series_uid": scan["image_series_uid"],
                         "image_occurrence_date": scan["image_occurrence_date"],
                         "days_from_t0": scan["days_from_t0"], **result})
    features = pd.DataFrame(rows)
    exclusions = pd.DataFrame(excluded, columns=[*KEY_COLUMNS, "reason"])
    timing = {"n_computed": len(todo), "n_cached": len(scans) - len(todo), "seconds": seconds}
    return features, exclusions, timing


def perturbation_features(
    scans: pd.DataFrame, raw_dir: Path, cache_dir: Path, settings: Mapping,
    stability: Mapping, seed: int, workers: int = 1, progress: bool = True,
    dicom: Mapping | None = None, masks: Mapping | None = None,
    preprocessing: Mapping | None = None,
) -> pd.DataFrame:
    """Features of ``stability['n_images']`` seeded baseline scans under each perturbation.

    Results are cached like :func:`extract_all`'s (the key adds the perturbation, its
    parameters and the seed). Returns a long DataFrame: image_occurrence_id, perturbation,
    one column per feature (input of :func:`pmed.imaging.stability.stability_table`).
    Scans that fail are skipped (the main pass reports them). The perturbations act on the
    preprocessed image (``preprocessing``), so ``noise_sd_hu`` is in z-score units for MR.
    """
    base = scans[scans["timepoint"] == "baseline"].sort_values("image_occurrence_id")
    n = min(int(stability["n_images"]), len(base))
    rng = np.random.default_rng(seed)
    subset = base.iloc[np.sort(rng.choice(len(base), size=n, replace=False))]
    noise_sd, shift = float(stability["noise_sd_hu"]), float(stability["shift_voxels"])
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    results, todo = {}, []
    for scan in subset.to_dict("records"):
        fingerprint = input_fingerprint(Path(raw_dir), scan)
        keys = {}
        for kind in stability["perturbations"]:
            key = rad.settings_hash({"radiomics": cache_settings(settings, preprocessing), "perturbation": kind,
                                     "noise_sd_hu": noise_sd, "shift_voxels": shift, "seed": seed})
            cached = _read_cache(cache_dir, scan, key, fingerprint)
            if cached is not None:
                results[(scan["image_occurrence_id"], kind)] = cached
            else:
                keys[kind] = key
        if keys:  # one task per scan: the image is read and preprocessed once for its perturbations
            todo.append((Path(raw_dir), scan, keys, seed, noise_sd, shift, fingerprint))
    computed = _map(_perturbed_scan, todo, settings, workers, progress, "stability",
                    (dicom, masks, preprocessing))
    for task, by_kind in zip(todo, computed, strict=True):
        _, scan, keys, *_, fingerprint = task
        for kind, res in by_kind.items():
            if "error" not in res and fingerprint is not None:
                _write_cache(cache_dir, scan, keys[kind], {**res, "input_sha256": fingerprint})
            results[(scan["image_occurrence_id"], kind)] = res
    rows = [
        {"image_occurrence_id": ident, "perturbation": kind,
         **{k: v for k, v in res.items() if k != "input_sha256"}}
        for (ident, kind), res in results.items() if "error" not in res
    ]
    return pd.DataFrame(rows)


def _map(func, tasks: list, settings: Mapping, workers: int, progress: bool, desc: str,
         reading: tuple = (None, None, None)) -> list:
    """``[func(t) for t in tasks]`` in ``workers`` processes (each with its own extractor).

    ``reading``: params (``dicom``, ``masks``, ``preprocessing``) for the series checks, the
    mask choice and the intensity preprocessing."""
    reading = tuple(dict(r or {}) for r in (*reading, None, None, None)[:3])
    SeriesChecks.from_params(reading[0])  # bad keys fail here, once, not in every worker
    MaskChoice.from_params(reading[1])
    Preprocessing.from_params(reading[2])
    results: list = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress or not tasks, mininterval=1.0)
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(settings, 0, reading)
        for i, task in enumerate(tasks):
            results[i] = func(task)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker,
                                 initargs=(dict(settings), 1, reading)) as pool:
            futures = {pool.submit(func, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    return results


def _init_worker(settings: Mapping, threads: int, reading: tuple = (None, None, None)) -> None:
    """Build this process's pyradiomics extractor, series checks, mask choice and
    preprocessing once;
    ``threads`` > 0 caps SimpleITK's threads (1 in pool workers, so processes do not
    oversubscribe the cores)."""
    global _EXTRACTOR, _CHECKS, _CHOICE, _PREP
    if threads > 0:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    _EXTRACTOR = rad.make_extractor(settings)
    _CHECKS = SeriesChecks.from_params(reading[0])
    _CHOICE = MaskChoice.from_params(reading[1])
    _PREP = Preprocessing.from_params(reading[2])


def _load(raw_dir: Path, scan: Mapping) -> tuple[sitk.Image, sitk.Image]:
    """Image (preprocessed, :data:`_PREP`) and mask (NIfTI, SEG or RTSTRUCT) of a scan on one
    grid (ImagingError naming the file otherwise)."""
    image_path, mask_path = raw_dir / scan["local_path"], raw_dir / scan["mask_path"]
    image = read_image(image_path, _CHECKS)
    mask = read_roi_mask(mask_path, image, str(image_path), _CHOICE)
    return _PREP.apply(image, mask), mask


def cache_settings(settings: Mapping, preprocessing: Mapping | None) -> dict:
    """What the cache key hashes: the radiomics settings, plus the preprocessing unless it is
    the identity (so CT keys stay those of runs before preprocessing existed)."""
    prep = Preprocessing.from_params(preprocessing)
    return dict(settings) if prep.identity else {"radiomics": dict(settings), "preprocessing": vars(prep)}


def _describe_failure(scan: Mapping, err: Exception) -> str:
    """One-line reason naming the image_occurrence and the error."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if not isinstance(err, ImagingError):
        text = f"{type(err).__name__}: {text} (image {scan['local_path']})"
    return f"image_occurrence {scan['image_occurrence_id']}: {text}"


def _analyse_scan(task: tuple[Path, Mapping]) -> dict:
    """Measures and features of one scan, or {"error": reason}."""
    raw_dir, scan = task
    try:
        image, mask = _load(raw_dir, scan)
        array = sitk.GetArrayViewFromImage(mask).astype(bool)
        sx, sy, sz = image.GetSpacing()
        out = {
            "volume_ml": float(array.sum() * sx * sy * sz / 1000.0),
            "longest_diameter_mm": longest_axial_diameter_mm(array, (sy, sx)),
            "mask_voxels": int(array.sum()),
        }
        out.update(rad.extract_features(_EXTRACTOR, image, mask))
        return out
    except Exception as err:  # every failure becomes a named exclusion or error
        return {"error": _describe_failure(scan, err)}


def _perturbed_scan(task: tuple) -> dict:
    """Features of one scan under each perturbation of the task: {kind: features or
    {"error": reason}} (each kind draws from its own generator, seeded by scan)."""
    raw_dir, scan, keys, seed, noise_sd, shift, _ = task
    try:
        loaded = _load(raw_dir, scan)
    except Exception as err:  # the subset skips failures; the main pass reports them
        return dict.fromkeys(keys, {"error": _describe_failure(scan, err)})
    out = {}
    for kind in keys:
        try:
            rng = np.random.default_rng([seed, int(scan["image_occurrence_id"])])
            image, mask = perturb(*loaded, kind, rng, noise_sd, shift)
            out[kind] = rad.extract_features(_EXTRACTOR, image, mask)
        except Exception as err:  # as above
            out[kind] = {"error": _describe_failure(scan, err)}
    return out


FINGERPRINT_FIELDS = ("image_occurrence_id", "person_id", "image_series_uid", "local_path",
                      "mask_path")


def input_fingerprint(raw_dir: Path, scan: Mapping) -> str | None:
    """Hex SHA-256 of everything a scan's result depends on (besides the settings).

    Covers the image_occurrence fields in ``FINGERPRINT_FIELDS`` and the bytes of the image
    (every file under a DICOM series folder, with its relative name, in sorted order) and
    of the mask. None when the image or mask is missing: such a scan is never read from the
    cache, so the extraction reports it.
    """
    digest = hashlib.sha256(repr([str(scan[f]) for f in FINGERPRINT_FIELDS]).encode())
    for rel in (scan["local_path"], scan["mask_path"]):
        path = Path(raw_dir) / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            return None
        for file in files:
            digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            with open(file, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def _cache_file(cache_dir: Path, scan: Mapping, key: str) -> Path:
    """``<cache_dir>/<series_uid>-<key>.parquet``."""
    return cache_dir / f"{scan['image_series_uid']}-{key}.parquet"


def _read_cache(cache_dir: Path, scan: Mapping, key: str, fingerprint: str | None) -> dict | None:
    """The cached result of a scan, or None if absent or any of its inputs has changed."""
    path = _cache_file(cache_dir, scan, key)
    if fingerprint is None or not path.is_file():
        return None
    row = pd.read_parquet(path).iloc[0].to_dict()
    return row if row.get("input_sha256") == fingerprint else None


def _write_cache(cache_dir: Path, scan: Mapping, key: str, result: Mapping) -> None:
    """Store one scan's result (atomic rename, so a killed run leaves no partial file)."""
    path = _cache_file(cache_dir, scan, key)
    tmp = path.with_suffix(".tmp")
    pd.DataFrame([result]).to_parquet(tmp, index=False)
    tmp.replace(path)
