"""The study definition as data: params.yaml ``cohort:`` -> a validated :class:`CohortDefinition`.

Every criterion, window and unit rule of the cohort lives in params.yaml; this module only
checks the section's shape and types (concept ids are checked against the vocabulary later,
by :func:`pmed.cohort.omop.check_concepts`) and fills documented defaults. Day windows are
``[start, end]`` offsets from an anchor date, both ends inclusive, ``None`` = unbounded.
Eligibility windows are anchored at the index date (first diagnosis); baseline covariate
windows at ``t0`` (start of the first-line regimen = start of follow-up) unless a window says
``anchor: index``. Either way a baseline window must end on or before its anchor (end <= 0,
never unbounded), so no baseline value is read after t0 (the index date never follows t0).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from itertools import combinations

from pmed.cohort import atlas, engine, omop
from pmed.cohort.errors import CohortError

TABLES_WITH_VALUES = ("measurement", "observation")
ANCHORS = ("t0", "index")
# OMOP table -> (concept id column, date column) of the tables an outcome may read.
OUTCOME_TABLES = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
    "observation": ("observation_concept_id", "observation_date"),
    "visit_occurrence": ("visit_concept_id", "visit_start_date"),
}
PROTOCOL_COMPONENTS = ("eligibility", "treatment_strategies", "assignment", "time_zero",
                       "outcomes", "follow_up", "causal_contrast")


@dataclass(frozen=True)
class NumericCovariate:
    """Last numeric value in a window, converted to the output unit.

    Parameters
    ----------
    column : output column of cohort.parquet (e.g. ``"albumin_g_dl"``).
    concept_set : name of the concept set identifying the records.
    table : ``"measurement"`` or ``"observation"``.
    window : (start, end) days from ``anchor``, inclusive; start None = unbounded; end <= 0.
    units : {unit_concept_id: factor}; value_in_output_unit = value_as_number * factor.
        Records whose unit is not a key are dropped (and counted by the quality report).
    plausible : (low, high) inclusive range in the output unit; other values are dropped.
    anchor : ``"t0"`` (default) or ``"index"``.
    """

    column: str
    concept_set: str
    table: str
    window: tuple[int | None, int]
    units: dict[int, float]
    plausible: tuple[float, float]
    anchor: str = "t0"


@dataclass(frozen=True)
class CategoricalCovariate:
    """Last coded value (value_as_concept_id) in a window, as 0/1 indicator columns.

    ``levels`` maps each output column to the value concept ids meaning 1; ``reference``
    lists the remaining known values (all indicators 0). With ``include_descendants`` a
    value concept also matches through its descendants in concept_ancestor (a sub-stage
    IVA counts as stage IV). A person with no record in the window, or only unknown values,
    gets NaN in every indicator.
    """

    name: str
    concept_set: str
    table: str
    window: tuple[int | None, int]
    levels: dict[str, list[int]]
    reference: list[int]
    anchor: str = "t0"


@dataclass(frozen=True)
class Arm:
    """A treatment strategy: the regimen must contain every set of ``all_of`` and none of
    ``none_of`` (drug concept set names); ``cohort_definition_id`` labels it in the OMOP
    ``cohort`` table."""

    label: str
    all_of: list[str]
    none_of: list[str]
    cohort_definition_id: int


@dataclass(frozen=True)
class TreatmentStrategies:
    """First-line regimens (params ``cohort.treatment_strategies``).

    t0 = first start of a study drug (any set named by an arm), which must lie in
    [0, ``max_days_after_index``] days after index; the regimen = the study-drug sets
    started in [t0, t0 + ``grace_days``]; the arm = the one arm the regimen matches.
    """

    grace_days: int
    max_days_after_index: int
    reference: str
    arms: dict[str, Arm]

    @property
    def drug_sets(self) -> list[str]:
        """Every concept set an arm names (the study drugs), sorted."""
        return sorted({s for a in self.arms.values() for s in (*a.all_of, *a.none_of)})

    @property
    def non_reference(self) -> list[str]:
        """Arm labels other than the reference, in params order (the ``arm_<label>`` columns)."""
        return [a for a in self.arms if a != self.reference]


@dataclass(frozen=True)
class Outcome:
    """An outcome: ``death``, or the first record of a concept set after t0 (type ``event``).

    Parameters
    ----------
    name : outcome name; columns ``<name>_time_days`` / ``<name>_status`` (death: the primary
        ``time_days`` / ``event``).
    type : ``"death"`` or ``"event"``.
    table : OMOP table of the event records (:data:`OUTCOME_TABLES`).
    concept_set : records of this set (optional for visit_occurrence).
    visit_concept_ids : keep only records (visits) whose visit has one of these concepts.
    blanking_days : records on days 0..blanking_days after t0 are ignored.
    value_range : (low, high) inclusive on value_as_number (measurement/observation), None ends open.
    unit_concept_ids : with value_range, the units the range applies to (None = any).
    value_concept_ids : keep only records with one of these value_as_concept_id.
    competing : ``"death"`` (a death before the event is status 2) or None (death censors).
    """

    name: str
    type: str
    table: str | None = None
    concept_set: str | None = None
    visit_concept_ids: list[int] | None = None
    blanking_days: int = 0
    value_range: tuple[float | None, float | None] | None = None
    unit_concept_ids: list[int] | None = None
    value_concept_ids: list[int] | None = None
    competing: str | None = "death"


@dataclass(frozen=True)
class CohortDefinition:
    """Validated ``cohort:`` section of params.yaml (see params.yaml for each key's meaning)."""

    concept_sets: dict[str, list[int]]
    include_descendants: bool
    target_concept_set: str
    prior_observation_days: int
    min_age_years: float
    max_age_years: float | None
    exclusion_concept_sets: list[str]
    exclusion_window: tuple[int | None, int | None]
    strategies: TreatmentStrategies
    administrative_censor_date: dt.date
    female_concept_id: int
    male_concept_id: int
    condition_window: tuple[int | None, int]
    conditions: dict[str, str]
    condition_anchor: str = "t0"
    numeric: list[NumericCovariate] = field(default_factory=list)
    categorical: list[CategoricalCovariate] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    protocol: dict[str, dict[str, str]] = field(default_factory=dict)
    expressions: dict[str, atlas.ConceptSetExpression] = field(default_factory=dict)
    encoding: str = "utf-8"
    source: engine.SourceSpec = field(default_factory=engine.SourceSpec)

    @property
    def concept_set_expressions(self) -> dict[str, atlas.ConceptSetExpression]:
        """Every concept set as an ATLAS-style expression (plain id lists with the global
        ``include_descendants``), resolved in SQL by :func:`pmed.cohort.atlas.resolve_query`."""
        return self.expressions or {n: atlas.from_ids(ids, self.include_descendants, n)
                                    for n, ids in self.concept_sets.items()}

    @property
    def covariate_concept_sets(self) -> list[str]:
        """Names of all concept sets the definition uses."""
        used = [self.target_concept_set, *self.exclusion_concept_sets,
                *self.strategies.drug_sets, *self.conditions.values()]
        used += [c.concept_set for c in self.numeric] + [c.concept_set for c in self.categorical]
        used += [o.concept_set for o in self.outcomes if o.concept_set]
        return sorted(set(used))

    @property
    def event_outcomes(self) -> list[Outcome]:
        """The outcomes other than death (each gives a time + status column pair)."""
        return [o for o in self.outcomes if o.type == "event"]


def _need(section: dict, key: str, where: str):
    if not isinstance(section, dict) or key not in section:
        raise CohortError(f"cohort definition: missing key {where}{key!r}")
    return section[key]


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CohortError(f"cohort definition: {where} must be an integer, got {value!r}")
    return value


def _int_key(value, where: str) -> int:
    """A mapping key that is an integer id; papermill passes dict keys as strings ("8713")."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return _int(value, where)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CohortError(f"cohort definition: {where} must be a number, got {value!r}")
    return float(value)


def _window(value, where: str, lab_window_days: int | None = None):
    """A [start, end] day window; the string ``"lab"`` means [-lab_window_days, 0]."""
    if value == "lab":
        if lab_window_days is None:
            raise CohortError(f"cohort definition: {where} = 'lab' needs covariates.lab_window_days")
        return (-lab_window_days, 0)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise CohortError(f"cohort definition: {where} must be [start_day, end_day], got {value!r}")
    start, end = (None if v is None else _int(v, where) for v in value)
    if start is not None and end is not None and start > end:
        raise CohortError(f"cohort definition: {where} starts after it ends: {value!r}")
    return (start, end)


def _baseline_window(value, where: str, lab_window_days: int) -> tuple[int | None, int]:
    """A baseline window: as :func:`_window`, and it must end on or before its anchor."""
    start, end = _window(value, where, lab_window_days)
    if end is None or end > 0:
        raise CohortError(f"cohort definition: {where} ends at {end!r} days from its anchor; "
                          "a baseline window must end on or before its anchor (end <= 0), so "
                          "that no baseline value is read after t0")
    return (start, end)


def _anchor(anchor, where: str) -> str:
    if anchor not in ANCHORS:
        raise CohortError(f"cohort definition: {where} must be one of {ANCHORS}, got {anchor!r}")
    return anchor


def _set_name(name, sets: dict, where: str) -> str:
    if name not in sets:
        raise CohortError(
            f"cohort definition: {where} refers to concept set {name!r}, not in "
            f"concept_sets (has {sorted(sets)})"
        )
    return name


def _id_list(value, where: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise CohortError(f"cohort definition: {where} must be a non-empty list of concept ids")
    return [_int(v, where) for v in value]


def _label(value, where: str) -> str:
    text = str(value)
    if not text.isidentifier() or text != text.lower():
        raise CohortError(f"cohort definition: {where} {text!r} must be a lower-case "
                          "identifier (letters, digits, _): it names output columns")
    return text


def parse_strategies(spec: dict, sets: dict) -> TreatmentStrategies:
    """Validate ``treatment_strategies``: >= 2 arms, a reference among them, and arms that
    no regimen can match twice (for every pair, some set required by one is forbidden by
    one of the two)."""
    where = "treatment_strategies."
    arms_spec = _need(spec, "arms", where)
    if not isinstance(arms_spec, dict) or len(arms_spec) < 2:
        raise CohortError("cohort definition: treatment_strategies.arms must map >= 2 arm "
                          f"labels to regimens, got {arms_spec!r}")
    arms, ids = {}, set()
    for label, arm in arms_spec.items():
        label = _label(label, f"{where}arms key")
        w = f"{where}arms.{label}"
        all_of = [_set_name(s, sets, w + ".all_of") for s in _need(arm, "all_of", w + ".")]
        none_of = [_set_name(s, sets, w + ".none_of") for s in arm.get("none_of", [])]
        if not all_of or set(all_of) & set(none_of):
            raise CohortError(f"cohort definition: {w} needs a non-empty all_of disjoint from "
                              "none_of")
        cid = _int(_need(arm, "cohort_definition_id", w + "."), w + ".cohort_definition_id")
        if cid in ids:
            raise CohortError(f"cohort definition: {w}.cohort_definition_id {cid} is used twice")
        ids.add(cid)
        arms[label] = Arm(label, all_of, none_of, cid)
    for a, b in combinations(arms.values(), 2):
        if not (set(a.all_of) | set(b.all_of)) & (set(a.none_of) | set(b.none_of)):
            raise CohortError(f"cohort definition: arms {a.label!r} and {b.label!r} can match the "
                              f"same regimen {sorted(set(a.all_of) | set(b.all_of))}; give one "
                              "a none_of set the other requires")
    reference = _need(spec, "reference", where)
    if reference not in arms:
        raise CohortError(f"cohort definition: treatment_strategies.reference {reference!r} is "
                          f"not one of the arms {sorted(arms)}")
    grace = _int(_need(spec, "grace_days", where), where + "grace_days")
    max_days = _int(_need(spec, "max_days_after_index", where), where + "max_days_after_index")
    if grace < 0 or max_days < 0:
        raise CohortError("cohort definition: treatment_strategies.grace_days and "
                          "max_days_after_index must be >= 0")
    return TreatmentStrategies(grace, max_days, reference, arms)


def parse_outcome(name: str, spec: dict, sets: dict) -> Outcome:
    """Validate one entry of ``outcomes`` (see :class:`Outcome`)."""
    name = _label(name, "outcomes key")
    w = f"outcomes.{name}"
    kind = _need(spec, "type", w + ".")
    if kind == "death":
        return Outcome(name=name, type="death", competing=None)
    if kind != "event":
        raise CohortError(f"cohort definition: {w}.type must be 'death' or 'event', got {kind!r}")
    table = _need(spec, "table", w + ".")
    if table not in OUTCOME_TABLES:
        raise CohortError(f"cohort definition: {w}.table must be one of {sorted(OUTCOME_TABLES)}, "
                          f"got {table!r}")
    concept_set = spec.get("concept_set")
    if concept_set is None and table != "visit_occurrence":
        raise CohortError(f"cohort definition: missing key {w}.'concept_set' (only a "
                          "visit_occurrence outcome may go without one)")
    visits = spec.get("visit_concept_ids")
    if table == "visit_occurrence" and concept_set is None and visits is None:
        raise CohortError(f"cohort definition: {w} needs concept_set or visit_concept_ids")
    value_keys = [k for k in ("value_range", "unit_concept_ids", "value_concept_ids") if k in spec]
    if value_keys and table not in TABLES_WITH_VALUES:
        raise CohortError(f"cohort definition: {w}.{value_keys[0]} applies only to tables "
                          f"{TABLES_WITH_VALUES}")
    value_range = spec.get("value_range")
    if value_range is not None:
        if not isinstance(value_range, (list, tuple)) or len(value_range) != 2:
            raise CohortError(f"cohort definition: {w}.value_range must be [low, high]")
        value_range = tuple(None if v is None else _number(v, w + ".value_range")
                            for v in value_range)
    competing = spec.get("competing", "death")
    if competing not in ("death", None):
        raise CohortError(f"cohort definition: {w}.competing must be 'death' or null")
    blanking = _int(spec.get("blanking_days", 0), w + ".blanking_days")
    if blanking < 0:
        raise CohortError(f"cohort definition: {w}.blanking_days must be >= 0")
    return Outcome(
        name=name, type="event", table=table,
        concept_set=None if concept_set is None else _set_name(concept_set, sets, w),
        visit_concept_ids=None if visits is None else _id_list(visits, w + ".visit_concept_ids"),
        blanking_days=blanking, value_range=value_range,
        unit_concept_ids=(None if "unit_concept_ids" not in spec
                          else _id_list(spec["unit_concept_ids"], w + ".unit_concept_ids")),
        value_concept_ids=(None if "value_concept_ids" not in spec
                           else _id_list(spec["value_concept_ids"], w + ".value_concept_ids")),
        competing=competing,
    )


def parse_protocol(spec) -> dict[str, dict[str, str]]:
    """Validate ``protocol``: every component of :data:`PROTOCOL_COMPONENTS` with a text
    ``specification`` (the target trial) and an optional ``emulation`` note."""
    if not isinstance(spec, dict):
        raise CohortError("cohort definition: protocol must map the target-trial components "
                          f"{list(PROTOCOL_COMPONENTS)} to {{specification, emulation}}")
    out = {}
    for comp in PROTOCOL_COMPONENTS:
        entry = _need(spec, comp, "protocol.")
        text = _need(entry, "specification", f"protocol.{comp}.")
        if not isinstance(text, str) or not text.strip():
            raise CohortError(f"cohort definition: protocol.{comp}.specification must be text")
        out[comp] = {"specification": text.strip(),
                     "emulation": str(entry.get("emulation", "") or "").strip()}
    unknown = sorted(set(spec) - set(PROTOCOL_COMPONENTS))
    if unknown:
        raise CohortError(f"cohort definition: protocol has unknown component(s) {unknown}; "
                          f"expected {list(PROTOCOL_COMPONENTS)}")
    return out


def parse_definition(cohort: dict) -> CohortDefinition:
    """Validate params.yaml's ``cohort:`` section.

    Parameters
    ----------
    cohort : the parsed ``cohort:`` mapping.

    Returns
    -------
    CohortDefinition
        Raises :class:`CohortError` naming the offending key on any missing key or bad type.
    """
    if not isinstance(cohort, dict) or not cohort:
        raise CohortError("cohort definition: params.yaml `cohort:` section is empty")
    raw_sets = _need(cohort, "concept_sets", "")
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise CohortError("cohort definition: concept_sets must map set names to id lists "
                          "or ATLAS concept-set JSON files")
    from pmed import config  # project root: relative ATLAS file paths are read from there

    expressions = atlas.load_concept_sets({str(k): v for k, v in raw_sets.items()},
                                          bool(cohort.get("include_descendants", True)),
                                          base_dir=config.ROOT)
    sets = {k: e.concept_ids for k, e in expressions.items()}
    source = cohort.get("source") or {}
    if not isinstance(source, dict):
        raise CohortError("cohort definition: source must be a mapping (e.g. {encoding: utf-8})")
    encoding = omop.normalise_encoding(source.get("encoding", "utf-8"))
    source_spec = engine.parse_source(source)

    target = _set_name(_need(cohort, "target_concept_set", ""), sets, "target_concept_set")
    excl = cohort.get("exclusions", {})
    excl_sets = [_set_name(s, sets, "exclusions.prior_concept_sets")
                 for s in excl.get("prior_concept_sets", [])]
    strategies = parse_strategies(_need(cohort, "treatment_strategies", ""), sets)
    follow_up = _need(cohort, "follow_up", "")
    censor = _need(follow_up, "administrative_censor_date", "follow_up.")
    try:
        censor = dt.date.fromisoformat(str(censor))
    except ValueError as err:
        raise CohortError("cohort definition: follow_up.administrative_censor_date must be an "
                          f"ISO date (YYYY-MM-DD), got {censor!r}") from err
    raw_outcomes = _need(cohort, "outcomes", "")
    if not isinstance(raw_outcomes, dict):
        raise CohortError("cohort definition: outcomes must map outcome names to their rules")
    outcomes = [parse_outcome(n, s, sets) for n, s in raw_outcomes.items()]
    if [o.type for o in outcomes].count("death") != 1:
        raise CohortError("cohort definition: outcomes must hold exactly one {type: death} "
                          "entry (the primary outcome: columns time_days, event)")

    cov = _need(cohort, "covariates", "")
    lab_w = _int(_need(cov, "lab_window_days", "covariates."), "covariates.lab_window_days")
    if lab_w < 0:
        raise CohortError("cohort definition: covariates.lab_window_days must be >= 0")
    numeric = []
    for col, spec in _need(cov, "numeric", "covariates.").items():
        where = f"covariates.numeric.{col}"
        table = spec.get("table", "measurement")
        if table not in TABLES_WITH_VALUES:
            raise CohortError(f"cohort definition: {where}.table must be one of {TABLES_WITH_VALUES}")
        units = _need(spec, "units", where + ".")
        if not isinstance(units, dict) or not units:
            raise CohortError(f"cohort definition: {where}.units must map unit concept ids to factors")
        lo, hi = (_number(v, where + ".plausible") for v in _need(spec, "plausible", where + "."))
        numeric.append(NumericCovariate(
            column=col,
            concept_set=_set_name(_need(spec, "concept_set", where + "."), sets, where),
            table=table,
            window=_baseline_window(spec.get("window", "lab"), where + ".window", lab_w),
            units={_int_key(u, where + ".units"): _number(f, where + ".units")
                   for u, f in units.items()},
            plausible=(lo, hi),
            anchor=_anchor(spec.get("anchor", "t0"), where + ".anchor"),
        ))
    categorical = []
    for name, spec in cov.get("categorical", {}).items():
        where = f"covariates.categorical.{name}"
        table = spec.get("table", "observation")
        if table not in TABLES_WITH_VALUES:
            raise CohortError(f"cohort definition: {where}.table must be one of {TABLES_WITH_VALUES}")
        levels = _need(spec, "levels", where + ".")
        categorical.append(CategoricalCovariate(
            name=name,
            concept_set=_set_name(_need(spec, "concept_set", where + "."), sets, where),
            table=table,
            window=_baseline_window(_need(spec, "window", where + "."), where + ".window", lab_w),
            levels={str(c): _id_list(v, f"{where}.levels.{c}") for c, v in levels.items()},
            reference=_id_list(_need(spec, "reference", where + "."), where + ".reference"),
            anchor=_anchor(spec.get("anchor", "t0"), where + ".anchor"),
        ))
    max_age = cohort.get("max_age_years")
    return CohortDefinition(
        concept_sets=sets,
        include_descendants=bool(cohort.get("include_descendants", True)),
        target_concept_set=target,
        prior_observation_days=_int(_need(cohort, "prior_observation_days", ""),
                                    "prior_observation_days"),
        min_age_years=_number(_need(cohort, "min_age_years", ""), "min_age_years"),
        max_age_years=None if max_age is None else _number(max_age, "max_age_years"),
        exclusion_concept_sets=excl_sets,
        exclusion_window=_window(excl.get("window", [None, -1]), "exclusions.window"),
        strategies=strategies,
        administrative_censor_date=censor,
        female_concept_id=_int(_need(cohort, "female_concept_id", ""), "female_concept_id"),
        male_concept_id=_int(_need(cohort, "male_concept_id", ""), "male_concept_id"),
        condition_window=_baseline_window(cov.get("condition_window", [None, -1]),
                                          "covariates.condition_window", lab_w),
        condition_anchor=_anchor(cov.get("condition_anchor", "t0"), "covariates.condition_anchor"),
        conditions={str(c): _set_name(s, sets, f"covariates.conditions.{c}")
                    for c, s in _need(cov, "conditions", "covariates.").items()},
        numeric=numeric,
        categorical=categorical,
        outcomes=outcomes,
        protocol=parse_protocol(_need(cohort, "protocol", "")),
        expressions=expressions,
        encoding=encoding,
        source=source_spec,
    )
