"""ATLAS concept-set expressions: parsing the published JSON and resolving it with Circe's rules.

Vocabulary fixture (tests/data/atlas/vocabulary, Athena-style tab-delimited upper-case files):
100 NSCLC is the ancestor of 101 adenocarcinoma (itself ancestor of 105 mucinous), 102
squamous, 104 large cell and 103, a retired concept (invalid_reason 'D'). Source codes:
900 'Maps to' 101, 901 'Maps to' 100, 902 'Maps to' 105, 903 'Maps to' 102 through a
retired relationship (invalid_reason 'D'), 905 'Is a' 100 (not a mapping). The reverse
'Mapped from' rows are present, as in the real vocabulary. Expected sets worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import sqlglot

from pmed.cohort import CohortError, atlas, omop

DATA = Path(__file__).parent / "data" / "atlas"
VOCAB_TABLES = {t: omop.REQUIRED_COLUMNS[t] for t in ("concept", "concept_ancestor")}
NSCLC_DESCENDANTS = [100, 101, 102, 104, 105]  # 103 is retired: not a descendant to include


@pytest.fixture(scope="module")
def con():
    c = omop.connect(DATA / "vocabulary", memory_limit="1GB", threads=1, tables=VOCAB_TABLES)
    yield c
    c.close()


def expr(*items) -> atlas.ConceptSetExpression:
    return atlas.parse_expression({"items": [
        {"concept": {"CONCEPT_ID": cid}, "isExcluded": ex, "includeDescendants": de,
         "includeMapped": ma} for cid, ex, de, ma in items]}, "test")


@pytest.mark.parametrize("items, expected", [
    ([(100, False, False, False)], [100]),
    ([(100, False, True, False)], NSCLC_DESCENDANTS),
    ([(103, False, False, False)], [103]),  # a retired concept chosen explicitly stays (Circe)
    ([(100, False, True, False), (101, True, False, False)], [100, 102, 104, 105]),
    ([(100, False, True, False), (101, True, True, False)], [100, 102, 104]),
    ([(100, False, False, True)], [100, 901]),  # 905 'Is a' is no mapping
    ([(100, False, True, True)], [100, 101, 102, 104, 105, 900, 901, 902]),  # not 903 (retired)
    ([(100, False, True, True), (101, True, True, True)], [100, 102, 104, 901]),
    ([(100, False, True, True), (101, True, True, False)], [100, 102, 104, 900, 901, 902]),
    ([(101, False, False, False), (102, False, False, False), (102, True, False, False)], [101]),
])
def test_circe_semantics(con, items, expected):
    assert atlas.resolve(con, {"s": expr(*items)}) == {"s": expected}


def test_exported_files_resolve(con):
    sets = {name: atlas.read_expression(DATA / f"{name}.json")
            for name in ("nsclc_not_adeno", "nsclc_saved", "nsclc_only")}
    assert atlas.resolve(con, sets) == {"nsclc_not_adeno": [100, 102, 104, 901],
                                        "nsclc_saved": NSCLC_DESCENDANTS, "nsclc_only": [100]}


def test_id_lists_resolve_through_the_same_query(con):
    sets = {"with": atlas.from_ids([100], True), "without": atlas.from_ids([100, 102], False)}
    assert atlas.resolve(con, sets) == {"with": NSCLC_DESCENDANTS, "without": [100, 102]}


def test_load_concept_sets_mixes_id_lists_and_files(con):
    spec = {"nsclc": "nsclc_not_adeno.json", "squamous": [102]}
    sets = atlas.load_concept_sets(spec, include_descendants=True, base_dir=DATA)
    assert sets["squamous"] == atlas.from_ids([102], True, "cohort.concept_sets.squamous")
    assert sets["nsclc"].items[1] == atlas.ConceptSetItem(101, True, True, True)
    assert atlas.resolve(con, sets) == {"nsclc": [100, 102, 104, 901], "squamous": [102]}


def test_flags_left_out_are_false():
    (item,) = atlas.read_expression(DATA / "nsclc_only.json").items
    assert item == atlas.ConceptSetItem(100, False, False, False)


def test_unknown_concept_is_named(con):
    with pytest.raises(CohortError, match=r"not in table 'concept' \(s: 999\)"):
        atlas.resolve(con, {"s": expr((100, False, True, False), (999, True, False, False))})


def test_mapping_needs_concept_relationship(tmp_path):
    for name in ("CONCEPT.csv", "CONCEPT_ANCESTOR.csv"):
        (tmp_path / name).write_bytes((DATA / "vocabulary" / name).read_bytes())
    c = omop.connect(tmp_path, tables=VOCAB_TABLES)
    assert atlas.resolve(c, {"a": expr((100, False, True, False))}) == {"a": NSCLC_DESCENDANTS}
    with pytest.raises(CohortError) as err:
        atlas.resolve(c, {"a": expr((100, False, True, True))})
    assert str(err.value) == (
        "concept sets ['a']: includeMapped needs the OMOP table concept_relationship "
        "(concept_relationship.parquet or .csv in the OMOP folder)")


@pytest.mark.parametrize("dialect", ["postgres", "spark"])
def test_query_transpiles(dialect):
    for mapped in (False, True):
        sql = sqlglot.transpile(atlas.resolve_query(mapped), read="duckdb", write=dialect,
                                unsupported_level=sqlglot.ErrorLevel.RAISE)[0]
        assert "EXCEPT" in sql and ("concept_relationship" in sql) == mapped


def test_query_runs_in_plain_sql_on_the_rule_table(con):
    """What a cohort script does: the items as a rule table, then the query."""
    sets = {"n": atlas.read_expression(DATA / "nsclc_not_adeno.json")}
    cols = ", ".join(f"{c} {t}" for c, t in atlas.ITEM_COLUMNS)
    con.execute(f"CREATE OR REPLACE TEMP TABLE my_items ({cols})")
    con.executemany("INSERT INTO my_items VALUES (?, ?, ?, ?, ?)", atlas.item_rows(sets))
    got = con.execute(atlas.resolve_query(True, "my_items") + " ORDER BY 2").fetchall()
    assert got == [("n", 100), ("n", 102), ("n", 104), ("n", 901)]


# --- bad files -----------------------------------------------------------------------------

def bad_file(tmp_path, content) -> str:
    path = tmp_path / "set.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CohortError) as err:
        atlas.read_expression(path, "cohort.concept_sets.nsclc")
    return str(err.value).replace(str(path), "<file>")


NSCLC = {"CONCEPT_ID": 100, "CONCEPT_NAME": "Non-small cell lung cancer"}


@pytest.mark.parametrize("content, message", [
    ('{"items": [', "not valid JSON (line 1, column 12: Expecting value)"),
    ([{"concept": NSCLC}], 'expected an ATLAS concept-set expression, a JSON object with a list '
                           '"items" (or a concept set with "expression": {"items": [...]})'),
    ({"items": []}, '"items" is empty; expected at least one concept'),
    ({"items": [NSCLC]}, 'item 1 must be an object with a "concept" object'),
    ({"items": [{"concept": {"CONCEPT_NAME": "x"}}]},
     'item 1: "concept" must have an integer "CONCEPT_ID", got None'),
    ({"items": [{"concept": {"CONCEPT_ID": "100"}}]},
     'item 1: "concept" must have an integer "CONCEPT_ID", got \'100\''),
    ({"items": [{"concept": NSCLC, "isExcluded": "false"}]},
     "item 1 (CONCEPT_ID 100): isExcluded must be true or false, got 'false'"),
    ({"items": [{"concept": NSCLC, "isExcluded": True}]},
     "every item is excluded; expected at least one included concept"),
])
def test_bad_file_is_named(tmp_path, content, message):
    assert bad_file(tmp_path, content) == f"cohort.concept_sets.nsclc (<file>): {message}"


def test_misspelt_flag_is_refused_not_ignored():
    with pytest.raises(CohortError) as err:
        atlas.read_expression(DATA / "typo.json")
    assert str(err.value) == (
        f"{DATA / 'typo.json'}: item 1 (CONCEPT_ID 100): unknown keys ['includeDescendents']; "
        "expected concept, isExcluded, includeDescendants, includeMapped")


def test_missing_file_and_bad_params_entries(tmp_path):
    with pytest.raises(CohortError, match=r"cohort.concept_sets.x \(.*nope.json\): file not found"):
        atlas.load_concept_sets({"x": "nope.json"}, True, base_dir=tmp_path)
    with pytest.raises(CohortError, match=r"cohort.concept_sets.x: 'nsclc.yaml' is not a .json"):
        atlas.load_concept_sets({"x": "nsclc.yaml"}, True)
    with pytest.raises(CohortError, match=r"cohort.concept_sets.x must be a non-empty list of "
                                          r"concept ids or the path of an ATLAS"):
        atlas.load_concept_sets({"x": []}, True)


def test_the_vocabulary_fixture_is_read_as_athena_ships_it(con):
    assert con.execute("SELECT COUNT(*) FROM concept WHERE invalid_reason = 'D'").fetchone() == (1,)
    assert omop.has_table(con, "concept_relationship")
    assert not omop.has_table(duckdb.connect(), "concept_relationship")
