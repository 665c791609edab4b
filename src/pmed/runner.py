"""Run one pipeline stage: execute its notebook with papermill, render it to HTML.

``python -m pmed.runner <stage>`` is the ``cmd`` of every notebook stage in dvc.yaml. The
stage's notebook is the ``notebooks/*.ipynb`` among its ``deps``; papermill passes it the stage
name, and the notebook reads exactly the keys the stage lists under ``params``
(:func:`pmed.config.stage_params`: each top-level section becomes a variable of the same
name, holding the listed keys or the whole section). Running
papermill and nbconvert in one process saves ~3 s per stage over their command lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from pmed import config

KERNEL = "pmed"  # registered in the project's .venv by `make venv`


def stage_spec(stage: str, dvc_file: Path | None = None) -> dict:
    """The stage's entry in dvc.yaml; KeyError naming the known stages if absent."""
    with open(dvc_file or config.ROOT / "dvc.yaml") as fh:
        stages = yaml.safe_load(fh)["stages"]
    if stage not in stages:
        raise KeyError(f"stage {stage!r} is not in dvc.yaml (stages: {', '.join(stages)})")
    return stages[stage]


def stage_notebook(spec: dict) -> Path:
    """The one ``notebooks/*.ipynb`` listed in the stage's deps."""
    notebooks = [d for d in spec.get("deps", []) if str(d).endswith(".ipynb")]
    if len(notebooks) != 1:
        raise ValueError(f"a notebook stage lists exactly one .ipynb dep, found {notebooks}")
    return config.ROOT / notebooks[0]


def stage_parameters(spec: dict, params: dict) -> dict:
    """Notebook variables for the stage: {section: listed keys of params.yaml}.

    ``params: [common.seed, survival]`` gives ``{"common": {"seed": ...}, "survival": {...}}``.
    """
    out: dict = {}
    for key in spec.get("params", []):
        if not isinstance(key, str):
            raise ValueError(f"params entries must be keys of params.yaml, got {key!r}")
        section, _, sub = key.partition(".")
        if section not in params:
            raise KeyError(f"params.yaml has no section {section!r} (listed by the stage)")
        value = params[section]
        if not sub:
            out[section] = value
            continue
        for part in sub.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"params.yaml has no key {key!r} (listed by the stage)")
            value = value[part]
        out.setdefault(section, {})[sub] = value
    return out


def render_html(executed: Path, html: Path) -> None:
    """HTML rendering of an executed notebook with the input cells hidden."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    tmp = html.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(html)


def require_kernel(name: str) -> None:
    """Stop with a clear message if the Jupyter kernel ``name`` is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        raise SystemExit(f"Jupyter kernel {name!r} is not installed: run `make venv` "
                         f"(it registers the project's .venv as kernel {name!r})")


def run_stage(stage: str) -> Path:
    """Execute the stage's notebook into reports/executed/ and render reports/<name>.html."""
    import papermill

    spec = stage_spec(stage)
    notebook = stage_notebook(spec)
    stage_parameters(spec, config.load_params())  # fail here, before papermill, on a bad key
    executed = config.path("executed") / notebook.name
    html = config.path("reports") / f"{notebook.stem}.html"
    require_kernel(KERNEL)
    executed.parent.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    start = time.perf_counter()
    print(f"[pmed] {stage}: executing {notebook.relative_to(config.ROOT)}", flush=True)
    papermill.execute_notebook(
        str(notebook), str(executed), parameters={"stage": stage}, kernel_name=KERNEL,
        cwd=str(config.NOTEBOOKS), progress_bar=False, log_output=False,
    )
    render_html(executed, html)
    print(f"[pmed] {stage}: wrote {html.relative_to(config.workspace())} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", help="stage name in dvc.yaml, e.g. cohort")
    run_stage(parser.parse_args(argv).stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
