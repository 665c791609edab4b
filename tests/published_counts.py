"""Read back the counts a pipeline run publishes and find small ones, shown or derivable.

Published = everything under the workspace's reports/ folder: metrics JSON, plot CSVs, the
stage HTML reports (tables and printed text) and index.html. Each finder returns a list of
findings ``"<file>: <where>: <kind>"`` naming where a count in 1..k-1 is shown or can be
derived, never the count's context beyond the row/column labels the report itself prints.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

COUNT_KEY = re.compile(r"^(n|n_.+|.+_n|count|.+_count|events|persons|deaths|excluded|remaining"
                       r"|n_at_risk|at_risk|censored|competing|.+_persons|.+_events)$")
# count-named keys/columns that count something other than persons (never suppressed)
NOT_PERSONS = {"n_represented",  # features an imaging-signature feature stands for
               "n_inside", "n_terms", "terms_inside", "terms_total", "points_inside",
               "points_total"}  # model terms / curve points inside a CI (demo truth check)
SUPPRESSED = re.compile(r"^(<\d+|suppressed)$")
NUM = re.compile(r"^-?\d+$")
# printed text: "<count> persons", "persons: <count>", ...
NOUNS = r"(persons|patients|deaths|events|responders|scans|images|excluded|censored)"
COUNT_BEFORE = re.compile(rf"(?<![\w.<-])(\d+) (?:early )?{NOUNS}\b")
COUNT_AFTER = re.compile(rf"\b{NOUNS}:? (\d+)\b(?![.\d])", re.IGNORECASE)


def small(v, k: int) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < k \
        and float(v).is_integer()


def as_count(text):
    """int for a shown count ("12", "12 (34.5)"), None for a suppressed one, or "" if not a
    count."""
    text = str(text).strip()
    if SUPPRESSED.match(text):
        return None
    m = re.match(r"^(\d+)(?: \(\d+(?:\.\d+)?%?\))?$", text)
    return int(m.group(1)) if m else ""


# --- metrics JSON --------------------------------------------------------------------------

def json_findings(path: Path, k: int, param_keys: set[str]) -> list[str]:
    """Small count-valued keys, and per dict: a total beside parts (``groups``/``arms``
    sub-dicts holding the same key) whose shown parts leave a small remainder, and
    ``persons - events`` small."""
    found = []

    def walk(node, where):
        if isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
            return
        if not isinstance(node, dict):
            return
        for key, v in node.items():
            if COUNT_KEY.match(str(key)) and key not in param_keys | NOT_PERSONS \
                    and small(v, k):
                found.append(f"{path.name}: {where}.{key}: small count")
            walk(v, f"{where}.{key}")
        p, e = node.get("persons"), node.get("events")
        if isinstance(p, int) and isinstance(e, int) and small(p - e, k):
            found.append(f"{where}: persons - events small")
        for sub in ("groups", "arms", "by_arm"):
            parts = node.get(sub)
            if not isinstance(parts, dict):
                continue
            for key in ("persons", "events", "n"):
                total = node.get(key)
                vals = [g.get(key) for g in parts.values() if isinstance(g, dict)]
                if not isinstance(total, int) or not vals:
                    continue
                hidden = [v for v in vals if not isinstance(v, int)]
                rest = total - sum(v for v in vals if isinstance(v, int))
                if hidden and (len(hidden) == 1 and rest > 0 or small(rest, k)):
                    found.append(f"{path.name}: {where}.{sub}.*.{key}: derivable from the total")
        attrition = node.get("attrition")
        if isinstance(attrition, (dict, list)):
            rows = attrition.values() if isinstance(attrition, dict) else attrition
            for r in rows:
                if isinstance(r, dict) and small(r.get("excluded"), k):
                    found.append(f"{path.name}: {where}.attrition: small exclusion")

    walk(json.loads(path.read_text()), "")
    return found


# --- plot CSVs -----------------------------------------------------------------------------

def csv_findings(path: Path, k: int) -> list[str]:
    """Small values in count columns; a risk set below k (n_at_risk)."""
    found = []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for col in (rows[0].keys() if rows else []):
        if not COUNT_KEY.match(col) or col in NOT_PERSONS:
            continue
        for r in rows:
            try:
                v = float(r[col])
            except (TypeError, ValueError):
                continue
            if small(v, k):
                found.append(f"{path.name}: column {col}: small count")
                break
    return found


# --- HTML reports --------------------------------------------------------------------------

def html_tables(path: Path) -> list[list[list[str]]]:
    """Every <table> of an HTML file as rows of cell texts (header rows included)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    return [[[c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])]
             for tr in t.find_all("tr")] for t in soup.find_all("table")]


def html_text(path: Path) -> list[str]:
    """Printed text (<pre> blocks) of an HTML report, line by line."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    return [line for pre in soup.find_all("pre") for line in pre.get_text().splitlines()]


def table_findings(name: str, rows: list[list[str]], k: int) -> list[str]:
    """Small counts in count columns or "n (%)" cells; in a table with an Overall/total column
    and group columns, a row whose shown groups leave a small remainder; in a table with a
    remaining/persons column, a small difference of consecutive rows; persons - events."""
    found = []
    if len(rows) < 2:
        return found
    head = rows[0]
    low = [h.lower() for h in head]
    for r in rows[1:]:
        for j, cell in enumerate(r):
            col = low[j] if j < len(low) else ""
            v = as_count(cell)
            pct = "(" in cell
            if isinstance(v, int) and (pct or COUNT_KEY.match(col.replace(" ", "_"))) \
                    and small(v, k):
                found.append(f"{name}: row {r[0]!r} column {col!r}: small count")
    # rows: total vs group columns
    if "overall" in low:
        o = low.index("overall")
        groups = [j for j, h in enumerate(low) if j > o and h and not h.startswith("smd")
                  and h not in ("missing", "p-value")]
        for r in rows[1:]:
            if len(r) <= max(groups or [0]):
                continue
            total = as_count(r[o])
            vals = [as_count(r[j]) for j in groups]
            if not isinstance(total, int) or any(v == "" for v in vals):
                continue
            hidden = [v for v in vals if v is None]
            rest = total - sum(v for v in vals if isinstance(v, int))
            if hidden and (len(hidden) == 1 and rest > 0 or small(rest, k)):
                found.append(f"{name}: row {r[0]!r}: a group count derivable from Overall")
    # consecutive remaining counts (attrition / flow)
    if "remaining" in low:
        j = low.index("remaining")
        seq = [as_count(r[j]) for r in rows[1:] if len(r) > j]
        for a, b in zip(seq, seq[1:], strict=False):
            if isinstance(a, int) and isinstance(b, int) and small(a - b, k):
                found.append(f"{name}: consecutive 'remaining' counts differ by a small number")
    if "persons" in low and "events" in low:
        p, e = low.index("persons"), low.index("events")
        for r in rows[1:]:
            a, b = (as_count(r[p]), as_count(r[e])) if len(r) > max(p, e) else ("", "")
            if isinstance(a, int) and isinstance(b, int) and small(a - b, k):
                found.append(f"{name}: row {r[0]!r}: persons - events small")
    return found


def text_findings(name: str, lines: list[str], k: int) -> list[str]:
    """Printed counts: "<n> persons", "deaths: <n>", and "<n> persons, <m> deaths" pairs whose
    difference (survivors) is small."""
    found = []
    for i, line in enumerate(lines):
        counts = [int(n) for n, _ in COUNT_BEFORE.findall(line)]
        counts += [int(n) for _, n in COUNT_AFTER.findall(line)]
        if any(small(c, k) for c in counts):
            found.append(f"{name}: printed line {i}: small count")
        pair = re.search(r"(\d+) persons, (\d+) (?:deaths|events)", line)
        if pair and small(int(pair.group(1)) - int(pair.group(2)), k):
            found.append(f"{name}: printed line {i}: persons - deaths small")
    return found


_TOTAL = re.compile(r"^(\S[^:]*): (\d+|<\d+|suppressed)\b(?![.\d])")
_PART = re.compile(r"^\s+([^:]+): (\d+|<\d+|suppressed)\b(?![.\d])")


def block_findings(name: str, lines: list[str], k: int) -> list[str]:
    """Printed blocks "Total: <n>" followed by indented "  part: <m>" lines: a part whose
    complement (n - m) is small, or one hidden part the shown ones give back."""
    found = []
    for i, line in enumerate(lines):
        head = _TOTAL.match(line)
        if not head:
            continue
        parts = []
        for nxt in lines[i + 1:]:
            m = _PART.match(nxt)
            if not m:
                break
            parts.append(as_count(m.group(2)))
        total = as_count(head.group(2))
        if not parts or not isinstance(total, int):
            continue
        shown = [p for p in parts if isinstance(p, int)]
        if any(small(total - p, k) for p in shown):
            found.append(f"{name}: printed block at line {i}: total minus a part is small")
        hidden = [p for p in parts if p is None]
        rest = total - sum(shown)
        if hidden and rest >= 0 and (len(hidden) == 1 and rest > 0 or small(rest, k)):
            found.append(f"{name}: printed block at line {i}: hidden part = total - shown parts")
    return found


def html_findings(path: Path, k: int) -> list[str]:
    found = []
    for i, rows in enumerate(html_tables(path)):
        found += table_findings(f"{path.name} table {i}", rows, k)
    found += text_findings(path.name, html_text(path), k)
    found += block_findings(path.name, html_text(path), k)
    return found


def group_size_findings(reports: Path) -> list[str]:
    """A group size (whole cohort = "total") shown in one place and hidden in another: the
    cohort metrics (``persons``, ``groups.<g>.persons``) against every Table 1 ``n`` row."""
    cohort = reports / "metrics" / "cohort.json"
    if not cohort.exists():
        return []
    m = json.loads(cohort.read_text())
    sizes = {"total": m.get("persons"),
             **{g: v.get("persons") for g, v in m.get("groups", {}).items()}}
    found = []
    for page in sorted(reports.glob("*.html")):
        for i, rows in enumerate(html_tables(page)):
            head = [h.lower() for h in rows[0]] if rows else []
            n_rows = [r for r in rows[1:] if r and r[0] == "n"]
            if "overall" not in head or not n_rows:
                continue
            for j, h in enumerate(rows[0]):
                group = "total" if h.lower() == "overall" else h
                if group not in sizes or j >= len(n_rows[0]):
                    continue
                a, b = as_count(sizes[group]), as_count(n_rows[0][j])
                if (a is None) != (b is None):
                    found.append(f"{page.name} table {i}: size of {group!r} hidden in one "
                                 "table and shown in another")
    return found


def published_findings(reports: Path, k: int, param_keys: set[str]) -> list[str]:
    """Every finding over the metrics JSON, plot CSVs and HTML files under ``reports``."""
    found = group_size_findings(reports)
    for f in sorted(reports.rglob("*.json")):
        found += json_findings(f, k, param_keys)
    for f in sorted(reports.rglob("*.csv")):
        found += csv_findings(f, k)
    for f in sorted(reports.rglob("*.html")):
        found += html_findings(f, k)
    return found
