"""MI-CDM image_feature + measurement rows: columns, links, values back by SQL."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from pmed.imaging import micdm


def _measured() -> pd.DataFrame:
    return pd.DataFrame({
        "person_id": [7, 3],
        "image_occurrence_id": [20, 10],
        "image_occurrence_date": [dt.date(2022, 5, 1), dt.date(2022, 1, 2)],
        "volume_ml": [12.5, 3.0],
        "original_glcm_JointEntropy": [4.25, np.nan],
        "original_shape_Sphericity": [0.8, 0.7],
    })


def test_rows_ids_and_links():
    features = ["volume_ml", "original_glcm_JointEntropy", "original_shape_Sphericity"]
    site = pd.Series({10: 4199473, 20: 4199473})
    feat, meas = micdm.micdm_tables(_measured(), features, "pmed test", site)
    assert list(feat.columns) == micdm.IMAGE_FEATURE_COLUMNS
    assert list(meas.columns) == micdm.MEASUREMENT_COLUMNS
    # scan 10 first (sorted by image_occurrence_id), its missing JointEntropy has no row
    assert feat["image_occurrence_id"].tolist() == [10, 10, 20, 20, 20]
    assert feat["image_feature_id"].tolist() == [1, 2, 3, 4, 5]
    assert feat["image_finding_id"].tolist() == [1, 1, 2, 2, 2]
    assert (feat["image_feature_event_field_concept_id"] == 1147330).all()
    assert (feat["anatomic_site_concept_id"] == 4199473).all()
    assert meas["measurement_source_value"].tolist() == [
        "volume_ml", "shape_Sphericity", "volume_ml", "glcm_JointEntropy", "shape_Sphericity"]
    assert meas["value_as_number"].tolist() == [3.0, 0.7, 12.5, 4.25, 0.8]
    assert meas["measurement_event_id"].tolist() == [10, 10, 20, 20, 20]
    assert meas["measurement_date"].tolist() == [dt.date(2022, 1, 2)] * 2 + [dt.date(2022, 5, 1)] * 3
    assert feat["alg_datetime"].isna().all()


def test_values_back_through_sql(tmp_path):
    """An OMOP query (image_feature -> measurement) returns the wide feature table."""
    features = ["volume_ml", "original_glcm_JointEntropy", "original_shape_Sphericity"]
    feat, meas = micdm.micdm_tables(_measured(), features, "pmed test")
    feat.to_parquet(tmp_path / "image_feature.parquet")
    meas.to_parquet(tmp_path / "measurement.parquet")
    got = duckdb.sql(f"""
        SELECT f.image_occurrence_id, m.measurement_source_value AS feature, m.value_as_number
        FROM '{tmp_path / "image_feature.parquet"}' f
        JOIN '{tmp_path / "measurement.parquet"}' m
          ON f.image_feature_event_field_concept_id = 1147330
         AND m.measurement_id = f.image_feature_event_id
        ORDER BY 1, 2""").df()
    wide = got.pivot(index="image_occurrence_id", columns="feature", values="value_as_number")
    expected = _measured().set_index("image_occurrence_id")[features].rename(
        columns=micdm.source_value).sort_index()
    pd.testing.assert_frame_equal(wide[expected.columns], expected, check_names=False)


def test_long_name_is_refused():
    name = "original_gldm_" + "X" * 50
    with pytest.raises(ValueError, match="longer than the 50 characters of OMOP measurement_source_value"):
        micdm.source_value(name)
