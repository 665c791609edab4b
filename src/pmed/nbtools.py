"""Keep the stored notebooks clean: outputs only in the result cells CI compares.

A cell whose source starts with ``# NBVAL_CHECK_OUTPUT`` prints a key result (cohort size,
main hazard ratio, ...). ``make test`` re-executes every notebook on the CI data set with
``pytest --nbval-lax``, which compares exactly those cells with their stored output, so a
silent change of results fails CI. After an intended change, ``make nbval-refresh``
(``python -m pmed.nbtools refresh NOTEBOOK...``) re-executes the notebooks and stores the new
outputs of those cells (marked ``keep_output`` so nbstripout leaves them) and nothing else.

The executed notebooks of a pipeline run go through :func:`scrub_executed` (papermill's
timings, kernel and run metadata, absolute paths and progress-bar redraws removed, embedded
PNGs without text chunks) so that the same run gives the same bytes on any machine;
:func:`strip_png_metadata` does the same for figure files.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
import sys
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
INJECTED_ID = "injected-parameters"  # fixed id for papermill's injected cell (random otherwise)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_VOLATILE_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME"}  # Software, dates, comments
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")
# a tqdm progress bar's line ("radiomics: 100%|#####| 83/83", timings optional): it depends on
# timing and on cache state (no bar when everything was cached), so reports leave it out
# pandas Styler tables carry a random 5-hex-digit uuid in their ids and CSS ("T_dca45_row0")
STYLER_ID = re.compile(r"\bT_([0-9a-f]{5})(?![0-9A-Za-z])")
# the memory address in a default object repr ("<...Styler at 0x7f7d2566a1d0>")
ADDRESS = re.compile(r"(?<= at )0x[0-9a-f]{6,16}(?=>)")
PROGRESS_LINE = re.compile(r"^[^\n]*\d+%\|[^\n]*\| *\d+/\d+[^\n]*(\n|$)", re.M)


def is_checked(cell) -> bool:
    """True for a code cell whose stored output CI compares."""
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def keep_checked_outputs(nb) -> int:
    """Strip every output except the checked cells'; number those cells; drop execution
    timings (so a refresh changes a notebook only where results changed). Returns the count."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
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
    nb.metadata.pop("papermill", None)
    return n


def strip_png_metadata(data: bytes) -> bytes:
    """PNG bytes without text and time chunks (matplotlib's "Software", any date); the image
    chunks are kept byte for byte. Data that is not a PNG is returned unchanged."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out, pos = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 12 + length  # length, type, data, CRC
        if data[pos + 4:pos + 8] not in PNG_VOLATILE_CHUNKS:
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


def strip_png_files(folder_or_file: Path) -> int:
    """Apply :func:`strip_png_metadata` to every ``*.png`` at or below the path; returns the
    number of files rewritten."""
    path = Path(folder_or_file)
    files = [path] if path.is_file() else sorted(path.rglob("*.png")) if path.is_dir() else []
    n = 0
    for file in files:
        if file.suffix.lower() != ".png":
            continue
        data = file.read_bytes()
        clean = strip_png_metadata(data)
        if clean != data:
            file.write_bytes(clean)
            n += 1
    return n


def _path_pattern(folders: dict[Path, str]) -> tuple[re.Pattern, dict[str, str]] | None:
    """One regex for absolute folders (longest first), each followed by "/" or the end of a
    path, and the relative prefix each becomes."""
    names = {str(f): rel for f, rel in folders.items() if len(Path(f).parts) > 2}
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(f"({alternatives})(/|(?![\\w.-]))"), names


def _relative(text: str, pattern) -> str:
    """``text`` with the folders of :func:`_path_pattern` written as relative paths."""
    if pattern is None:
        return text
    regex, names = pattern

    def replace(match: re.Match) -> str:
        rel, slash = names[match.group(1)], match.group(2)
        if rel:
            return rel + slash
        return "" if slash else "."
    return regex.sub(replace, text)


def scrub_executed(nb, folders: dict[Path, str]) -> None:
    """Make an executed notebook a function of its inputs only (in place).

    Removes papermill's run metadata (start/end times, durations, input/output paths, the
    environment; the parameters are kept) and each cell's timing metadata, gives the
    injected-parameters cell a fixed id, merges stream outputs, applies carriage returns and
    drops progress-bar lines (:data:`PROGRESS_LINE`), numbers pandas Styler tables' random ids
    (:data:`STYLER_ID`) in order of appearance, blanks memory addresses in object reprs,
    removes text chunks of embedded PNGs, and
    rewrites the absolute ``folders`` in outputs as the relative prefixes they map to
    (e.g. {workspace: "", home: "~"}; "" makes ``<workspace>/data/x`` read ``data/x``).
    """
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    prefixes = _path_pattern(folders)
    styler_ids: dict[str, str] = {}  # random uuid -> number in order of appearance

    def stable_id(match: re.Match) -> str:
        return "T_" + styler_ids.setdefault(match.group(1), f"s{len(styler_ids):04d}")
    run = nb.metadata.pop("papermill", {})
    if "parameters" in run:
        nb.metadata["papermill"] = {"parameters": run["parameters"]}
    nb.metadata.pop("widgets", None)
    coalesce = CoalesceStreamsPreprocessor()
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if INJECTED_ID in cell.metadata.get("tags", []):
            cell["id"] = INJECTED_ID
        if cell.cell_type != "code":
            continue
        coalesce.preprocess_cell(cell, {}, i)
        for out in cell.outputs:
            if out.output_type == "stream":
                out.text = _relative(PROGRESS_LINE.sub("", out.text), prefixes)
            elif out.output_type == "error":
                out.evalue = _relative(out.evalue, prefixes)
                out.traceback = [_relative(t, prefixes) for t in out.traceback]
            else:
                data = out.get("data", {})
                for mime in TEXT_MIMES:
                    if isinstance(data.get(mime), str):
                        data[mime] = _relative(data[mime], prefixes)
                if isinstance(data.get("text/plain"), str):
                    data["text/plain"] = ADDRESS.sub("0x...", data["text/plain"])
                if isinstance(data.get("text/html"), str):
                    data["text/html"] = STYLER_ID.sub(stable_id, data["text/html"])
                if isinstance(data.get("image/png"), str):
                    raw = base64.b64decode(data["image/png"])
                    tail = "\n" if data["image/png"].endswith("\n") else ""
                    data["image/png"] = base64.b64encode(strip_png_metadata(raw)).decode() + tail
        cell.outputs = [o for o in cell.outputs if o.output_type != "stream" or o.text]


def refresh(notebook: Path, kernel: str = "pmed", timeout: int = 1800) -> int:
    """Execute ``notebook`` in its folder and store only the checked cells' outputs."""
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=timeout,
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    n = keep_checked_outputs(nb)
    nbformat.write(nb, notebook)
    return n


def demo_stamp(file: Path) -> bool:
    """Write what the CI demo data depend on in params.yaml (the ``demo`` section and
    ``common.seed``) to ``file`` as JSON, only if it differs from the file's content, so
    that the file's mtime changes only with those values. True if it was (re)written."""
    from pmed import config

    params = config.load_params()
    text = json.dumps({"demo": params["demo"], "seed": params["common"]["seed"]},
                      indent=1, sort_keys=True) + "\n"
    file = Path(file)
    if file.exists() and file.read_text() == text:
        return False
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="store outputs of the checked notebook cells; "
                                                 "demo-stamp FILE: see demo_stamp()")
    parser.add_argument("command", choices=["refresh", "demo-stamp"])
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "demo-stamp":
        for file in args.paths:
            if demo_stamp(file):
                print(f"[pmed] {file}: demo parameters changed, CI data will be regenerated")
        return 0
    for nb in args.paths:
        print(f"[pmed] refreshing {nb} ...", flush=True)
        print(f"[pmed] {nb}: stored {refresh(nb)} checked cell outputs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
