"""Stage HTML (pmed.runner.render_html): no stderr (warnings, progress bars), nothing loaded
from the network, headings with stable ids for the checklists."""

import re

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pmed import runner


def test_render_html_offline_without_stderr(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("## Participant flow\nText."),
        new_code_cell("x", outputs=[
            new_output("stream", name="stderr",
                       text="/home/u/.venv/lib/x.py:1: FutureWarning: deprecated\n"),
            new_output("stream", name="stderr", text="radiomics: 100%|#####| 83/83\n"),
            new_output("stream", name="stdout", text="Persons: 3847\n")]),
    ])
    executed = tmp_path / "nb.ipynb"
    nbformat.write(nb, executed)
    out = tmp_path / "nb.html"
    runner.render_html(executed, out)
    page = out.read_text()
    assert "Persons: 3847" in page
    assert "FutureWarning" not in page and "100%|" not in page and "/home/" not in page
    assert not re.findall(r'<script[^>]+src="https?:', page)
    assert not re.findall(r'<link[^>]+href="https?:', page)
    assert 'id="Participant-flow"' in page
    # the executed notebook keeps the record
    assert "FutureWarning" in executed.read_text()
