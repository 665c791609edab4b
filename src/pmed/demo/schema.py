"""OMOP CDM v5.4 column names and Arrow types of the tables the demo writes.

``to_arrow(table, columns)`` turns a dict of numpy arrays into an Arrow table with exactly
these columns in CDM order; columns the demo does not fill are written as typed nulls.
Date columns are given as integer days since 1970-01-01.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

I64, I32, F64, STR, DATE, TS = pa.int64(), pa.int32(), pa.float64(), pa.string(), pa.date32(), pa.timestamp("s")

SCHEMAS: dict[str, list[tuple[str, pa.DataType]]] = {
    "person": [
        ("person_id", I64), ("gender_concept_id", I32), ("year_of_birth", I32),
        ("month_of_birth", I32), ("day_of_birth", I32), ("birth_datetime", TS),
        ("race_concept_id", I32), ("ethnicity_concept_id", I32), ("location_id", I64),
        ("provider_id", I64), ("care_site_id", I64), ("person_source_value", STR),
        ("gender_source_value", STR), ("gender_source_concept_id", I32),
        ("race_source_value", STR), ("race_source_concept_id", I32),
        ("ethnicity_source_value", STR), ("ethnicity_source_concept_id", I32),
    ],
    "observation_period": [
        ("observation_period_id", I64), ("person_id", I64),
        ("observation_period_start_date", DATE), ("observation_period_end_date", DATE),
        ("period_type_concept_id", I32),
    ],
    "visit_occurrence": [
        ("visit_occurrence_id", I64), ("person_id", I64), ("visit_concept_id", I32),
        ("visit_start_date", DATE), ("visit_start_datetime", TS), ("visit_end_date", DATE),
        ("visit_end_datetime", TS), ("visit_type_concept_id", I32), ("provider_id", I64),
        ("care_site_id", I64), ("visit_source_value", STR), ("visit_source_concept_id", I32),
        ("admitted_from_concept_id", I32), ("admitted_from_source_value", STR),
        ("discharged_to_concept_id", I32), ("discharged_to_source_value", STR),
        ("preceding_visit_occurrence_id", I64),
    ],
    "condition_occurrence": [
        ("condition_occurrence_id", I64), ("person_id", I64), ("condition_concept_id", I32),
        ("condition_start_date", DATE), ("condition_start_datetime", TS),
        ("condition_end_date", DATE), ("condition_end_datetime", TS),
        ("condition_type_concept_id", I32), ("condition_status_concept_id", I32),
        ("stop_reason", STR), ("provider_id", I64), ("visit_occurrence_id", I64),
        ("visit_detail_id", I64), ("condition_source_value", STR),
        ("condition_source_concept_id", I32), ("condition_status_source_value", STR),
    ],
    "drug_exposure": [
        ("drug_exposure_id", I64), ("person_id", I64), ("drug_concept_id", I32),
        ("drug_exposure_start_date", DATE), ("drug_exposure_start_datetime", TS),
        ("drug_exposure_end_date", DATE), ("drug_exposure_end_datetime", TS),
        ("verbatim_end_date", DATE), ("drug_type_concept_id", I32), ("stop_reason", STR),
        ("refills", I32), ("quantity", F64), ("days_supply", I32), ("sig", STR),
        ("route_concept_id", I32), ("lot_number", STR), ("provider_id", I64),
        ("visit_occurrence_id", I64), ("visit_detail_id", I64), ("drug_source_value", STR),
        ("drug_source_concept_id", I32), ("route_source_value", STR),
        ("dose_unit_source_value", STR),
    ],
    "procedure_occurrence": [
        ("procedure_occurrence_id", I64), ("person_id", I64), ("procedure_concept_id", I32),
        ("procedure_date", DATE), ("procedure_datetime", TS), ("procedure_end_date", DATE),
        ("procedure_end_datetime", TS), ("procedure_type_concept_id", I32),
        ("modifier_concept_id", I32), ("quantity", I32), ("provider_id", I64),
        ("visit_occurrence_id", I64), ("visit_detail_id", I64), ("procedure_source_value", STR),
        ("procedure_source_concept_id", I32), ("modifier_source_value", STR),
    ],
    "measurement": [
        ("measurement_id", I64), ("person_id", I64), ("measurement_concept_id", I32),
        ("measurement_date", DATE), ("measurement_datetime", TS), ("measurement_time", STR),
        ("measurement_type_concept_id", I32), ("operator_concept_id", I32),
        ("value_as_number", F64), ("value_as_concept_id", I32), ("unit_concept_id", I32),
        ("range_low", F64), ("range_high", F64), ("provider_id", I64),
        ("visit_occurrence_id", I64), ("visit_detail_id", I64),
        ("measurement_source_value", STR), ("measurement_source_concept_id", I32),
        ("unit_source_value", STR), ("unit_source_concept_id", I32), ("value_source_value", STR),
        ("measurement_event_id", I64), ("meas_event_field_concept_id", I32),
    ],
    "observation": [
        ("observation_id", I64), ("person_id", I64), ("observation_concept_id", I32),
        ("observation_date", DATE), ("observation_datetime", TS),
        ("observation_type_concept_id", I32), ("value_as_number", F64),
        ("value_as_string", STR), ("value_as_concept_id", I32), ("qualifier_concept_id", I32),
        ("unit_concept_id", I32), ("provider_id", I64), ("visit_occurrence_id", I64),
        ("visit_detail_id", I64), ("observation_source_value", STR),
        ("observation_source_concept_id", I32), ("unit_source_value", STR),
        ("qualifier_source_value", STR), ("value_source_value", STR),
        ("observation_event_id", I64), ("obs_event_field_concept_id", I32),
    ],
    "death": [
        ("person_id", I64), ("death_date", DATE), ("death_datetime", TS),
        ("death_type_concept_id", I32), ("cause_concept_id", I32), ("cause_source_value", STR),
        ("cause_source_concept_id", I32),
    ],
    "image_occurrence": [
        ("image_occurrence_id", I64), ("person_id", I64), ("procedure_occurrence_id", I64),
        ("visit_occurrence_id", I64), ("anatomic_site_concept_id", I32), ("wadors_uri", STR),
        ("local_path", STR), ("image_occurrence_date", DATE), ("image_study_uid", STR),
        ("image_series_uid", STR), ("modality_concept_id", I32),
    ],
    "concept": [
        ("concept_id", I32), ("concept_name", STR), ("domain_id", STR), ("vocabulary_id", STR),
        ("concept_class_id", STR), ("standard_concept", STR), ("concept_code", STR),
        ("valid_start_date", DATE), ("valid_end_date", DATE), ("invalid_reason", STR),
    ],
    "concept_ancestor": [
        ("ancestor_concept_id", I32), ("descendant_concept_id", I32),
        ("min_levels_of_separation", I32), ("max_levels_of_separation", I32),
    ],
    "concept_relationship": [
        ("concept_id_1", I32), ("concept_id_2", I32), ("relationship_id", STR),
        ("valid_start_date", DATE), ("valid_end_date", DATE), ("invalid_reason", STR),
    ],
}

# Primary key of each clinical table (None: the table has none, e.g. death).
PRIMARY_KEYS = {
    "person": "person_id", "observation_period": "observation_period_id",
    "visit_occurrence": "visit_occurrence_id", "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id", "procedure_occurrence": "procedure_occurrence_id",
    "measurement": "measurement_id", "observation": "observation_id", "death": None,
    "image_occurrence": "image_occurrence_id",
}


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of an OMOP table (CDM column order)."""
    if table not in SCHEMAS:
        raise KeyError(f"schema: unknown OMOP table {table!r} (known: {sorted(SCHEMAS)})")
    return pa.schema([pa.field(name, typ) for name, typ in SCHEMAS[table]])


def to_arrow(table: str, columns: dict[str, np.ndarray]) -> pa.Table:
    """Arrow table of ``table`` from numpy columns; unknown names raise, absent ones are null.

    Date columns take integer epoch days; string columns take object arrays (None = null);
    float columns may hold NaN for null.
    """
    schema = arrow_schema(table)
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise KeyError(f"schema: {table} has no column(s) {sorted(unknown)}")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"schema: {table} columns differ in length {sorted(lengths)}")
    n = lengths.pop()
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(n, type=field.type))
        elif field.type == DATE:
            arrays.append(pa.array(np.asarray(values, dtype=np.int32), type=I32).cast(DATE))
        elif field.type == TS:
            secs = np.asarray(values, dtype=np.int64) * 86400
            arrays.append(pa.array(secs, type=pa.int64()).cast(TS))
        elif field.type == F64:
            arr = np.asarray(values, dtype=np.float64)
            arrays.append(pa.array(arr, type=F64, from_pandas=True))
        elif field.type == STR:
            arrays.append(pa.array(list(values), type=STR))
        else:
            arrays.append(pa.array(np.asarray(values).astype(field.type.to_pandas_dtype()), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
