"""The stage runner: exactly the params a stage lists in dvc.yaml, all-or-nothing outputs,
the same bytes for the same inputs."""

import base64
import io
import json
import logging
import os
from pathlib import Path

import nbformat
import pytest
import yaml

from pmed import config, nbtools, runner

PARAMS = {"common": {"seed": 1, "min_cell_size": 11}, "survival": {"horizon_days": 365}}


def test_stage_parameters_whole_section_and_single_keys():
    spec = {"params": ["common.seed", "survival"]}
    assert runner.stage_parameters(spec, PARAMS) == {
        "common": {"seed": 1}, "survival": {"horizon_days": 365}}


def test_stage_parameters_unknown_key_names_it():
    with pytest.raises(KeyError, match="common.nope"):
        runner.stage_parameters({"params": ["common.nope"]}, PARAMS)


def test_stage_notebook_needs_exactly_one_ipynb():
    spec = {"deps": ["notebooks/01_cohort.ipynb", "src/pmed/cohort"]}
    assert runner.stage_notebook(spec) == config.ROOT / "notebooks/01_cohort.ipynb"
    with pytest.raises(ValueError, match="exactly one"):
        runner.stage_notebook({"deps": ["src/pmed"]})


def test_missing_kernel_names_the_fix():
    with pytest.raises(SystemExit, match="make venv"):
        runner.require_kernel("no-such-kernel-pmed")


def test_overlay_replaces_values_and_rejects_unknown_keys(monkeypatch, tmp_path):
    from pmed import config

    params = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert config.merge_overlay(params, {"a": {"c": {"d": 5}}}, "x") == {
        "a": {"b": 1, "c": {"d": 5}}, "e": 3}
    with pytest.raises(config.ParamsError, match=r"^x: a.c.typo: unknown key \(not in params.yaml\)$"):
        config.merge_overlay(params, {"a": {"c": {"typo": 1}}}, "x")


def test_ci_overlay_matches_params_yaml(monkeypatch):
    from pmed import config

    monkeypatch.setenv("PMED_PARAMS_OVERLAY", "tests/params_ci.yaml")
    params = config.stage_params("survival")
    assert params["survival"]["n_imputations"] == 3
    assert params["survival"]["covariates"] == config.load_params(config.PARAMS_FILE)["survival"]["covariates"]


@pytest.mark.parametrize("stage,overlay_text,expected", [
    ("outcomes", 'outcomes:\n  n_bootstrap: "100"\n',
     "outcomes.n_bootstrap: expected an integer >= 1, got a string"),
    # a radiomics setting goes to the worker processes: checked here, never a BrokenProcessPool
    ("imaging_features", "imaging_features:\n  radiomics:\n    interpolator: sitkLinar\n",
     "imaging_features.radiomics.interpolator: expected one of sitkNearestNeighbor, sitkLinear, "
     "sitkBSpline, got 'sitkLinar'"),
])
def test_a_bad_param_stops_the_runner_before_the_kernel(tmp_path, stage, overlay_text, expected):
    """`python -m pmed.runner` with a bad key (here from an overlay, as `make nbval` passes
    tests/params_ci.yaml): the schema message is the first line of stderr, nothing written."""
    import subprocess
    import sys

    overlay, ws = tmp_path / "overlay.yaml", tmp_path / "ws"
    overlay.write_text(overlay_text)
    ws.mkdir()
    run = subprocess.run([sys.executable, "-m", "pmed.runner", stage], capture_output=True,
                         text=True, env={**os.environ, "PMED_WORKSPACE": str(ws),
                                         "PMED_PARAMS_OVERLAY": str(overlay)})
    assert run.returncode == 1
    assert run.stderr.splitlines()[0] == f"{overlay}: {expected}"
    assert run.stdout == "" and list(ws.iterdir()) == []


def test_notebook_parameters_cells_hold_only_the_stage():
    import json

    for nb in sorted(config.NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb.name
        code = [line for line in "".join(tagged[0]["source"]).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) == 1 and code[0].startswith("stage = "), (nb.name, code)


# --- all-or-nothing stage outputs, reproducible bytes -------------------------------------

TOY_DVC = {"stages": {"toy": {
    "cmd": ".venv/bin/python -m pmed.runner toy",
    "deps": ["NOTEBOOK"],
    "params": ["toy"],
    "outs": ["${paths.figures}/toy", "${paths.processed}/toy.parquet",
             {"${paths.interim}/toy_cache": {"persist": True, "cache": False}}],
    "metrics": [{"${paths.metrics}/toy.json": {"cache": False}}],
    "plots": [{"${paths.plots}/toy.csv": {"cache": False}}],
}}}

TOY_CELLS = [
    ("toy = {'value': 1, 'fail': False}", ["parameters"]),
    ("import matplotlib.pyplot as plt\n"
     "import pandas as pd\nfrom pmed import config, report\n"
     "report.write_metrics('toy', {'value': toy['value']})\n"
     "report.write_plot_data('toy', pd.DataFrame({'x': [1, 2], 'y': [toy['value'], 3]}))\n"
     "pd.DataFrame({'v': [toy['value']]}).to_parquet(config.path('processed') / 'toy.parquet')\n"
     "(config.path('figures') / 'toy').mkdir(parents=True, exist_ok=True)\n"
     "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([0, toy['value']])\n"
     "fig.savefig(config.path('figures') / 'toy' / 'line.png')\n"
     "cache = config.path('interim') / 'toy_cache'\ncache.mkdir(parents=True, exist_ok=True)\n"
     "(cache / f\"entry{toy['value']}.txt\").write_text('cached')\n"
     "print('wrote to', config.path('metrics'))\nfig", []),
    ("if toy['fail']:\n    raise ValueError('toy.fail is set')", []),
]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A one-notebook stage in dvc.yaml form, run in a workspace under tmp_path."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in TOY_CELLS])
    nb.metadata["kernelspec"] = {"name": "pmed", "display_name": "pmed", "language": "python"}
    notebook = tmp_path / "toy.ipynb"
    nbformat.write(nb, notebook)
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text(yaml.safe_dump(TOY_DVC).replace("NOTEBOOK", str(notebook)))
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("PMED_WORKSPACE", str(ws))

    def run(**toy_params):
        return runner.run_stage("toy", dvc_file, {"toy": {"value": 1, "fail": False, **toy_params}})
    return ws, run


def _outputs(ws):
    files = [*ws.glob("reports/**/*"), *ws.glob("data/processed/*")]
    return {str(f.relative_to(ws)): f.read_bytes() for f in files if f.is_file()}


def test_stage_outputs_resolves_paths_and_persist():
    params = {"paths": {"figures": "reports/figures", "interim": "data/interim",
                        "metrics": "reports/metrics", "plots": "reports/plots",
                        "processed": "data/processed"}}
    outs = runner.stage_outputs(TOY_DVC["stages"]["toy"], params)
    assert outs == {Path("reports/figures/toy"): False, Path("data/processed/toy.parquet"): False,
                    Path("data/interim/toy_cache"): True, Path("reports/metrics/toy.json"): False,
                    Path("reports/plots/toy.csv"): False}
    with pytest.raises(KeyError, match="paths.nope"):
        runner.interpolate("${paths.nope}/x", params)


def test_stage_runs_reproducibly_and_a_failed_run_changes_nothing(toy):
    ws, run = toy
    html = run(value=1)
    first = _outputs(ws)
    assert set(first) == {
        "reports/toy.html", "reports/executed/toy.ipynb", "reports/metrics/toy.json",
        "reports/plots/toy.csv", "reports/figures/toy/line.png", "data/processed/toy.parquet"}
    assert html == ws / "reports/toy.html"
    assert not (ws / runner.STAGING).exists()
    assert (ws / "data/interim/toy_cache/entry1.txt").exists()  # persist: written in place
    # same inputs, same bytes: no timings, kernel ids, absolute paths or PNG text chunks
    run(value=1)
    assert _outputs(ws) == first
    executed = first["reports/executed/toy.ipynb"].decode()
    assert str(ws) not in executed and "start_time" not in executed and "duration" not in executed
    assert "wrote to reports/metrics" in executed
    assert b"Software" not in first["reports/figures/toy/line.png"]
    inline = json.loads(executed)["cells"][2]["outputs"][-1]["data"]["image/png"]
    assert b"tEXt" not in base64.b64decode(inline)
    # a bad param fails after the notebook wrote new metrics, plots and a figure: none lands
    with pytest.raises(runner.StageError, match="toy.fail is set"):
        run(value=2, fail=True)
    assert _outputs(ws) == first
    assert (ws / runner.STAGING / "toy" / "reports/metrics/toy.json").exists()  # for inspection
    run(value=3)
    assert json.loads((ws / "reports/metrics/toy.json").read_text()) == {"value": 3}
    assert not (ws / runner.STAGING).exists()


def test_undeclared_output_is_an_error(tmp_path):
    (tmp_path / "reports/metrics").mkdir(parents=True)
    (tmp_path / "reports/metrics/toy.json").write_text("{}")
    (tmp_path / "reports/stray.txt").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/raw").symlink_to(tmp_path / "reports")  # links into the study are inputs
    with pytest.raises(runner.StageError, match="reports/stray.txt"):
        runner.check_outputs(tmp_path, {Path("reports/metrics/toy.json")}, "toy")
    (tmp_path / "reports/stray.txt").unlink()
    runner.check_outputs(tmp_path, {Path("reports/metrics/toy.json")}, "toy")
    with pytest.raises(runner.StageError, match="did not write.*plots/toy.csv"):
        runner.check_outputs(tmp_path, {Path("reports/plots/toy.csv")}, "toy")


def test_staging_mirrors_the_study_without_the_stage_outputs(tmp_path):
    ws = tmp_path
    (ws / "data/processed").mkdir(parents=True)
    (ws / "data/processed/cohort.parquet").write_text("input")
    (ws / "data/processed/toy.parquet").write_text("old output")
    (ws / "data/raw/omop").mkdir(parents=True)
    staging = runner.prepare_staging(ws, "toy", {Path("data/processed/toy.parquet"),
                                                 Path("reports/toy.html")})
    assert (staging / "data/raw").is_symlink()
    assert (staging / "data/processed/cohort.parquet").read_text() == "input"
    assert not (staging / "data/processed/toy.parquet").exists()
    assert (staging / "reports").is_dir() and not (staging / "reports").is_symlink()


def test_commit_outputs_puts_the_previous_set_back_if_a_move_fails(tmp_path, monkeypatch):
    ws, staging = tmp_path / "ws", tmp_path / "ws" / runner.STAGING / "toy"
    for root, text in ((ws, "old"), (staging, "new")):
        for name in ("a.txt", "b.txt"):
            (root / "out").mkdir(parents=True, exist_ok=True)
            (root / "out" / name).write_text(text)
    real_replace, calls = runner.os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the second output's new file
            raise OSError("disk full")
        real_replace(src, dst)
    monkeypatch.setattr(runner.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        runner.commit_outputs(staging, ws, {Path("out/a.txt"), Path("out/b.txt")})
    monkeypatch.setattr(runner.os, "replace", real_replace)
    assert [(ws / "out" / n).read_text() for n in ("a.txt", "b.txt")] == ["old", "old"]


def test_kernel_environment_pins_threads_and_is_restored(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    with runner.kernel_environment(Path("/x/ws")):
        assert runner.os.environ["OMP_NUM_THREADS"] == "1"
        assert runner.os.environ["OPENBLAS_NUM_THREADS"] == "1"
        assert runner.os.environ["PMED_WORKSPACE"] == "/x/ws"
    assert runner.os.environ["OMP_NUM_THREADS"] == "8"


def test_kernel_prefix_is_the_kernels_environment():
    assert (runner.kernel_prefix() / "bin").is_dir()


def test_blas_pin_only_where_the_cpu_has_the_kernels(tmp_path):
    cpu = tmp_path / "cpuinfo"
    cpu.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n")
    assert runner.blas_pin(cpu) == {"OPENBLAS_CORETYPE": "Haswell"}
    cpu.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx\n")
    assert runner.blas_pin(cpu) == {}
    assert runner.blas_pin(tmp_path / "absent") == {}


def _png(text_chunk: bool) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if text_chunk:
        info.add_text("Software", "Matplotlib version 9")
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(buf, format="png", pnginfo=info)
    return buf.getvalue()


def test_strip_png_metadata_keeps_the_image():
    from PIL import Image

    with_text, without = _png(True), _png(False)
    assert b"Software" in with_text
    stripped = nbtools.strip_png_metadata(with_text)
    assert stripped == without
    assert Image.open(io.BytesIO(stripped)).getpixel((2, 1)) == (10, 20, 30)
    assert nbtools.strip_png_metadata(b"not a png") == b"not a png"


def test_scrub_executed_removes_run_metadata_and_paths():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"],
                                                      "papermill": {"duration": 1.2},
                                                      "execution": {"iopub.status.busy": "t"}}),
        nbformat.v4.new_code_cell("print()", outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="a 10%\rb 100%\n"),
            nbformat.v4.new_output("stream", name="stderr", text=(
                "radiomics:   0%|          | 0/83\rradiomics: 100%|##########| 83/83\n"
                "stability: 100%|##########| 150/150 [00:12<00:00, 4.8it/s]\n")),
            nbformat.v4.new_output("stream", name="stderr", text=(
                "/ws/x/data/a.csv read\n/ws/xy/b in /ws/x, /home/u/.pyenv/w.py:1\n")),
            nbformat.v4.new_output("display_data", data={
                "text/plain": "/repo/src/f.py <Styler at 0x7f7d2566a1d0>", "image/png": base64.b64encode(_png(True)).decode(),
                "text/html": '<style>#T_dca45_row0_col0 {x}</style><table id="T_dca45">'
                             '<td id="T_9f0e1_row0">T_abcdefg</td>'}),
        ]),
    ])
    nb.metadata["papermill"] = {"start_time": "2026", "duration": 3.0, "parameters": {"a": 1},
                                "input_path": "/repo/nb.ipynb"}
    nbtools.scrub_executed(nb, {Path("/ws/x"): "", Path("/repo/src"): "", Path("/home/u"): "~",
                                Path("/"): ""})  # a folder as short as "/" is left alone
    assert nb.metadata["papermill"] == {"parameters": {"a": 1}}
    assert nb.cells[0].id == nbtools.INJECTED_ID and nb.cells[0].metadata == {
        "tags": ["injected-parameters"]}
    outs = nb.cells[1].outputs
    assert outs[0].text == "b 100%\ndata/a.csv read\n/ws/xy/b in ., ~/.pyenv/w.py:1\n"
    assert outs[1].data["text/plain"] == "f.py <Styler at 0x...>"
    assert outs[1].data["text/html"] == ('<style>#T_s0000_row0_col0 {x}</style><table id="T_s0000">'
                                         '<td id="T_s0001_row0">T_abcdefg</td>')
    assert base64.b64decode(outs[1].data["image/png"]) == _png(False)


@pytest.mark.parametrize("path", sorted(config.NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_parameters_cell_parses_without_papermill_warnings(path, caplog):
    """papermill re-parses the parameters cell and warns on a line with two '=' signs."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    with caplog.at_level(logging.WARNING, logger="papermill"):
        PythonTranslator.inspect(cell)
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


def test_demo_stamp_changes_only_with_the_demo_parameters(tmp_path):
    stamp = tmp_path / "ci" / "demo-params.json"
    assert nbtools.demo_stamp(stamp) is True
    mtime = stamp.stat().st_mtime_ns
    assert nbtools.demo_stamp(stamp) is False and stamp.stat().st_mtime_ns == mtime
    recorded = json.loads(stamp.read_text())
    assert recorded == {"demo": config.load_params()["demo"],
                        "seed": config.load_params()["common"]["seed"]}
    stamp.write_text(json.dumps({**recorded, "seed": 1}))  # the demo parameters changed
    assert nbtools.demo_stamp(stamp) is True
