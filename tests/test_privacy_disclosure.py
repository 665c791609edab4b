"""Disclosure control against subtraction: complementary suppression, merged attrition steps,
metrics counts and Kaplan-Meier curves cut at small risk sets (hand-built cases)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from pmed import privacy

K = 11


def _recoverable(values, hidden, lines) -> set[int]:
    """Hidden cells a reader can compute: the only unknown of some published line (iterated)."""
    known = ~np.asarray(hidden)
    found = set()
    changed = True
    while changed:
        changed = False
        for line in lines:
            unknown = [i for i in line if not known[i]]
            if len(unknown) == 1:
                known[unknown[0]] = True
                found.add(unknown[0])
                changed = True
    return found


def test_group_counts_with_total():
    # persons 21 = immunotherapy 10 + chemotherapy 11: "<11" beside 21 and 11 reveals 10
    values = [21, 10, 11]
    hidden = privacy.complementary_suppression(values, [[0, 1, 2]], K)
    assert hidden.tolist() == [False, True, True]
    assert privacy.release_counts(values, [[0, 1, 2]], K) == ["21", "<11", privacy.SECONDARY]
    assert not _recoverable(values, hidden, [[0, 1, 2]])


def test_no_secondary_when_nothing_small_or_two_small():
    assert not privacy.complementary_suppression([50, 20, 30], [[0, 1, 2]], K).any()
    hidden = privacy.complementary_suppression([12, 5, 7], [[0, 1, 2]], K)
    assert hidden.tolist() == [False, True, True]


def test_zero_parts_force_the_total_hidden():
    # total 3 = 3 + 0: hiding the 3 alone is useless while the total and the 0 are shown
    hidden = privacy.complementary_suppression([3, 3, 0], [[0, 1, 2]], K)
    assert hidden.tolist() == [True, True, False]


def test_unpublished_cell_protects_its_line():
    hidden = privacy.complementary_suppression([40, 5, np.nan], [[0, 1, 2]], K)
    assert hidden.tolist() == [False, True, False]


@pytest.mark.parametrize("seed", range(30))
def test_two_way_table_never_reveals_a_small_cell(seed):
    """Random 3x3 tables with margins: after suppression no small cell is derivable."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 40, size=(3, 3))
    rows, cols = table.sum(1), table.sum(0)
    values = [*table.ravel(), *rows, *cols, table.sum()]
    idx = np.arange(9).reshape(3, 3)
    lines = [[9 + r, *idx[r]] for r in range(3)] + [[12 + c, *idx[:, c]] for c in range(3)]
    lines += [[15, 9, 10, 11], [15, 12, 13, 14]]
    hidden = privacy.complementary_suppression(values, lines, K)
    small = {i for i, v in enumerate(values) if 0 < v < K}
    assert small <= set(np.flatnonzero(hidden))
    assert not (_recoverable(values, hidden, lines) & small)


def test_merge_small_steps():
    steps = pd.DataFrame({
        "criterion": ["All", "A", "B", "C", "D"],
        "remaining": [100, 95, 90, 60, 57],
        "excluded": [0, 5, 5, 30, 3],
    })
    out = privacy.merge_small_steps(steps, K)
    # A and B (5 + 5 = 10 < 11) merge into C; the last step D (3) merges back into that
    assert out["criterion"].tolist() == ["All", "A or B or C or D"]
    assert out["excluded"].tolist() == [0, 43]
    assert all(not privacy.is_small(e, K) for e in out["excluded"].iloc[1:])
    diffs = -np.diff(out["remaining"].to_numpy())
    np.testing.assert_array_equal(diffs, out["excluded"].iloc[1:].to_numpy())


def test_merge_small_steps_keeps_large_steps():
    steps = pd.DataFrame({"criterion": ["All", "A", "B"], "remaining": [100, 80, 0],
                          "excluded": [0, 20, 80]})
    pd.testing.assert_frame_equal(privacy.merge_small_steps(steps, K), steps)


def test_every_published_difference_is_safe():
    for excluded in itertools.product([0, 4, 11, 20], repeat=4):
        remaining = 200 - np.cumsum([0, *excluded])
        steps = pd.DataFrame({"criterion": list("SABCD"), "remaining": remaining,
                              "excluded": [0, *excluded]})
        out = privacy.merge_small_steps(steps, K)
        small = [e for e in out["excluded"].iloc[1:] if privacy.is_small(e, K)]
        assert not small or (len(out) == 2 and sum(excluded) < K), (excluded, out)


def test_metric_counts():
    metrics = {"n_persons": 21, "n_io": 10, "n_chemo": 11, "hr": 0.7, "flag": True,
               "arms": {"n": 4, "label": "x"}}
    out = privacy.suppress_metric_counts(metrics, K)
    assert out["n_persons"] == 21 and out["n_io"] == "<11" and out["n_chemo"] == privacy.SECONDARY
    assert out["hr"] == 0.7 and out["flag"] is True and out["arms"] == {"n": "<11", "label": "x"}


def test_release_km_cuts_small_risk_sets():
    curve = pd.DataFrame({"time": [0, 1, 2, 3], "survival": [1, 0.9, 0.8, 0.7],
                          "n_at_risk": [30, 20, 10, 5], "n_events": [0, 3, 2, 1],
                          "n_censored": [0, 7, 3, 4]})
    out = privacy.release_km(curve, K)
    assert out["time"].tolist() == [0, 1]
    assert "n_events" not in out.columns
    assert privacy.release_km(curve.assign(n_at_risk=[10, 9, 8, 7]), K).empty


def test_release_nested_hides_small_implicit_exclusions():
    counts, parts = privacy.release_nested(
        {"with_response": 23, "alive": 22, "assessed": 22}, {"PR": 12, "SD": 10}, K)
    # 23 -> 22 -> 22 excludes 1 in all: the later counts are not shown, so neither is the 1;
    # SD 10 is small, and with "assessed" unknown, PR 12 does not reveal it
    assert counts == {"with_response": "23", "alive": privacy.SECONDARY,
                      "assessed": privacy.SECONDARY}
    assert parts == {"PR": "12", "SD": "<11"}
    counts, parts = privacy.release_nested({"a": 100, "b": 60}, {"x": 30, "y": 30}, K)
    assert counts == {"a": "100", "b": "60"} and parts == {"x": "30", "y": "30"}


def test_forced_cell_is_protected_like_a_small_one():
    # a group size hidden in another table (force) needs a complement here as well
    hidden = privacy.complementary_suppression([50, 30, 20], [[0, 1, 2]], K,
                                               force=[False, True, False])
    assert hidden.tolist() == [False, True, True]
    assert privacy.release_counts([50, 30, 20], [[0, 1, 2]], K, force=[False, True, False]) \
        == ["50", privacy.SECONDARY, privacy.SECONDARY]


def test_flow_and_table1_hide_the_same_group_sizes():
    """A 21-person cohort: the flow/arm table and Table 1 share the group sizes, so a size
    one hides the other must not print (Table 1 printed the total 21 the flow hid, and
    chemo_io 13 beside a Table 1 column hiding its size)."""
    from test_cohort_report import small_cohort

    from pmed.cohort.summary import hidden_group_sizes, release_cohort_counts
    from pmed.cohort.table1 import make_table1

    df = small_cohort().iloc[70:91].reset_index(drop=True)  # chemotherapy 10, immunotherapy 11
    df["event"] = np.int8([1, 0] * 10 + [1])
    attrition = pd.DataFrame({"criterion": ["all", "a"], "remaining": [25, 21],
                              "excluded": [0, 4]})
    hide = hidden_group_sizes(df, attrition, K)
    _, released = release_cohort_counts(df, attrition, K, hide)
    table = make_table1(df, K, hide=hide)
    n_row = table.loc[next(i for i in table.index if i[0] == "n")]
    for group, col in [("total", "Overall"), ("chemotherapy", "chemotherapy"),
                       ("immunotherapy", "immunotherapy")]:
        assert str(released[group]["persons"]) == n_row[col], group
    assert "total" in hide  # 4 excluded of 25: the total would give the exclusion back
