"""The study definition as data: params.yaml ``cohort:`` -> a validated :class:`CohortDefinition`.

Every criterion, window and unit rule of the cohort lives in params.yaml; this module only
checks the section's shape and types (concept ids are checked against the vocabulary later,
by :func:`pmed.cohort.omop.check_concepts`) and fills documented defaults. Day windows are
``[start, end]`` offsets from the index date, both ends inclusive, ``None`` = unbounded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pmed.cohort.errors import CohortError

TABLES_WITH_VALUES = ("measurement", "observation")


@dataclass(frozen=True)
class NumericCovariate:
    """Last numeric value in a window, converted to the output unit.

    Parameters
    ----------
    column : output column of cohort.parquet (e.g. ``"albumin_g_dl"``).
    concept_set : name of the concept set identifying the records.
    table : ``"measurement"`` or ``"observation"``.
    window : (start, end) days from index, inclusive; None = unbounded.
    units : {unit_concept_id: factor}; value_in_output_unit = value_as_number * factor.
        Records whose unit is not a key are dropped (and counted by the quality report).
    plausible : (low, high) inclusive range in the output unit; other values are dropped.
    """

    column: str
    concept_set: str
    table: str
    window: tuple[int | None, int | None]
    units: dict[int, float]
    plausible: tuple[float, float]


@dataclass(frozen=True)
class CategoricalCovariate:
    """Last coded value (value_as_concept_id) in a window, as 0/1 indicator columns.

    ``levels`` maps each output column to the value concept ids meaning 1; ``reference``
    lists the remaining known values (all indicators 0). A person with no record in the
    window, or only unknown values, gets NaN in every indicator.
    """

    name: str
    concept_set: str
    table: str
    window: tuple[int | None, int | None]
    levels: dict[str, list[int]]
    reference: list[int]


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
    exposure_groups: dict[str, str]
    treated_group: str
    max_days_to_treatment: int
    administrative_censor_date: dt.date
    female_concept_id: int
    condition_window: tuple[int | None, int | None]
    conditions: dict[str, str]
    numeric: list[NumericCovariate] = field(default_factory=list)
    categorical: list[CategoricalCovariate] = field(default_factory=list)

    @property
    def covariate_concept_sets(self) -> list[str]:
        """Names of all concept sets the definition uses."""
        used = [self.target_concept_set, *self.exclusion_concept_sets,
                *self.exposure_groups.values(), *self.conditions.values()]
        used += [c.concept_set for c in self.numeric] + [c.concept_set for c in self.categorical]
        return sorted(set(used))


def _need(section: dict, key: str, where: str):
    if key not in section:
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
        raise CohortError("cohort definition: concept_sets must map set names to id lists")
    sets = {str(k): _id_list(v, f"concept_sets.{k}") for k, v in raw_sets.items()}

    target = _set_name(_need(cohort, "target_concept_set", ""), sets, "target_concept_set")
    excl = cohort.get("exclusions", {})
    excl_sets = [_set_name(s, sets, "exclusions.prior_concept_sets")
                 for s in excl.get("prior_concept_sets", [])]
    exposure = _need(cohort, "exposure", "")
    groups = _need(exposure, "groups", "exposure.")
    if not isinstance(groups, dict) or len(groups) != 2:
        raise CohortError("cohort definition: exposure.groups must map exactly two group "
                          f"labels to concept sets, got {groups!r}")
    groups = {str(g): _set_name(s, sets, f"exposure.groups.{g}") for g, s in groups.items()}
    treated = _need(exposure, "treated_group", "exposure.")
    if treated not in groups:
        raise CohortError(f"cohort definition: exposure.treated_group {treated!r} is not one "
                          f"of exposure.groups {sorted(groups)}")
    outcome = _need(cohort, "outcome", "")
    censor = _need(outcome, "administrative_censor_date", "outcome.")
    try:
        censor = dt.date.fromisoformat(str(censor))
    except ValueError as err:
        raise CohortError("cohort definition: outcome.administrative_censor_date must be an "
                          f"ISO date (YYYY-MM-DD), got {censor!r}") from err

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
            window=_window(spec.get("window", "lab"), where + ".window", lab_w),
            units={_int_key(u, where + ".units"): _number(f, where + ".units")
                   for u, f in units.items()},
            plausible=(lo, hi),
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
            window=_window(_need(spec, "window", where + "."), where + ".window", lab_w),
            levels={str(c): _id_list(v, f"{where}.levels.{c}") for c, v in levels.items()},
            reference=_id_list(_need(spec, "reference", where + "."), where + ".reference"),
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
        exposure_groups=groups,
        treated_group=treated,
        max_days_to_treatment=_int(_need(exposure, "max_days_after_index", "exposure."),
                                   "exposure.max_days_after_index"),
        administrative_censor_date=censor,
        female_concept_id=_int(_need(cohort, "female_concept_id", ""), "female_concept_id"),
        condition_window=_window(cov.get("condition_window", [None, -1]),
                                 "covariates.condition_window"),
        conditions={str(c): _set_name(s, sets, f"covariates.conditions.{c}")
                    for c, s in _need(cov, "conditions", "covariates.").items()},
        numeric=numeric,
        categorical=categorical,
    )
