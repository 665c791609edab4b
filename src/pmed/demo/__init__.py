"""Deterministic synthetic OMOP CDM + DICOM demo data set (NSCLC first line: chemo, io, chemo_io).

``python -m pmed.demo --size default|ci|benchmark [--out DIR] [--seed N]`` writes
``data/raw/`` (OMOP tables as Parquet, DICOM series + tumour masks, ground_truth.json).
See ``DATA_DICTIONARY.md`` in this folder for every table, column, concept and defect.
"""
