"""Run one pipeline stage: execute its notebook with papermill, render it to HTML.

``python -m pmed.runner <stage>`` is the ``cmd`` of every notebook stage in dvc.yaml. The
stage's notebook is the ``notebooks/*.ipynb`` among its ``deps``; papermill passes it the stage
name, and the notebook reads exactly the keys the stage lists under ``params``
(:func:`pmed.config.stage_params`: each top-level section becomes a variable of the same
name, holding the listed keys or the whole section). Running
papermill and nbconvert in one process saves ~3 s per stage over their command lines.

All or nothing: the notebook runs against a *staging workspace*
(``<workspace>/.pmed-staging/<stage>/``, handed to the kernel as ``PMED_WORKSPACE``) that
mirrors the study's folders through symlinks, except the stage's declared outputs (``outs``,
``metrics``, ``plots`` in dvc.yaml), which the notebook writes there afresh. Only after the
notebook succeeded, wrote every declared output and nothing undeclared, the outputs (with the
executed notebook and its HTML) are moved into place; a failed stage leaves the previous set
untouched and its partial outputs in the staging folder for inspection. Outputs marked
``persist: true`` (caches) are linked, not staged.

Same inputs => same bytes: the kernel runs with one BLAS/OpenMP/SimpleITK thread, a fixed
hash seed, numpy's AVX2 kernels (:data:`KERNEL_ENV`) and OpenBLAS's (:func:`blas_pin`); the
executed notebook is scrubbed of run metadata (:func:`pmed.nbtools.scrub_executed`) and PNG
figures lose their text chunks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from pmed import config

KERNEL = "pmed"  # registered in the project's .venv by `make venv`
STAGING = ".pmed-staging"  # under the workspace (git-ignored)
SCRATCH = "build/scratch"  # interactive runs' workspaces, under the study's workspace (git-ignored)

# Environment of the stage's kernel. Results of multithreaded reductions (OpenBLAS, OpenMP in
# scikit-learn's gradient boosting, SimpleITK filters) depend on the thread count, which
# otherwise follows the machine's cores; numpy picks SIMD kernels for the CPU at run time and
# its AVX-512 ones round differently from its AVX2 ones (emulating an AVX2-only CPU changed
# image_features.parquet), so AVX-512 dispatch is switched off (a no-op on CPUs without it);
# PYTHONHASHSEED fixes the iteration order of sets of strings; the tqdm settings leave one
# line per progress bar without timings.
KERNEL_ENV = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "SOURCE_DATE_EPOCH": "0",  # matplotlib's PDF/SVG/PS creation dates
    "TQDM_MINITERS": "1e12",  # draw a bar at start and end only
    "TQDM_BAR_FORMAT": "{l_bar}{bar}| {n_fmt}/{total_fmt}",  # no elapsed time or rate
}

# OpenBLAS picks its kernels for the CPU it runs on (here Haswell = AVX2, SkylakeX = AVX-512)
# and the kernels round differently: with SkylakeX instead of Haswell kernels the CI-size run
# changed image_features.parquet, recommendations.parquet and the treatment figures. Every
# x86-64 CPU with AVX2 and FMA gets the Haswell kernels (on older CPUs the variable would crash
# OpenBLAS, so it is not set there and results may differ in the last bits).
BLAS_CORE = {"OPENBLAS_CORETYPE": "Haswell"}


def blas_pin(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """:data:`BLAS_CORE` if the CPU has AVX2 and FMA (Linux x86-64), else {}."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return {}
    return dict(BLAS_CORE) if {"avx2", "fma"} <= set(flags) else {}


_VAR = re.compile(r"\$\{([^}]+)\}")


class StageError(RuntimeError):
    """The stage failed; its previous outputs are unchanged."""


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


def interpolate(text: str, params: dict) -> str:
    """dvc.yaml's ``${a.b}`` templating, resolved from params.yaml."""
    def lookup(match: re.Match) -> str:
        value = params
        for part in match.group(1).strip().split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"dvc.yaml uses ${{{match.group(1)}}}, not in params.yaml")
            value = value[part]
        return str(value)
    return _VAR.sub(lookup, text)


def stage_outputs(spec: dict, params: dict) -> dict[Path, bool]:
    """Every output the stage declares (outs, metrics, plots), relative to the workspace,
    mapped to its ``persist`` flag."""
    out: dict[Path, bool] = {}
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            name, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            out[Path(interpolate(str(name), params))] = bool((opts or {}).get("persist"))
    return out


# nbconvert's lab template without the scripts it loads from CDNs (require.js, MathJax,
# Mermaid): a report opens offline and fetches nothing (the notebooks use no TeX or Mermaid).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def report_view(nb):
    """Copy of an executed notebook as the report shows it: without stderr output (warnings,
    progress bars, logs; they stay in the executed notebook for the record)."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not (o.output_type == "stream" and o.get("name") == "stderr")]
    return nb


def render_html(executed: Path, html: Path) -> None:
    """HTML rendering of an executed notebook (:func:`report_view`) with the input cells
    hidden, loading nothing from the network (:data:`OFFLINE_TEMPLATE`)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, template_file="pmed_offline.html.j2",
                            extra_loaders=[DictLoader({"pmed_offline.html.j2": OFFLINE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(report_view(nbformat.read(executed, as_version=4)))
    html.write_text(body, encoding="utf-8")


def require_kernel(name: str) -> None:
    """Stop with a clear message if the Jupyter kernel ``name`` is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        raise SystemExit(f"Jupyter kernel {name!r} is not installed: run `make venv` "
                         f"(it registers the project's .venv as kernel {name!r})")


def kernel_prefix(name: str = KERNEL) -> Path | None:
    """The environment folder of the kernel ``name``'s interpreter (``<prefix>/bin/python``)."""
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec(name).argv
    return Path(argv[0]).parent.parent if argv and Path(argv[0]).is_absolute() else None


@contextlib.contextmanager
def kernel_environment(workspace: Path):
    """os.environ for a kernel started inside the block: :data:`KERNEL_ENV`, :func:`blas_pin`
    and ``PMED_WORKSPACE=workspace``; restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(KERNEL_ENV, **blas_pin(), PMED_WORKSPACE=str(workspace))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _holds(folder: Path, paths) -> bool:
    """True if one of ``paths`` is ``folder`` or lies below it."""
    return any(p == folder or folder in p.parents for p in paths)


def _inside(path: Path, outputs) -> bool:
    """True if ``path`` is one of ``outputs`` or lies below one of them."""
    return any(path == o or o in path.parents for o in outputs)


def _mirror(ws: Path, staging: Path, rel: Path, fresh: set[Path]) -> None:
    """Make ``staging/rel`` show ``ws/rel`` through symlinks, leaving out ``fresh`` paths
    (and creating real folders on their way)."""
    src, dst = ws / rel, staging / rel
    if rel in fresh:
        dst.parent.mkdir(parents=True, exist_ok=True)
        return
    if not _holds(rel, fresh):
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src, target_is_directory=src.is_dir())
        return
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for child in sorted(src.iterdir()):
            _mirror(ws, staging, rel / child.name, fresh)


def prepare_staging(ws: Path, stage: str, fresh: set[Path], folder: Path | None = None) -> Path:
    """An empty staging workspace for ``stage`` mirroring the study's folders (params.yaml
    ``paths:``) of ``ws``, without the ``fresh`` outputs (relative paths); in ``folder``
    (default ``ws/.pmed-staging/<stage>``)."""
    staging = folder or ws / STAGING / stage
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    roots = {Path(rel).parts[0] for rel in config.load_params()["paths"].values()}
    for root in sorted(roots | {p.parts[0] for p in fresh}):
        _mirror(ws, staging, Path(root), fresh)
    for rel in fresh:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
    return staging


def interactive() -> bool:
    """True in a Jupyter kernel that neither the runner nor the tests started (they set
    ``PMED_WORKSPACE``): a notebook run by hand, e.g. in JupyterLab."""
    if os.environ.get("PMED_WORKSPACE"):
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def scratch_workspace(stage: str, study: Path | None = None) -> Path | None:
    """Send an interactive run of ``stage``'s notebook to a scratch workspace.

    Outside :func:`interactive` runs nothing happens (returns None), unless the ``study``
    folder is given (tests). Else ``<study>/build/scratch/<stage>/`` is made afresh, mirroring the
    study's folders through symlinks except every output the stage declares in dvc.yaml
    (caches included), and becomes ``PMED_WORKSPACE`` for the rest of the session: the
    notebook reads the study's inputs and writes its outputs there, never over the study's
    reports, metrics or data (``dvc status`` stays clean). Restart the kernel for a fresh one.
    """
    if study is None:
        if not interactive():
            return None
        study = config.workspace()
    params = config.load_params()
    spec = stage_spec(stage)
    notebook = stage_notebook(spec)
    rel = {name: Path(v) for name, v in params["paths"].items()}
    fresh = set(stage_outputs(spec, params)) | {rel["executed"] / notebook.name,
                                                 rel["reports"] / f"{notebook.stem}.html"}
    scratch = prepare_staging(study, stage, fresh, study / SCRATCH / stage)
    os.environ["PMED_WORKSPACE"] = str(scratch)
    print(f"[pmed] interactive run: {stage}'s outputs go to {scratch.relative_to(study)}/ "
          f"(the study's own outputs are left alone; `dvc repro` makes them)", flush=True)
    return scratch


def _linked(staging: Path, rel: Path) -> bool:
    """True if ``staging/rel`` or one of its folders is a symlink into the study."""
    return any((staging / rel).parents[i].is_symlink() for i in range(len(rel.parts) - 1)) \
        or (staging / rel).is_symlink()


def _written_files(staging: Path) -> list[Path]:
    """Regular files created in the staging workspace (symlinks into the study excluded)."""
    found = []
    for folder, dirs, files in os.walk(staging):  # does not descend into symlinked folders
        here = Path(folder)
        found += [here / f for f in files if not (here / f).is_symlink()]
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    return [f.relative_to(staging) for f in found]


def check_outputs(staging: Path, fresh: set[Path], stage: str,
                  declared: set[Path] = frozenset()) -> None:
    """StageError unless every ``fresh`` output exists and nothing outside the ``fresh`` and
    other ``declared`` outputs was written."""
    missing = sorted(str(p) for p in fresh if not (staging / p).exists())
    if missing:
        raise StageError(f"stage {stage!r} did not write its declared outputs: "
                         f"{', '.join(missing)}")
    extra = sorted(str(f) for f in _written_files(staging) if not _inside(f, fresh | declared))
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise StageError(f"stage {stage!r} wrote files not declared in dvc.yaml (add them to "
                         f"the stage's outs or stop writing them): {', '.join(extra[:5])}{more}")


def commit_outputs(staging: Path, ws: Path, fresh: set[Path]) -> None:
    """Move the staged outputs into the workspace, replacing the previous ones; if a move
    fails, the previous outputs are put back."""
    backup = staging.parent / f"{staging.name}.previous"
    if backup.exists():
        shutil.rmtree(backup)
    done: list[tuple[Path, bool]] = []
    try:
        for rel in sorted(fresh):
            old = (ws / rel).exists() or (ws / rel).is_symlink()
            if old:
                (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(ws / rel, backup / rel)
            done.append((rel, old))
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, ws / rel)
    except BaseException:
        for rel, old in reversed(done):
            if (ws / rel).is_dir() and not (ws / rel).is_symlink():
                shutil.rmtree(ws / rel)
            elif (ws / rel).exists() or (ws / rel).is_symlink():
                (ws / rel).unlink()
            if old:
                os.replace(backup / rel, ws / rel)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def run_stage(stage: str, dvc_file: Path | None = None,
              parameters: dict | None = None) -> Path:
    """Execute the stage's notebook in a staging workspace and, if it succeeds, move its
    outputs, the executed notebook and the HTML report into the workspace.

    ``dvc_file`` defaults to the repository's dvc.yaml; ``parameters`` (papermill's) to
    ``{"stage": stage}``, after checking that the stage's params keys exist.
    """
    import nbformat
    import papermill

    from pmed import nbtools  # imports nbformat (seconds): after main()'s params check

    params = config.load_params()
    spec = stage_spec(stage, dvc_file)
    notebook = stage_notebook(spec)
    if parameters is None:
        stage_parameters(spec, params)  # fail here, before papermill, on a bad key
        parameters = {"stage": stage}
    ws = config.workspace()
    executed = (config.path("executed") / notebook.name).relative_to(ws)
    html = (config.path("reports") / f"{notebook.stem}.html").relative_to(ws)
    outputs = stage_outputs(spec, params)
    fresh = {p for p, persist in outputs.items() if not persist} | {executed, html}
    require_kernel(KERNEL)
    staging = prepare_staging(ws, stage, fresh)
    start = time.perf_counter()
    print(f"[pmed] {stage}: executing {notebook.name}", flush=True)
    try:
        with kernel_environment(staging):
            papermill.execute_notebook(
                str(notebook), str(staging / executed), parameters=parameters,
                kernel_name=KERNEL, cwd=str(config.NOTEBOOKS), progress_bar=False,
                log_output=False,
            )
    except Exception as err:
        what = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
        raise StageError(f"stage {stage!r} failed ({what}); its previous outputs are unchanged, "
                         f"the failed run is in {staging.relative_to(ws)}/") from err
    nb = nbformat.read(staging / executed, as_version=4)
    folders = {Path.home(): "~", config.ROOT: "", ws: "", staging: ""}
    if kernel_prefix():
        folders[kernel_prefix()] = ".venv"  # e.g. a conda environment linked as .venv
    nbtools.scrub_executed(nb, folders)
    nbformat.write(nb, staging / executed)
    render_html(staging / executed, staging / html)
    check_outputs(staging, fresh, stage, set(outputs))
    # a persistent output (cache) is used in place; one that did not exist yet was created here
    new = fresh | {p for p in outputs if (staging / p).exists() and not _linked(staging, p)}
    for rel in fresh:
        nbtools.strip_png_files(staging / rel)
    commit_outputs(staging, ws, new)
    shutil.rmtree(staging)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # only if no other stage's failed run is kept there
    print(f"[pmed] {stage}: wrote {html} in {time.perf_counter() - start:.1f} s", flush=True)
    return ws / html


def require_own_checkout(cwd: Path | None = None) -> None:
    """Stop if the command runs in another copy of the project than the one the ``pmed``
    package is imported from (``dvc exp run --temp`` / ``--queue`` run stages in a copy under
    ``.dvc/tmp/exps``, where the editable install would read the original checkout's
    params.yaml and write over its outputs)."""
    cwd = (cwd or Path.cwd()).resolve()
    if (cwd / "dvc.yaml").is_file() and (cwd / "src" / "pmed").is_dir() and cwd != config.ROOT:
        raise SystemExit(f"[pmed] ERROR: this stage runs in {cwd} but pmed is imported from "
                         f"{config.ROOT}: `dvc exp run --temp/--queue` is not supported; run "
                         "`dvc exp run` in the workspace (README: Experiments)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", help="stage name in dvc.yaml, e.g. cohort")
    stage = parser.parse_args(argv).stage
    require_own_checkout()
    try:
        config.load_params()  # the schema check, before papermill is imported or a kernel starts
    except config.ParamsError as err:
        print(f"{err}\n[pmed] {stage}: not run (bad params); its previous outputs are unchanged",
              file=sys.stderr, flush=True)
        return 1
    try:
        run_stage(stage)
    except StageError as err:
        print(f"[pmed] ERROR: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
