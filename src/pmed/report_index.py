"""The `report` stage: reports/index.html linking every stage's report.

It lists, for the run it describes: each notebook stage's HTML report, the stage metrics
(reports/metrics/*.json, flattened), the params.yaml used, the data version (the md5 that
data.dvc records for data/raw) and the versions of the key packages. Aggregates only: the
metrics files are already small-cell suppressed by the stages. Before writing, it audits
every report, metrics and plot file for the raw extract's direct identifiers (MRNs, DICOM
patient names/IDs, study/series UIDs) and fails the stage if it finds any.
"""

from __future__ import annotations

import html
import json
import sys
from importlib import metadata
from pathlib import Path

import yaml

from pmed import config, privacy, runner

KEY_PACKAGES = ["pmed", "pandas", "numpy", "duckdb", "lifelines", "statsmodels",
                "scikit-learn", "scikit-survival", "pyradiomics-bhklab", "pydicom",
                "SimpleITK", "papermill", "dvc"]


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists kept as values)."""
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def data_version(dvc_file: Path = config.ROOT / "data.dvc") -> str:
    """The md5 data.dvc records for data/raw, or a note that it is not committed yet."""
    if not dvc_file.exists():
        return "data.dvc missing"
    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
    return ", ".join(f"{o['path']}: md5 {o.get('md5', 'not committed')}" for o in outs)


def package_versions() -> dict[str, str]:
    """Installed versions of the key packages."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _table(rows: list[tuple[str, object]], head: tuple[str, str]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return (f"<table><thead><tr><th>{head[0]}</th><th>{head[1]}</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def build_index() -> str:
    """The index page as HTML text."""
    stages = yaml.safe_load((config.ROOT / "dvc.yaml").read_text())["stages"]
    reports = config.path("reports")
    parts = ["<h1>pmed study report</h1>", "<h2>Stage reports</h2><ol>"]
    for name, spec in stages.items():
        if not any(str(d).endswith(".ipynb") for d in spec.get("deps", [])):
            continue
        page = reports / f"{runner.stage_notebook(spec).stem}.html"
        desc = html.escape(spec.get("desc", ""))
        link = (f'<a href="{page.name}">{html.escape(name)}</a>' if page.exists()
                else f"{html.escape(name)} (not run)")
        parts.append(f"<li>{link}: {desc}</li>")
    parts.append("</ol><h2>Key metrics</h2>")
    for file in sorted(config.path("metrics").glob("*.json")):
        metrics = flatten(json.loads(file.read_text()))
        parts.append(f"<h3>{html.escape(file.stem)}</h3>")
        parts.append(_table(sorted(metrics.items()), ("metric", "value")))
    parts.append("<h2>Data version</h2>")
    parts.append(f"<p><code>{html.escape(data_version())}</code></p>")
    parts.append("<h2>Parameters (params.yaml)</h2>")
    parts.append(f"<pre>{html.escape(config.PARAMS_FILE.read_text())}</pre>")
    parts.append("<h2>Package versions</h2>")
    parts.append(_table(sorted(package_versions().items()), ("package", "version")))
    style = ("<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
             "pre{background:#f6f6f6;padding:1em}</style>")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>pmed report</title>" \
           f"{style}</head><body>{''.join(parts)}</body></html>\n"


def audit_files() -> list[Path]:
    """Every file the pipeline publishes: all of reports/ (HTML, executed notebooks, metrics,
    plot data, figures), the aggregate tables in data/processed (CSV) and metrics/plots kept
    outside reports/ if params.yaml moves them."""
    roots = [config.path(name) for name in ("reports", "metrics", "plots", "figures", "executed")]
    files = {f for root in roots if root.is_dir() for f in root.rglob("*") if f.is_file()}
    files |= set(config.path("processed").glob("*.csv"))
    return sorted(files)


def audit_reports() -> None:
    """Stop with an error if any published file holds a raw-data identifier.

    Checks :func:`audit_files` (executed notebooks and figure files included). The error
    names the files and how many identifiers each holds, never the identifiers.
    """
    files = audit_files()
    leaks = privacy.find_leaks(files, privacy.raw_identifiers(config.path("omop"),
                                                             config.path("raw")))
    if leaks:
        where = "; ".join(f"{Path(f).name}: {len(ids)}" for f, ids in sorted(leaks.items()))
        raise SystemExit(f"privacy audit failed, raw-data identifiers found in: {where}")
    print(f"[pmed] report: privacy audit passed on {len(files)} report files")


def main() -> int:
    audit_reports()
    out = config.path("reports") / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")  # all or nothing, as the notebook stages
    tmp.write_text(build_index(), encoding="utf-8")
    tmp.replace(out)
    print(f"[pmed] report: wrote {out.relative_to(config.workspace())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
