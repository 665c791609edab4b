"""Stored notebooks follow the project's conventions (checked without executing them)."""

import json

import pytest

from pmed import config, nbtools

NOTEBOOKS = sorted(config.NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert nb["metadata"]["kernelspec"]["name"] == "pmed"
    for cell in code:
        src = "".join(cell["source"])
        if src.lstrip().startswith(nbtools.CHECK_MARK):
            continue
        assert not cell.get("outputs"), f"stored output in an unchecked cell: {src[:60]!r}"
        assert "/work/" not in src and "/home/" not in src, "absolute path in a cell"


def test_keep_checked_outputs_strips_the_rest():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", text="a")]),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=7,
                                  outputs=[nbformat.v4.new_output("stream", text="1\n")]),
    ])
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-11-29T19:26:01Z"}
    assert nbtools.keep_checked_outputs(nb) == 1
    assert "execution" not in nb.cells[1].metadata  # no timings: refreshes diff only on results
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None
    assert nb.cells[1].execution_count == 1 and nb.cells[1].metadata["keep_output"] is True
    assert nb.cells[1].outputs[0]["text"] == "1\n"
