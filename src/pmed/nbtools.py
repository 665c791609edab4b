"""Keep the stored notebooks clean: outputs only in the result cells CI compares.

A cell whose source starts with ``# NBVAL_CHECK_OUTPUT`` prints a key result (cohort size,
main hazard ratio, ...). ``make test`` re-executes every notebook on the CI data set with
``pytest --nbval-lax``, which compares exactly those cells with their stored output, so a
silent change of results fails CI. After an intended change, ``make nbval-refresh``
(``python -m pmed.nbtools refresh NOTEBOOK...``) re-executes the notebooks and stores the new
outputs of those cells (marked ``keep_output`` so nbstripout leaves them) and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def is_checked(cell) -> bool:
    """True for a code cell whose stored output CI compares."""
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def keep_checked_outputs(nb) -> int:
    """Strip every output except the checked cells'; number those cells. Returns their count."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            n += 1
            cell.execution_count = n
            cell.metadata["keep_output"] = True
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = n
        else:
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("keep_output", None)
            cell.metadata.pop("execution", None)
    nb.metadata.pop("papermill", None)
    return n


def refresh(notebook: Path, kernel: str = "pmed", timeout: int = 1800) -> int:
    """Execute ``notebook`` in its folder and store only the checked cells' outputs."""
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=timeout,
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    n = keep_checked_outputs(nb)
    nbformat.write(nb, notebook)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="store outputs of the checked notebook cells")
    parser.add_argument("command", choices=["refresh"])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for nb in args.notebooks:
        print(f"[pmed] refreshing {nb} ...", flush=True)
        print(f"[pmed] {nb}: stored {refresh(nb)} checked cell outputs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
