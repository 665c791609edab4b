"""ATLAS concept-set expressions (OHDSI Circe JSON): parse the file, resolve it to concept ids.

An expression is what ATLAS exports for a concept set (``{"items": [...]}``, or a saved
concept set ``{"name": ..., "expression": {"items": [...]}}``); each item::

    {"concept": {"CONCEPT_ID": 4115276, "CONCEPT_NAME": ..., ...},
     "isExcluded": false, "includeDescendants": true, "includeMapped": false}

Resolution follows Circe's ``ConceptSetExpressionQueryBuilder``: for the included items
and, separately, for the excluded ones, take

* the item's own concept;
* with ``includeDescendants``, its descendants in ``concept_ancestor`` that are valid
  concepts (``concept.invalid_reason`` NULL);
* with ``includeMapped``, the concepts whose valid ``Maps to`` relationship
  (``concept_relationship.concept_id_1 -> concept_id_2``) points to any of the above (the
  source codes, e.g. ICD-10, of a standard concept);

and the concept set is the included concepts minus the excluded ones. A plain id list with
the global ``include_descendants`` flag is the same thing (:func:`from_ids`), so both kinds
of concept set resolve through one query (:func:`resolve_query`) over one small rule table
(:data:`ITEMS_TABLE`), written in DuckDB's dialect with constructs that transpile to
PostgreSQL and Spark SQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pmed.cohort import omop
from pmed.cohort.errors import CohortError

ITEMS_TABLE = "concept_set_items"
ITEM_COLUMNS = [("codeset_name", "VARCHAR"), ("concept_id", "BIGINT"),
                ("is_excluded", "BOOLEAN"), ("include_descendants", "BOOLEAN"),
                ("include_mapped", "BOOLEAN")]
FLAGS = {"isExcluded": "is_excluded", "includeDescendants": "include_descendants",
         "includeMapped": "include_mapped"}


@dataclass(frozen=True)
class ConceptSetItem:
    """One item: a concept and the three ATLAS flags (all False by default, as in Circe)."""

    concept_id: int
    is_excluded: bool = False
    include_descendants: bool = False
    include_mapped: bool = False


@dataclass(frozen=True)
class ConceptSetExpression:
    """The items of one concept set; ``source`` names where it came from (for messages)."""

    items: tuple[ConceptSetItem, ...]
    source: str = ""

    @property
    def concept_ids(self) -> list[int]:
        """Every concept id the expression names (included or excluded), in item order."""
        return [i.concept_id for i in self.items]

    @property
    def uses_mapping(self) -> bool:
        return any(i.include_mapped for i in self.items)


def from_ids(ids: list[int], include_descendants: bool, source: str = "") -> ConceptSetExpression:
    """The expression of a plain id list: every id included, with descendants if asked."""
    return ConceptSetExpression(tuple(ConceptSetItem(int(i), False, bool(include_descendants))
                                      for i in ids), source)


def _bad(where: str, what: str) -> CohortError:
    return CohortError(f"{where}: {what}")


def parse_expression(obj, where: str) -> ConceptSetExpression:
    """Validate an ATLAS concept-set expression (parsed JSON); ``where`` prefixes every error."""
    if isinstance(obj, dict) and "items" not in obj and isinstance(obj.get("expression"), dict):
        obj = obj["expression"]  # a saved concept set: {"id", "name", "expression"}
    if not isinstance(obj, dict) or not isinstance(obj.get("items"), list):
        raise _bad(where, 'expected an ATLAS concept-set expression, a JSON object with a list '
                          '"items" (or a concept set with "expression": {"items": [...]})')
    if not obj["items"]:
        raise _bad(where, '"items" is empty; expected at least one concept')
    items = []
    for k, item in enumerate(obj["items"], start=1):
        at = f"item {k}"
        if not isinstance(item, dict) or not isinstance(item.get("concept"), dict):
            raise _bad(where, f'{at} must be an object with a "concept" object')
        cid = item["concept"].get("CONCEPT_ID")
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise _bad(where, f'{at}: "concept" must have an integer "CONCEPT_ID", got {cid!r}')
        at = f"item {k} (CONCEPT_ID {cid})"
        unknown = sorted(set(item) - set(FLAGS) - {"concept"})
        if unknown:
            raise _bad(where, f"{at}: unknown keys {unknown}; expected concept, "
                              f"{', '.join(FLAGS)}")
        flags = {}
        for key, field in FLAGS.items():
            value = item.get(key, False)
            if not isinstance(value, bool):
                raise _bad(where, f"{at}: {key} must be true or false, got {value!r}")
            flags[field] = value
        items.append(ConceptSetItem(cid, **flags))
    if all(i.is_excluded for i in items):
        raise _bad(where, "every item is excluded; expected at least one included concept")
    return ConceptSetExpression(tuple(items), where)


def read_expression(path: Path, where: str = "") -> ConceptSetExpression:
    """Read and validate an ATLAS concept-set JSON file; CohortError naming the file."""
    path = Path(path)
    where = f"{where} ({path})" if where else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _bad(where, "file not found; expected an ATLAS concept-set JSON file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(where, f"cannot read the file ({type(err).__name__})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad(where, f"not valid JSON (line {err.lineno}, column {err.colno}: "
                          f"{err.msg})") from None
    return parse_expression(obj, where)


def load_concept_sets(spec: Mapping[str, object], include_descendants: bool,
                      base_dir: Path | None = None,
                      where: str = "cohort.concept_sets") -> dict[str, ConceptSetExpression]:
    """params ``concept_sets`` -> one expression per name.

    Each entry is a non-empty list of concept ids (expanded with the global
    ``include_descendants``) or the path of an ATLAS JSON file (``.json``; relative paths
    against ``base_dir``, e.g. the project root), whose own flags apply.
    """
    out = {}
    for name, value in spec.items():
        at = f"{where}.{name}"
        if isinstance(value, (str, Path)):
            path = Path(value)
            if path.suffix.lower() != ".json":
                raise CohortError(f"{at}: {str(value)!r} is not a .json file; expected a list "
                                  "of concept ids or the path of an ATLAS concept-set JSON file")
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            out[name] = read_expression(path, at)
        elif isinstance(value, list) and value and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            out[name] = from_ids(value, include_descendants, at)
        else:
            raise CohortError(f"{at} must be a non-empty list of concept ids or the path of an "
                              f"ATLAS concept-set JSON file, got {value!r}")
    return out


def item_rows(sets: Mapping[str, ConceptSetExpression]) -> list[tuple]:
    """Rows of :data:`ITEMS_TABLE` (columns :data:`ITEM_COLUMNS`) for all concept sets."""
    return [(name, i.concept_id, i.is_excluded, i.include_descendants, i.include_mapped)
            for name, expr in sets.items() for i in expr.items]


def resolve_query(mapped: bool, items_table: str = ITEMS_TABLE) -> str:
    """SQL: (codeset_name, concept_id) of every concept set in ``items_table``, resolved.

    Reads ``concept`` (``invalid_reason``) and ``concept_ancestor``; with ``mapped`` (any
    item has includeMapped) also ``concept_relationship``.
    """
    item_concepts = (
        f"SELECT codeset_name, is_excluded, include_mapped, concept_id FROM {items_table} "
        "UNION SELECT i.codeset_name, i.is_excluded, i.include_mapped, "
        f"ca.descendant_concept_id AS concept_id FROM {items_table} AS i "
        "JOIN concept_ancestor AS ca ON ca.ancestor_concept_id = i.concept_id "
        "JOIN concept AS c ON c.concept_id = ca.descendant_concept_id "
        "WHERE i.include_descendants AND c.invalid_reason IS NULL"
    )
    expanded = "SELECT codeset_name, is_excluded, concept_id FROM item_concepts"
    if mapped:
        expanded += (
            " UNION SELECT x.codeset_name, x.is_excluded, cr.concept_id_1 AS concept_id "
            "FROM item_concepts AS x JOIN concept_relationship AS cr "
            "ON cr.concept_id_2 = x.concept_id WHERE x.include_mapped AND "
            "cr.relationship_id = 'Maps to' AND cr.invalid_reason IS NULL"
        )
    return (f"WITH item_concepts AS ({item_concepts}), expanded AS ({expanded}) "
            "SELECT codeset_name, concept_id FROM expanded WHERE NOT is_excluded "
            "EXCEPT SELECT codeset_name, concept_id FROM expanded WHERE is_excluded")


def resolve(con: duckdb.DuckDBPyConnection,
            sets: Mapping[str, ConceptSetExpression]) -> dict[str, list[int]]:
    """Concept ids of each set (sorted), resolved against the CDM vocabulary in ``con``.

    Checks first that every item's concept exists (:func:`pmed.cohort.omop.check_concepts`)
    and that ``concept_relationship`` is there when an item asks for mapped concepts.
    Creates/overwrites temp table :data:`ITEMS_TABLE`.
    """
    omop.check_concepts(con, {name: expr.concept_ids for name, expr in sets.items()})
    mapped = any(expr.uses_mapping for expr in sets.values())
    if mapped and not omop.has_table(con, "concept_relationship"):
        names = sorted(n for n, e in sets.items() if e.uses_mapping)
        raise CohortError(f"concept sets {names}: includeMapped needs the OMOP table "
                          "concept_relationship (concept_relationship.parquet or .csv in the "
                          "OMOP folder)")
    cols = ", ".join(f"{c} {t}" for c, t in ITEM_COLUMNS)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {ITEMS_TABLE} ({cols})")
    rows = item_rows(sets)
    con.executemany(f"INSERT INTO {ITEMS_TABLE} VALUES (?, ?, ?, ?, ?)", rows)
    out: dict[str, list[int]] = {name: [] for name in sets}
    for name, cid in con.execute(resolve_query(mapped) + " ORDER BY 1, 2").fetchall():
        out[name].append(int(cid))
    return out
