"""DEV-ONLY: write the lifelines data sets that tests/r/survival_reference.R reads.

Run from the repository root: ``.venv/bin/python tests/r/export_datasets.py``. The CSVs are
committed so R and the Python tests read the same rows.
"""

from pathlib import Path

from lifelines.datasets import load_lung, load_rossi, load_stanford_heart_transplants

OUT = Path("tests/data/r_reference/survival")

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    load_lung().to_csv(OUT / "data_lung.csv", index=False)
    load_rossi().to_csv(OUT / "data_rossi.csv", index=False)
    load_stanford_heart_transplants().to_csv(OUT / "data_stanford.csv", index=False)
