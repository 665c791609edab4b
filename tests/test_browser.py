"""The study summary and every stage report of a real CI-size run, opened in headless Chromium.

`make browser-check` (part of `make test`, after `make repro-check`) runs this on the reports
that repro-check's first clone built with the committed code (``build/repro-check/*/a/reports``;
or the folder in ``$PMED_BROWSER_REPORTS``). For index.html and each stage report it checks:

- nothing is fetched from the network: Chromium runs with every host name mapped to an
  unresolvable address and writes a net log; no request made by the page (its network
  isolation key is the file:// site) may have a URL other than file:// or data:;
- every link and image resolves: in the DOM after loading (``--dump-dom``), each relative
  ``href``/``src`` names an existing file and each ``#fragment`` an element id of its target
  page (links to other sites are only listed: they cannot be checked offline);
- the HTML holds no machine paths (``/work/``, ``/home/``, ``/tmp/``, the run's folder), no
  Python warnings and no progress bars.

Needs the Debian package ``chromium`` (.ci/apt-packages.txt).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from pmed import config

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
]
PROGRESS_BAR = re.compile(r"\d+%\|")
MACHINE_PATHS = ("/work/", "/home/", "/tmp/")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make system-deps` (as root)")
    return exe


def reports_dir() -> Path:
    env = os.environ.get("PMED_BROWSER_REPORTS")
    found = [Path(env)] if env else sorted(config.ROOT.glob("build/repro-check/*/a/reports"))
    found = [d for d in found if (d / "index.html").is_file()]
    if not found:
        pytest.fail("no reports of a CI-size run: run `make repro-check` first (or set "
                    "PMED_BROWSER_REPORTS to a reports folder holding index.html)")
    return found[-1]


def pages() -> list[Path]:
    folder = reports_dir()
    stage_pages = sorted(folder.glob("0*.html"))
    assert len(stage_pages) >= 6, f"expected the 6 stage reports in {folder}"
    return [folder / "index.html", *stage_pages]


class Refs(HTMLParser):
    """Element ids and the URLs of links, images, scripts and style sheets of a page."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "img", "script", "link", "iframe", "source"):
                self.links.append((tag, a[key]))


def parse(text: str) -> Refs:
    refs = Refs()
    refs.feed(text)
    return refs


def open_in_chromium(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """(DOM after loading, URLs the page requested through the network stack)."""
    netlog = tmp / f"{page.stem}.netlog.json"
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                           f"--log-net-log={netlog}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout, f"chromium failed on {page.name}: {proc.stderr[-2000:]}"
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requested = []
    for event in log["events"]:
        params = event.get("params", {})
        if names.get(event["type"]) == "URL_REQUEST_START_JOB" and "url" in params \
                and str(params.get("network_isolation_key", "")).startswith("file://"):
            requested.append(params["url"])
    return proc.stdout, requested


def test_reports_render_offline_with_every_link_and_image_resolving(tmp_path):
    targets: dict[Path, set[str]] = {}
    problems, external = [], set()
    for page in pages():
        dom, requested = open_in_chromium(page, tmp_path)
        network = [u for u in requested if not u.startswith(("file:", "data:"))]
        problems += [f"{page.name}: fetched {u}" for u in network]
        refs = parse(dom)
        for tag, url in refs.links:
            parts = urlsplit(html.unescape(url))
            if parts.scheme in ("http", "https"):
                if tag != "a":
                    problems.append(f"{page.name}: <{tag}> loads {url} from the network")
                external.add(url)
                continue
            if parts.scheme in ("data", "mailto", "javascript"):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if parts.scheme == "file":
                target = Path(unquote(parts.path))
            if not target.is_file():
                problems.append(f"{page.name}: <{tag}> {url} -> missing file")
                continue
            if tag == "img" and target.suffix == ".png" and \
                    not target.read_bytes().startswith(b"\x89PNG"):
                problems.append(f"{page.name}: {url} is not a PNG")
            if parts.fragment:
                if target not in targets:
                    targets[target] = parse(target.read_text(encoding="utf-8")).ids
                if parts.fragment not in targets[target] and unquote(parts.fragment) not in targets[target]:
                    problems.append(f"{page.name}: {url} -> no element with that id")
    assert problems == [], "\n".join(problems)
    print(f"checked {len(pages())} pages; links to other sites (not fetched): {sorted(external)}")


def test_index_links_every_stage_report_and_shows_figures():
    folder = reports_dir()
    refs = parse((folder / "index.html").read_text(encoding="utf-8"))
    linked = {urlsplit(u).path for tag, u in refs.links if tag == "a"}
    for page in pages()[1:]:
        assert page.name in linked, f"index.html does not link {page.name}"
    images = [u for tag, u in refs.links if tag == "img"]
    assert len(images) >= 6, f"index.html shows {len(images)} key figures"


def test_reports_hold_no_machine_paths_warnings_or_progress_bars():
    folder = reports_dir()
    run_root = str(folder.parent.resolve())
    found = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for needle in (*MACHINE_PATHS, run_root, str(Path.home()) + "/", "Warning"):
            if needle in text:
                i = text.index(needle)
                found.append(f"{page.name}: {needle!r} in ...{text[max(0, i - 60):i + 60]!r}")
        if PROGRESS_BAR.search(text):
            found.append(f"{page.name}: progress bar")
    assert found == [], "\n".join(found)
