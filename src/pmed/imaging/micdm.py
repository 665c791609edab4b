"""Radiomics results as OMOP Medical Imaging CDM rows (MI-CDM, Park et al. 2024).

MI-CDM's ``image_feature`` table links an ``image_occurrence`` (a series) to the record
that holds a derived value; a quantitative feature's value lives in a ``measurement`` row,
linked by ``image_feature_event_field_concept_id`` = 1147330 (the MEASUREMENT table
concept, as the MI-CDM guide specifies) and ``image_feature_event_id`` = measurement_id.
:func:`micdm_tables` builds both tables from the stage's per-scan features:

- ``image_feature``: image_feature_id, person_id, image_occurrence_id,
  image_feature_event_field_concept_id, image_feature_event_id, image_feature_concept_id,
  image_feature_type_concept_id, image_finding_concept_id, image_finding_id,
  anatomic_site_concept_id, alg_system, alg_datetime (the MI-CDM DDL columns).
- ``measurement``: the OMOP CDM 5.4 measurement columns that carry the value
  (value_as_number; measurement_source_value = the feature name without the
  ``original_`` image-type prefix; measurement_event_id = image_occurrence_id).

There are no standard concepts for radiomics features: concept ids are 0 ("no matching
concept") and the name is in the source value, so OMOP tools can query by it. All features
of one scan's tumour share an image_finding_id. alg_datetime is left empty (outputs must
not depend on the wall clock); alg_system names the library and the settings hash.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MEASUREMENT_TABLE_CONCEPT_ID = 1147330  # image_feature_event_field_concept_id (MI-CDM guide)
STANDARD_ALGORITHM_TYPE_CONCEPT_ID = 32880  # Type Concept "Standard algorithm"
SOURCE_VALUE_MAX = 50  # OMOP CDM 5.4 measurement_source_value varchar(50)
IMAGE_FEATURE_COLUMNS = [
    "image_feature_id", "person_id", "image_occurrence_id", "image_feature_event_field_concept_id",
    "image_feature_event_id", "image_feature_concept_id", "image_feature_type_concept_id",
    "image_finding_concept_id", "image_finding_id", "anatomic_site_concept_id", "alg_system",
    "alg_datetime",
]
MEASUREMENT_COLUMNS = [
    "measurement_id", "person_id", "measurement_concept_id", "measurement_date",
    "measurement_type_concept_id", "value_as_number", "unit_concept_id",
    "measurement_source_value", "measurement_event_id", "meas_event_field_concept_id",
]


def source_value(feature: str) -> str:
    """OMOP source value of a feature column (``original_`` prefix dropped, <= 50 chars)."""
    value = feature.removeprefix("original_")
    if len(value) > SOURCE_VALUE_MAX:
        raise ValueError(f"feature {feature!r}: source value {value!r} is longer than the "
                         f"{SOURCE_VALUE_MAX} characters of OMOP measurement_source_value")
    return value


def micdm_tables(measured: pd.DataFrame, features: list[str], alg_system: str,
                 anatomic_site: pd.Series | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(image_feature, measurement) rows for every non-missing feature value of every scan.

    Parameters
    ----------
    measured : one row per analysed scan: person_id, image_occurrence_id,
        image_occurrence_date and the ``features`` columns.
    features : feature columns to export, in output order.
    alg_system : provenance string (library, version, settings hash).
    anatomic_site : anatomic_site_concept_id per image_occurrence_id (0 when absent).

    Rows are ordered by image_occurrence_id, then ``features``; ids count from 1.
    """
    scans = measured.sort_values("image_occurrence_id", ignore_index=True)
    long = scans.melt(id_vars=["person_id", "image_occurrence_id", "image_occurrence_date"],
                      value_vars=list(features), var_name="feature", value_name="value")
    long["order"] = long["feature"].map({f: i for i, f in enumerate(features)})
    long = long.dropna(subset=["value"]).sort_values(["image_occurrence_id", "order"],
                                                     ignore_index=True)
    ids = np.arange(1, len(long) + 1, dtype=np.int64)
    site = (long["image_occurrence_id"].map(anatomic_site).fillna(0).astype(np.int64)
            if anatomic_site is not None else np.zeros(len(long), dtype=np.int64))
    finding = long["image_occurrence_id"].rank(method="dense").astype(np.int64)
    image_feature = pd.DataFrame({
        "image_feature_id": ids,
        "person_id": long["person_id"].astype(np.int64),
        "image_occurrence_id": long["image_occurrence_id"].astype(np.int64),
        "image_feature_event_field_concept_id": MEASUREMENT_TABLE_CONCEPT_ID,
        "image_feature_event_id": ids,
        "image_feature_concept_id": 0,
        "image_feature_type_concept_id": STANDARD_ALGORITHM_TYPE_CONCEPT_ID,
        "image_finding_concept_id": 0,
        "image_finding_id": finding,
        "anatomic_site_concept_id": site,
        "alg_system": alg_system,
        "alg_datetime": pd.Series(pd.NaT, index=long.index, dtype="datetime64[us]"),
    }, columns=IMAGE_FEATURE_COLUMNS)
    measurement = pd.DataFrame({
        "measurement_id": ids,
        "person_id": long["person_id"].astype(np.int64),
        "measurement_concept_id": 0,
        "measurement_date": pd.to_datetime(long["image_occurrence_date"]).dt.date,
        "measurement_type_concept_id": STANDARD_ALGORITHM_TYPE_CONCEPT_ID,
        "value_as_number": long["value"].astype(float),
        "unit_concept_id": 0,
        "measurement_source_value": long["feature"].map(source_value),
        "measurement_event_id": long["image_occurrence_id"].astype(np.int64),
        "meas_event_field_concept_id": pd.Series(pd.NA, index=long.index, dtype="Int64"),
    }, columns=MEASUREMENT_COLUMNS)
    return image_feature, measurement


def append_tables(first: tuple[pd.DataFrame, pd.DataFrame],
                  second: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(image_feature, measurement) of ``first`` followed by those of ``second`` (e.g. CT then
    MR), with the ids and image_finding_id of ``second`` shifted past those of ``first``."""
    (feat_a, meas_a), (feat_b, meas_b) = first, second
    shift = int(feat_a["image_feature_id"].max()) if len(feat_a) else 0
    finding = int(feat_a["image_finding_id"].max()) if len(feat_a) else 0
    feat_b = feat_b.assign(image_feature_id=feat_b["image_feature_id"] + shift,
                           image_feature_event_id=feat_b["image_feature_event_id"] + shift,
                           image_finding_id=feat_b["image_finding_id"] + finding)
    meas_b = meas_b.assign(measurement_id=meas_b["measurement_id"] + shift)
    return (pd.concat([feat_a, feat_b], ignore_index=True),
            pd.concat([meas_a, meas_b], ignore_index=True))
