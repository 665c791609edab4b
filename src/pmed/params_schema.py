"""The schema of params.yaml: every key, its type and its possible values, checked up front.

One pydantic model per section (paths, common, demo, cohort, survival, outcomes, treatment,
imaging_features, imaging_analysis). Every model forbids unknown keys (a misspelt optional key
is an error, never silently ignored), types are strict (``"100"`` is not an integer, ``1`` is
not ``true``) and impossible values are rejected (negative counts, shares outside [0, 1], a
reference arm that is not an arm, a covariate the cohort does not produce, ...).
:func:`check` returns one line per problem, key path first::

    outcomes.n_bootstrap: expected an integer >= 1, got a string

:func:`pmed.config.load_params` runs it on every load (params.yaml, the CI overlay, values set
by ``dvc exp run -S``), so a bad key stops any stage before data are read. A key read with a
default in code has that default here (``Field`` default), so it is visible in one place.

Adding a key: add a field to the section's model with its type from the helpers below
(``Count``, ``Share``, ``Probability``, ...), a default only if the code has one, and keep
its one-line comment in params.yaml.
"""

from __future__ import annotations

import codecs
import datetime as dt
import difflib
import re
import string
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pmed.config import ROOT

# Values the code accepts, copied from the modules that use them (tests/test_params_schema.py
# checks that the copies agree) so that checking params does not import SimpleITK/pyradiomics.
FEATURE_CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
INTERPOLATORS = ("sitkNearestNeighbor", "sitkLinear", "sitkBSpline")
IMAGE_TYPES = ("Original", "Wavelet", "LoG", "Square", "SquareRoot", "Logarithm", "Exponential",
               "Gradient", "LBP2D", "LBP3D")  # pyradiomics image types (filters)
PERTURBATIONS = ("original", "erode", "dilate", "noise", "translate")
NORMALISATIONS = ("none", "zscore_roi", "zscore_body")  # pmed.imaging.preprocess.NORMALISATIONS
ICC_TYPES = ("3,1", "2,1")
ENCODINGS = ("utf-8", "utf8", "latin-1", "latin1", "iso-8859-1", "utf-16", "utf16")
SIM_ESTIMANDS = ("cox_mi", "iptw", "matched", "policy", "calibration", "subgroups", "temporal", "imaging", "km",
                 "competing", "monitoring", "ph_remedy", "icc")  # pmed.simulation.design.ESTIMANDS
OUTCOME_TABLES = ("condition_occurrence", "procedure_occurrence", "measurement", "observation",
                  "visit_occurrence")
VALUE_TABLES = ("measurement", "observation")
PROTOCOL_COMPONENTS = ("eligibility", "treatment_strategies", "assignment", "time_zero",
                       "outcomes", "follow_up", "causal_contrast")
# Columns of every cohort.parquet (pmed.cohort.contract CORE + DEMOGRAPHICS); the others follow
# from the cohort section (arm indicators, outcomes, conditions, numeric and categorical levels).
COHORT_BASE_COLUMNS = ("person_id", "index_date", "t0_date", "treatment", "t0_year",
                       "days_dx_to_treatment", "time_days", "event", "age_years", "sex_female")

_TYPE_ERRORS = {"int_type", "int_from_float", "int_parsing", "float_type", "float_parsing",
                "bool_type", "bool_parsing", "string_type", "list_type", "tuple_type",
                "dict_type", "model_type", "none_required", "date_type", "is_instance_of"}


def _kind(value: Any) -> str:
    """What a YAML value is, in words (never the value: it may be long)."""
    if value is None:
        return "null"
    for tp, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                     (str, "a string"), (dict, "a mapping"), (list, "a list"),
                     (dt.date, "a date")):
        if isinstance(value, tp):
            return name
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    """The offending value for a message: short values as YAML would show them."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and len(value) <= 60:
        return repr(value)
    if isinstance(value, list) and len(repr(value)) <= 60:
        return repr(value)
    return _kind(value)


def _expect(text: str):
    """A wrap validator replacing any error of the wrapped type by 'expected <text>, got ...':
    the value's kind for a wrong type, else the value itself."""
    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            wrong_type = all(e["type"] in _TYPE_ERRORS for e in err.errors())
            got = _kind(value) if wrong_type else _shown(value)
            raise PydanticCustomError("param", "{msg}", {"msg": f"expected {text}, got {got}"}) \
                from None
    return WrapValidator(check)


def fail(message: str, at: str = "") -> PydanticCustomError:
    """An error for a model validator: ``at`` is the key path below the model ("" = itself)."""
    return PydanticCustomError("param", "{msg}", {"msg": message, "at": at})


# ----------------------------------------------------------------------------- value types
Count = Annotated[int, Field(ge=1), _expect("an integer >= 1")]
NonNegInt = Annotated[int, Field(ge=0), _expect("an integer >= 0")]
Days = Annotated[int, Field(ge=0), _expect("a number of days (integer >= 0)")]
PosDays = Annotated[int, Field(ge=1), _expect("a number of days (integer >= 1)")]
Folds = Annotated[int, Field(ge=2), _expect("an integer >= 2")]
Bins = Annotated[int, Field(ge=2), _expect("an integer >= 2")]
Int = Annotated[int, _expect("an integer")]
ConceptId = Annotated[int, Field(ge=0), _expect("a concept id (integer >= 0)")]
ConceptKey = Annotated[int, Field(ge=0, strict=False), _expect("a concept id (integer >= 0)")]
Share = Annotated[float, Field(ge=0, le=1), _expect("a share in [0, 1]")]
Probability = Annotated[float, Field(gt=0, lt=1), _expect("a number in (0, 1)")]
Level = Annotated[float, Field(gt=0, lt=1), _expect("a level in (0, 1)")]
UnitInterval = Annotated[float, Field(gt=0, le=1), _expect("a number in (0, 1]")]
Mix = Annotated[float, Field(ge=0, le=1), _expect("a mixing parameter in [0, 1]")]
PosFloat = Annotated[float, Field(gt=0), _expect("a number > 0")]
NonNegFloat = Annotated[float, Field(ge=0), _expect("a number >= 0")]
Bool = Annotated[bool, _expect("true or false")]
Text = Annotated[str, Field(min_length=1), _expect("a non-empty string")]
Name = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$"),
                 _expect("a lower-case name (letters, digits, _)")]
Key = Annotated[str, Field(min_length=1), _expect("a name (non-empty string)")]
Column = Annotated[str, Field(min_length=1), _expect("a column name (string)")]
Names = Annotated[list[Column], Field(min_length=1), _expect("a non-empty list of column names")]
OptNames = Annotated[list[Column], _expect("a list of column names")]
Ids = Annotated[list[ConceptId], Field(min_length=1),
                _expect("a non-empty list of concept ids (integers >= 0)")]
Times = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1),
                  _expect("a non-empty list of days (integers >= 0)")]
Window = Annotated[list[int | None], Field(min_length=2, max_length=2),
                   _expect("a window [start_day, end_day] (integers or null)")]
Range = Annotated[list[float], Field(min_length=2, max_length=2),
                  _expect("a range [low, high] of numbers")]
Thresholds = Annotated[list[float], Field(min_length=3, max_length=3),
                       _expect("[start, stop, step] (three numbers)")]


class Model(BaseModel):
    """Base of every section: unknown keys, loose types and NaN/inf are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _window_ok(window: tuple, where: str) -> None:
    start, end = window
    if start is not None and end is not None and start > end:
        raise fail(f"expected start <= end, got [{start}, {end}]", where)


def _range_ok(low: float, high: float, where: str) -> None:
    if low >= high:
        raise fail(f"expected low < high, got [{low:g}, {high:g}]", where)


def _grid_ok(grid: tuple, where: str) -> None:
    """A decision-curve threshold grid [start, stop, step] inside (0, 1)."""
    start, stop, step = grid
    if not (0 < start < stop < 1) or step <= 0:
        raise fail(f"expected 0 < start < stop < 1 and step > 0, got {list(grid)}", where)


def _days_ok(days: list[int], where: str) -> None:
    if list(days) != sorted(set(days)):
        raise fail(f"expected increasing days, got {list(days)}", where)


# ----------------------------------------------------------------------------- paths, common
class Paths(Model):
    """Folders of the study, relative to the workspace."""

    raw: Text
    omop: Text
    imaging: Text
    truth: Text
    ground_truth: Text
    interim: Text
    processed: Text
    reports: Text
    executed: Text
    metrics: Text
    plots: Text
    figures: Text


class Common(Model):
    # stages add offsets (< 10,000) to it; scikit-learn seeds must stay below 2^32
    seed: Annotated[int, Field(ge=0, lt=2**31), _expect("an integer in [0, 2^31)")]
    min_cell_size: Count


# ----------------------------------------------------------------------------- demo
class DemoSize(Model):
    n_persons: Count
    n_imaged: NonNegInt
    followup_share: Share

    @model_validator(mode="after")
    def _imaged(self):
        if self.n_imaged > self.n_persons:
            raise fail(f"expected at most n_persons ({self.n_persons}), got {self.n_imaged}",
                       "n_imaged")
        return self


class Ineligible(Model):
    no_nsclc: Share
    age_under_18: Share
    short_prior_observation: Share
    other_cancer_before: Share
    no_first_line_within_60d: Share
    treatment_before_diagnosis: Share

    @model_validator(mode="after")
    def _below_one(self):
        total = sum(self.model_dump().values())
        if total >= 1:
            raise fail(f"expected shares summing below 1, got a sum of {total:g}")
        return self


class MissingShares(Model):
    ecog: Share
    stage_iv: Share
    smoking: Share
    albumin_g_dl: Share
    ldh_u_l: Share
    neutrophils_10e9_l: Share
    lymphocytes_10e9_l: Share
    hemoglobin_g_dl: Share
    creatinine_mg_dl: Share
    weight_kg: Share
    pdl1_pct: Share
    driver_positive: Share


class AlternativeUnit(Model):
    albumin_g_dl: Share
    hemoglobin_g_dl: Share
    creatinine_mg_dl: Share


class Defects(Model):
    negative_lab_value: Share
    zero_weight: Share
    duplicate_condition: Share
    duplicate_measurement: Share
    death_after_observation_share_of_lost: Share


class Rates(Model):
    ineligible: Ineligible
    missing: MissingShares
    alternative_unit: AlternativeUnit
    loss_to_follow_up: Share
    defects: Defects


class MaskFormats(Model):
    """Shares of demo tumour masks written as DICOM SEG / RTSTRUCT (the rest NIfTI)."""

    seg: Share = 0.0
    rtstruct: Share = 0.0

    @model_validator(mode="after")
    def _at_most_one(self):
        if self.seg + self.rtstruct > 1:
            raise fail(f"expected seg + rtstruct <= 1, got {self.seg + self.rtstruct:g}")
        return self


class Demo(Model):
    size: Text
    sizes: Annotated[dict[str, DemoSize], Field(min_length=1)]
    chunk_size: Count
    imaging_workers: Count
    mask_formats: MaskFormats = MaskFormats()
    mr_share: Share = 0.0  # imaged persons with a baseline MR (pmed.demo.mr)
    image_signal: Bool = True
    heterogeneity: Bool = True
    rates: Rates

    @model_validator(mode="after")
    def _size_known(self):
        if self.size not in self.sizes:
            raise fail(f"expected one of demo.sizes {sorted(self.sizes)}, got {self.size!r}",
                       "size")
        return self


# ----------------------------------------------------------------------------- cohort
class ProtocolComponent(Model):
    specification: Text
    emulation: Annotated[str | None, _expect("a string or null")] = ""


class Protocol(Model):
    eligibility: ProtocolComponent
    treatment_strategies: ProtocolComponent
    assignment: ProtocolComponent
    time_zero: ProtocolComponent
    outcomes: ProtocolComponent
    follow_up: ProtocolComponent
    causal_contrast: ProtocolComponent


SchemaName = Annotated[str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"),
                      _expect("a schema name (letters, digits, _; Spark: catalog.schema) or null")]


class Source(Model):
    encoding: Annotated[str, _expect("a text encoding")] = "utf-8"
    engine: Annotated[Literal["files", "duckdb", "postgres", "spark"],
                      _expect("files, duckdb, postgres or spark")] = "files"
    cdm_schema: SchemaName = None
    vocabulary_schema: SchemaName = None
    scratch_schema: SchemaName = None
    database: Annotated[str | None, _expect("a DuckDB database file path or null")] = None
    data_version: Annotated[str | None, _expect("a CDM release label or null")] = None

    @model_validator(mode="after")
    def _known(self):
        if self.encoding.strip().lower().replace("_", "-") not in ENCODINGS:
            raise fail(f"expected utf-8, latin-1 (also for Windows-1252) or utf-16, got "
                       f"{self.encoding!r}", "encoding")
        codecs.lookup(self.encoding.strip().lower().replace("_", "-"))
        if self.engine in ("postgres", "spark") and self.cdm_schema is None:
            raise fail(f"expected a schema name with engine {self.engine}, got null", "cdm_schema")
        if self.engine == "files":
            for key in ("cdm_schema", "vocabulary_schema", "scratch_schema"):
                if getattr(self, key) is not None:
                    raise fail("expected null with engine files (database engines only), got "
                               f"{getattr(self, key)!r}", key)
        if (self.database is None) == (self.engine == "duckdb"):
            raise fail("expected a DuckDB database file with engine duckdb and null otherwise, "
                       f"got {self.database!r}", "database")
        return self


class Exclusions(Model):
    prior_concept_sets: list[Key] = []
    window: Window = [None, -1]

    @model_validator(mode="after")
    def _ok(self):
        _window_ok(self.window, "window")
        return self


class Arm(Model):
    all_of: Annotated[list[Key], Field(min_length=1)]
    none_of: list[Key] = []
    cohort_definition_id: Int

    @model_validator(mode="after")
    def _disjoint(self):
        both = sorted(set(self.all_of) & set(self.none_of))
        if both:
            raise fail(f"expected none_of disjoint from all_of, got {both} in both", "none_of")
        return self


class TreatmentStrategies(Model):
    grace_days: Days
    max_days_after_index: Days
    reference: Name
    arms: Annotated[dict[Name, Arm], Field(min_length=2)]

    @model_validator(mode="after")
    def _reference(self):
        if self.reference not in self.arms:
            raise fail(f"expected one of the arms {list(self.arms)}, got {self.reference!r}",
                       "reference")
        ids = [a.cohort_definition_id for a in self.arms.values()]
        if len(set(ids)) != len(ids):
            raise fail(f"expected a different cohort_definition_id per arm, got {ids}", "arms")
        labels = list(self.arms)
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                x, y = self.arms[a], self.arms[b]
                if not (set(x.all_of) | set(y.all_of)) & (set(x.none_of) | set(y.none_of)):
                    raise fail(f"arms {a!r} and {b!r} can match the same regimen; give one a "
                               "none_of set the other requires", "arms")
        return self


class FollowUp(Model):
    administrative_censor_date: Annotated[str | dt.date, _expect("a date YYYY-MM-DD")]

    @model_validator(mode="after")
    def _iso(self):
        value = self.administrative_censor_date
        if isinstance(value, str):
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise fail(f"expected a date YYYY-MM-DD, got {value!r}",
                           "administrative_censor_date") from None
        return self


class DeathOutcome(Model):
    type: Literal["death"]


class EventOutcome(Model):
    type: Literal["event"]
    table: Annotated[Literal[OUTCOME_TABLES], _expect(f"one of {', '.join(OUTCOME_TABLES)}")]
    concept_set: Key | None = None
    visit_concept_ids: Ids | None = None
    blanking_days: Days = 0
    value_range: Annotated[list[float | None], Field(min_length=2, max_length=2),
                           _expect("a range [low, high] (numbers or null)")] | None = None
    unit_concept_ids: Ids | None = None
    value_concept_ids: Ids | None = None
    competing: Annotated[Literal["death"] | None, _expect("'death' or null")] = "death"

    @model_validator(mode="after")
    def _consistent(self):
        if self.concept_set is None and self.table != "visit_occurrence":
            raise fail("required key is missing (only a visit_occurrence outcome may go "
                       "without one)", "concept_set")
        if self.table == "visit_occurrence" and self.concept_set is None \
                and self.visit_concept_ids is None:
            raise fail("expected concept_set or visit_concept_ids")
        for key in ("value_range", "unit_concept_ids", "value_concept_ids"):
            if getattr(self, key) is not None and self.table not in VALUE_TABLES:
                raise fail(f"applies only to tables {' and '.join(VALUE_TABLES)}", key)
        return self


class NumericCovariate(Model):
    concept_set: Key
    table: Annotated[Literal[VALUE_TABLES], _expect("measurement or observation")] = \
        "measurement"
    window: Annotated[Literal["lab"] | Annotated[list[int | None], Field(min_length=2,
                                                                           max_length=2)],
                      _expect("'lab' or a window [start_day, end_day]")] = "lab"
    units: Annotated[dict[ConceptKey, PosFloat], Field(min_length=1)]
    plausible: Range
    anchor: Literal["t0", "index"] = "t0"

    @model_validator(mode="after")
    def _ok(self):
        _range_ok(*self.plausible, "plausible")
        if self.window != "lab":
            _baseline_window(self.window, "window")
        return self


class CategoricalCovariate(Model):
    concept_set: Key
    table: Annotated[Literal[VALUE_TABLES], _expect("measurement or observation")] = \
        "observation"
    window: Window
    levels: Annotated[dict[Key, Ids], Field(min_length=1)]
    reference: Ids
    anchor: Literal["t0", "index"] = "t0"

    @model_validator(mode="after")
    def _ok(self):
        _baseline_window(self.window, "window")
        return self


def _baseline_window(window: tuple, where: str) -> None:
    """A baseline window ends on or before its anchor (never reads past t0)."""
    _window_ok(window, where)
    if window[1] is None or window[1] > 0:
        raise fail(f"expected a window ending on or before its anchor (end <= 0), got "
                   f"{list(window)}", where)


class CohortCovariates(Model):
    lab_window_days: Days
    condition_window: Window = [None, -1]
    condition_anchor: Literal["t0", "index"] = "t0"
    conditions: dict[Key, Key]
    numeric: dict[Key, NumericCovariate]
    categorical: dict[Key, CategoricalCovariate] = {}

    @model_validator(mode="after")
    def _ok(self):
        _baseline_window(self.condition_window, "condition_window")
        return self


ConceptSet = Annotated[list[ConceptId] | str,
                       _expect("a non-empty list of concept ids or the path of an ATLAS "
                               "concept-set JSON file")]


class Cohort(Model):
    protocol: Protocol
    source: Source = Source()
    concept_sets: Annotated[dict[Key, ConceptSet], Field(min_length=1)]
    include_descendants: Bool = True
    target_concept_set: Key
    prior_observation_days: Days
    min_age_years: Annotated[float, Field(ge=0), _expect("an age in years (number >= 0)")]
    max_age_years: Annotated[float | None, Field(ge=0),
                             _expect("an age in years (number >= 0) or null")] = None
    female_concept_id: ConceptId
    male_concept_id: ConceptId
    exclusions: Exclusions = Exclusions()
    treatment_strategies: TreatmentStrategies
    follow_up: FollowUp
    outcomes: dict[Name, dict]  # checked by _outcome_rules (death | event rules)
    covariates: CohortCovariates

    @model_validator(mode="after")
    def _references(self):
        for name, ids in self.concept_sets.items():
            if isinstance(ids, list) and not ids:
                raise fail("expected a non-empty list of concept ids", f"concept_sets.{name}")
            if isinstance(ids, str) and not (ROOT / ids).is_file():
                raise fail(f"expected an ATLAS concept-set JSON file (relative to the project "
                           f"root), got {ids!r}: no such file", f"concept_sets.{name}")
        outputs = [*self.covariates.conditions, *self.covariates.numeric]
        outputs += [c for cat in self.covariates.categorical.values() for c in cat.levels]
        twice = sorted({c for c in outputs if outputs.count(c) > 1}
                       | (set(outputs) & set(COHORT_BASE_COLUMNS)))
        if twice:
            raise fail(f"expected distinct output columns, got {twice[0]!r} twice (covariates "
                       "conditions, numeric and categorical levels name cohort columns)",
                       "covariates")
        if self.max_age_years is not None and self.max_age_years < self.min_age_years:
            raise fail(f"expected >= min_age_years ({self.min_age_years:g}), got "
                       f"{self.max_age_years:g}", "max_age_years")
        sets = self.concept_sets

        def known(name: str | None, where: str) -> None:
            if name is not None and name not in sets:
                raise fail(f"expected a concept set of cohort.concept_sets, got {name!r}", where)

        known(self.target_concept_set, "target_concept_set")
        for i, s in enumerate(self.exclusions.prior_concept_sets):
            known(s, f"exclusions.prior_concept_sets[{i}]")
        for label, arm in self.treatment_strategies.arms.items():
            for key in ("all_of", "none_of"):
                for i, s in enumerate(getattr(arm, key)):
                    known(s, f"treatment_strategies.arms.{label}.{key}[{i}]")
        for col, s in self.covariates.conditions.items():
            known(s, f"covariates.conditions.{col}")
        for kind in ("numeric", "categorical"):
            for col, cov in getattr(self.covariates, kind).items():
                known(cov.concept_set, f"covariates.{kind}.{col}.concept_set")
        for name, rule in self.outcomes.items():
            known(rule.get("concept_set"), f"outcomes.{name}.concept_set")
        deaths = [n for n, o in self.outcomes.items() if o.get("type") == "death"]
        if len(deaths) != 1:
            raise fail(f"expected exactly one outcome of type death (the primary outcome), got "
                       f"{len(deaths)}", "outcomes")
        return self

    @field_validator("outcomes")
    @classmethod
    def _outcome_rules(cls, outcomes: dict) -> dict:
        """Each outcome validated as a death or an event rule, the error at its own key path."""
        for name, rule in outcomes.items():
            kind = rule.get("type")
            if kind not in ("death", "event"):
                raise fail(f"expected 'death' or 'event', got {_shown(kind)}", f"{name}.type")
            rule_model = DeathOutcome if kind == "death" else EventOutcome
            try:
                rule_model.model_validate(rule)
            except ValidationError as err:
                e = err.errors()[0]
                raise fail(_message(e, rule_model), name + _path(e["loc"], e.get("ctx"))) \
                    from None
        return outcomes

    def columns(self) -> set[str]:
        """The cohort.parquet columns this definition produces."""
        st = self.treatment_strategies
        cols = set(COHORT_BASE_COLUMNS) | {f"arm_{a}" for a in st.arms if a != st.reference}
        for name, rule in self.outcomes.items():
            if rule.get("type") == "event":
                cols |= {f"{name}_time_days", f"{name}_status"}
        cols |= set(self.covariates.conditions) | set(self.covariates.numeric)
        for cat in self.covariates.categorical.values():
            cols |= set(cat.levels)
        return cols

    def event_outcomes(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o.get("type") == "event"]


# ----------------------------------------------------------------------------- survival
Terms = Annotated[list[Annotated[str, Field(pattern=r"^[^:\s]+:[^:\s]+$")]],
                  _expect('a list of product terms "a:b"')]


class Survival(Model):
    covariates: Names
    interactions: Terms
    n_imputations: Count
    mice_max_iter: Count
    km_times_days: Times
    risk_groups: Bins
    ph_alpha: Level
    ph_min_hr_ratio: Annotated[float, Field(ge=1), _expect("a ratio >= 1")]
    ph_cut_days: PosDays
    n_bootstrap: Count
    n_jobs: Count
    competing_outcomes: OptNames
    competing_covariates: OptNames

    @model_validator(mode="after")
    def _ok(self):
        _days_ok(self.km_times_days, "km_times_days")
        return self


# ----------------------------------------------------------------------------- outcomes
class Outcomes(Model):
    covariates: Names
    interactions: Terms
    horizon_days: PosDays
    brier_grid_points: Count
    cv_folds: Folds
    n_bootstrap: Count
    n_jobs: Count
    cox_penalizer: NonNegFloat
    cox_l1_ratio: Mix
    gb_n_estimators: Count
    gb_max_depth: Count
    gb_learning_rate: PosFloat
    high_risk_threshold: Probability
    dc_thresholds: Thresholds
    calibration_bins: Bins
    permutation_repeats: Count
    permutation_max_rows: Annotated[int | None, Field(ge=1),
                                    _expect("an integer >= 1 or null")] = None
    mice_max_iter: Count
    km_times_days: Times
    cv_repeats: Count
    bootstrap_max_rows: Annotated[int | None, Field(ge=2), _expect("an integer >= 2 or null")] = None
    calibration_knots: Annotated[int, Field(ge=3, le=5), _expect("3, 4 or 5 (spline knots)")]
    subgroup_age_edges: Annotated[list[float], Field(min_length=1),
                                  _expect("a non-empty list of increasing ages in years")]
    temporal_train_until_year: Int
    riley_nagelkerke_r2: Probability
    riley_shrinkage: Probability

    @model_validator(mode="after")
    def _ok(self):
        _grid_ok(self.dc_thresholds, "dc_thresholds")
        _days_ok(self.km_times_days, "km_times_days")
        edges = self.subgroup_age_edges
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            shown = ", ".join(f"{a:g}" for a in edges)
            raise fail(f"expected strictly increasing ages, got [{shown}]", "subgroup_age_edges")
        return self


# ----------------------------------------------------------------------------- treatment
class Recommend(Model):
    alpha: Level
    n_repeats: Count
    n_folds: Folds
    censoring: Annotated[Literal["aipcw", "km_ipcw"], _expect("aipcw or km_ipcw")]
    effect_modifiers: Names
    min_leaf_share: Annotated[float, Field(gt=0, le=0.5), _expect("a share in (0, 0.5]")]
    n_cuts: Count
    ps_clip: Annotated[float, Field(ge=0, lt=0.5), _expect("a propensity floor in [0, 0.5)")]
    cox_ridge: NonNegFloat
    n_bootstrap: Count


class Monitoring(Model):
    lab: Column
    concept_ids: Ids
    units: Annotated[dict[ConceptKey, PosFloat], Field(min_length=1)]
    plausible: Range
    baseline_window_days: Days
    followup_days: PosDays
    adjust: OptNames
    band_months: Count
    landmark_days: PosDays
    landmark_window_days: Days
    response_threshold_pct: PosFloat
    response_direction: Annotated[Literal["decrease", "increase"],
                                  _expect("decrease or increase")]
    max_persons: Annotated[int | None, Field(ge=1), _expect("an integer >= 1 or null")]

    @model_validator(mode="after")
    def _ok(self):
        _range_ok(*self.plausible, "plausible")
        if self.landmark_days > self.followup_days:
            raise fail(f"expected <= followup_days ({self.followup_days}), got "
                       f"{self.landmark_days}", "landmark_days")
        return self


class Treatment(Model):
    covariates: Names
    horizon_days: PosDays
    weight_truncation_quantile: Annotated[float | None, Field(gt=0.5, lt=1),
                                          _expect("a quantile in (0.5, 1) or null")]
    smd_threshold: PosFloat
    n_imputations: Count
    mice_max_iter: Count
    n_bootstrap: Count
    n_jobs: Count
    km_times_days: Times
    recommend: Recommend
    monitoring: Monitoring

    @model_validator(mode="after")
    def _ok(self):
        _days_ok(self.km_times_days, "km_times_days")
        return self


# ----------------------------------------------------------------------------- imaging
class Radiomics(Model):
    resampled_spacing_mm: Annotated[
        Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)] | None,
        _expect("[x, y, z] spacing in mm (numbers > 0) or null")]
    interpolator: Annotated[Literal[INTERPOLATORS], _expect(f"one of {', '.join(INTERPOLATORS)}")]
    resegment_range_hu: Annotated[Annotated[list[float], Field(min_length=2, max_length=2)] | None,
                                  _expect("a range [low, high] in HU or null")]
    bin_width: PosFloat
    bin_count: Annotated[int | None, Field(ge=2), _expect("an integer >= 2 or null")] = None  # MR: bins instead of bin_width
    feature_classes: Annotated[list[Literal[FEATURE_CLASSES]], Field(min_length=1),
                               _expect(f"a non-empty list of {', '.join(FEATURE_CLASSES)}")]
    image_types: Annotated[dict[Literal[IMAGE_TYPES], dict[str, Any] | None], Field(min_length=1),
                           _expect(f"a mapping of pyradiomics image types "
                                   f"({', '.join(IMAGE_TYPES)}) to their options")]

    @model_validator(mode="after")
    def _ok(self):
        if self.resegment_range_hu is not None:
            _range_ok(*self.resegment_range_hu, "resegment_range_hu")
        return self


class Stability(Model):
    n_images: Annotated[int, Field(ge=2), _expect("an integer >= 2")]
    perturbations: Annotated[list[Literal[PERTURBATIONS]], Field(min_length=2),
                             _expect(f"a list of >= 2 of {', '.join(PERTURBATIONS)}")]
    noise_sd_hu: NonNegFloat
    shift_voxels: NonNegFloat
    icc_type: Annotated[Literal[ICC_TYPES], _expect('"3,1" or "2,1"')]
    icc_threshold: Probability


class Response(Model):
    pr_pct: Annotated[float, Field(lt=0), _expect("a negative change in %")]
    pd_pct: Annotated[float, Field(gt=0), _expect("a positive change in %")]
    pd_min_increase_mm: NonNegFloat
    key_features: Names


class Masks(Model):
    """Which structure of a DICOM SEG / RTSTRUCT file is the tumour (imaging/masks.py)."""

    segment_label: Text
    roi_name_pattern: Text
    fractional_threshold: Annotated[float, Field(gt=0, le=1), _expect("a number in (0, 1]")]

    @model_validator(mode="after")
    def _ok(self):
        for key in ("segment_label", "roi_name_pattern"):
            try:
                re.compile(getattr(self, key))
            except re.error as err:
                raise fail(f"expected a regular expression, got {getattr(self, key)!r} ({err})",
                           key) from None
        return self


class DicomChecks(Model):
    """Tolerances of the DICOM series checks (imaging/io.py)."""

    position_tolerance_mm: PosFloat
    spacing_tolerance: PosFloat
    tilt_tolerance_deg: NonNegFloat


class SeriesSelection(Model):
    """Rules a series must meet before extraction (imaging/selection.py SeriesRules)."""

    modalities: Annotated[list[Text], _expect("a list of DICOM Modality values")] = ["CT"]
    body_parts: Annotated[list[Text], _expect("a list of BodyPartExamined values")] = []
    slice_thickness_mm: Annotated[list[NonNegFloat] | None, Field(min_length=2, max_length=2),
                                  _expect("[min, max] in mm or null")] = None
    description_pattern: Annotated[str | None, _expect("a regular expression or null")] = None
    kernel_pattern: Annotated[str | None, _expect("a regular expression or null")] = None
    baseline_choice: Annotated[Literal["latest", "earliest"], _expect("latest or earliest")] = "latest"

    @model_validator(mode="after")
    def _ok(self):
        if self.slice_thickness_mm is not None and self.slice_thickness_mm[0] > self.slice_thickness_mm[1]:
            raise fail(f"expected [min, max] with min <= max, got {self.slice_thickness_mm}",
                       "slice_thickness_mm")
        for key in ("description_pattern", "kernel_pattern"):
            pattern = getattr(self, key)
            try:
                re.compile(pattern or "")
            except re.error as err:
                raise fail(f"expected a regular expression, got {pattern!r} ({err})", key) from None
        return self


class Preprocessing(Model):
    """Intensity preprocessing before radiomics (imaging/preprocess.py Preprocessing)."""

    normalisation: Annotated[Literal[NORMALISATIONS], _expect(f"one of {', '.join(NORMALISATIONS)}")] = "none"
    n4_bias_correction: Bool = False


class RadiomicsOverrides(Model):
    """Keys of imaging_features.radiomics that a modality replaces (all optional)."""

    resampled_spacing_mm: Annotated[
        Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)] | None,
        _expect("[x, y, z] spacing in mm (numbers > 0) or null")] = None
    interpolator: Annotated[Literal[INTERPOLATORS] | None, _expect(f"one of {', '.join(INTERPOLATORS)}")] = None
    resegment_range_hu: Annotated[Annotated[list[float], Field(min_length=2, max_length=2)] | None,
                                  _expect("a range [low, high] or null")] = None
    bin_width: Annotated[float | None, Field(gt=0), _expect("a number > 0 or null")] = None
    bin_count: Annotated[int | None, Field(ge=2), _expect("an integer >= 2 or null")] = None


class StabilityOverrides(Model):
    """Keys of imaging_features.stability that a modality replaces (all optional)."""

    n_images: Annotated[int | None, Field(ge=2), _expect("an integer >= 2")] = None
    noise_sd_hu: Annotated[float | None, Field(ge=0), _expect("a number >= 0")] = None
    shift_voxels: Annotated[float | None, Field(ge=0), _expect("a number >= 0")] = None


class MrImaging(Model):
    """MR series, analysed apart from CT (imaging/stage.py modality_params)."""

    enabled: Bool = False
    series_selection: SeriesSelection = SeriesSelection(modalities=["MR"])
    preprocessing: Preprocessing = Preprocessing(normalisation="zscore_body")
    radiomics: RadiomicsOverrides = RadiomicsOverrides()
    stability: StabilityOverrides = StabilityOverrides()

    @model_validator(mode="after")
    def _ok(self):
        if "MR" not in self.series_selection.modalities or "CT" in self.series_selection.modalities:
            raise fail(f"expected MR and not CT among the modalities (no CT/MR pooling), got "
                       f"{self.series_selection.modalities}", "series_selection.modalities")
        return self


class ImagingFeatures(Model):
    mask_path_template: Annotated[Text | Annotated[list[Text], Field(min_length=1)],
                                  _expect("a path template or a non-empty list of them")]
    masks: Masks
    dicom: DicomChecks
    series_selection: SeriesSelection = SeriesSelection()
    on_error: Annotated[Literal["exclude", "raise"], _expect("exclude or raise")]
    workers: Annotated[int, Field(ge=0), _expect("an integer >= 0 (0 = all CPU cores)")]
    progress: Bool = True
    baseline_window_days: Days
    followup_window_days: Annotated[list[int], Field(min_length=2, max_length=2),
                                    _expect("a window [first_day, last_day] (integers)")]
    radiomics: Radiomics
    stability: Stability
    response: Response
    truth_features: dict[str, Column] = {}
    preprocessing: Preprocessing = Preprocessing()
    mr: MrImaging = MrImaging()

    @model_validator(mode="after")
    def _ok(self):
        if "MR" in self.series_selection.modalities:
            raise fail("expected CT series only (MR series are analysed by imaging_features.mr; no "
                       f"CT/MR pooling), got {self.series_selection.modalities}",
                       "series_selection.modalities")
        first, last = self.followup_window_days
        if not 0 < first <= last:
            raise fail(f"expected 0 < first_day <= last_day, got [{first}, {last}]",
                       "followup_window_days")
        templates = self.mask_path_template
        for template in [templates] if isinstance(templates, str) else templates:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
            except ValueError as err:
                raise fail(f"expected a path template with {{column}} fields, got "
                           f"{template!r} ({err})", "mask_path_template") from None
            if not fields:
                raise fail("expected a path template naming image_occurrence columns in "
                           f"{{braces}}, got {template!r}", "mask_path_template")
        return self


class ImagingAnalysis(Model):
    clinical_terms: Names
    corr_threshold: UnitInterval
    corr_method: Annotated[Literal["spearman", "pearson"], _expect("spearman or pearson")]
    max_mode_fraction: UnitInterval
    l1_ratio: UnitInterval
    n_alphas: Count
    alpha_min_ratio: Probability
    inner_folds: Folds
    alpha_rule: Annotated[Literal["min", "1se"], _expect("min or 1se")]
    n_folds: Folds
    n_repeats: Count
    n_permutations: Count
    score_repeats: Count
    alpha: Level
    n_jobs: Count
    horizon_days: PosDays
    fdr_level: Level
    calibration_bins: Bins
    dca_thresholds: Thresholds
    landmark_days: Days
    km_times_days: Times

    @model_validator(mode="after")
    def _ok(self):
        _grid_ok(self.dca_thresholds, "dca_thresholds")
        _days_ok(self.km_times_days, "km_times_days")
        return self


# ----------------------------------------------------------------------------- simulation
SimEstimands = Annotated[list[Literal[SIM_ESTIMANDS]], Field(min_length=1),
                         _expect(f"a non-empty list of {', '.join(SIM_ESTIMANDS)}")]


class SimulationScenario(Model):
    heterogeneity: Bool
    image_signal: Bool
    estimands: SimEstimands


class Simulation(Model):
    seed: NonNegInt
    replicates: Count
    n_persons: Count
    n_imaged: Count
    truth_n_persons: Count
    workers: Count
    calibration_n_bootstrap: Count
    iptw_n_bootstrap: Count
    imaging_n_permutations: Count
    estimands: SimEstimands | None = None
    scenarios: Annotated[dict[Name, SimulationScenario], Field(min_length=1)]


# ----------------------------------------------------------------------------- the file
SECTIONS: dict[str, type[Model]] = {
    "paths": Paths, "common": Common, "demo": Demo, "cohort": Cohort, "survival": Survival,
    "outcomes": Outcomes, "treatment": Treatment, "imaging_features": ImagingFeatures,
    "imaging_analysis": ImagingAnalysis, "simulation": Simulation,
}


class Params(Model):
    """The whole params.yaml, with the checks across sections."""

    paths: Paths
    common: Common
    demo: Demo
    cohort: Cohort
    survival: Survival
    outcomes: Outcomes
    treatment: Treatment
    imaging_features: ImagingFeatures
    imaging_analysis: ImagingAnalysis
    simulation: Simulation | None = None

    @model_validator(mode="after")
    def _columns(self):
        """Every column a stage names is one the cohort section produces."""
        cols = self.cohort.columns()
        uses = {
            "survival.covariates": self.survival.covariates,
            "survival.interactions": self.survival.interactions,
            "survival.competing_covariates": self.survival.competing_covariates,
            "outcomes.covariates": self.outcomes.covariates,
            "outcomes.interactions": self.outcomes.interactions,
            "treatment.covariates": self.treatment.covariates,
            "treatment.recommend.effect_modifiers": self.treatment.recommend.effect_modifiers,
            "treatment.monitoring.adjust": self.treatment.monitoring.adjust,
            "imaging_analysis.clinical_terms": self.imaging_analysis.clinical_terms,
        }
        for where, terms in uses.items():
            for i, term in enumerate(terms):
                if term in terms[:i]:
                    raise fail(f"expected distinct terms, got {term!r} twice", f"{where}[{i}]")
                unknown = [c for c in term.split(":") if c not in cols]
                if unknown:
                    hint = difflib.get_close_matches(unknown[0], sorted(cols), 1, cutoff=0.8)
                    also = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise fail(f"expected a column of the cohort (from the cohort section), got "
                               f"{unknown[0]!r}{also}", f"{where}[{i}]")
        events = self.cohort.event_outcomes()
        for i, name in enumerate(self.survival.competing_outcomes):
            if name not in events:
                raise fail(f"expected an event outcome of cohort.outcomes {events}, got "
                           f"{name!r}", f"survival.competing_outcomes[{i}]")
        landmark = self.imaging_analysis.landmark_days
        last_scan = self.imaging_features.followup_window_days[1]
        if landmark < last_scan:
            raise fail(f"expected >= imaging_features.followup_window_days end ({last_scan}): "
                       f"no follow-up scan after the landmark, got {landmark}",
                       "imaging_analysis.landmark_days")
        return self


# ----------------------------------------------------------------------------- messages
def _path(loc: tuple, ctx: dict | None = None) -> str:
    """``('outcomes', 'dc_thresholds', 1)`` -> ``.outcomes.dc_thresholds[1]`` (with ``ctx['at']``
    appended: the path a model validator names below its model)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    at = (ctx or {}).get("at")
    if at:
        out += at if at.startswith("[") else f".{at}"
    return out


def _unwrap(tp: Any) -> Any:
    """The model inside ``Annotated[...]`` / ``X | None`` (or ``tp`` itself)."""
    while get_origin(tp) is Annotated or (get_origin(tp) in (Union, types.UnionType)
                                          and type(None) in get_args(tp)):
        tp = next(a for a in get_args(tp) if a is not type(None))
    return tp


def _fields_at(loc: tuple, root: Any = None) -> list[str] | None:
    """Field names of the model at ``loc`` below ``root`` (default :class:`Params`), if it is
    a model (for 'did you mean')."""
    model: Any = root or Params
    for part in loc:
        model = _unwrap(model)
        fields = getattr(model, "model_fields", None)
        if fields and part in fields:
            model = fields[part].annotation
        elif get_origin(model) is dict:
            model = get_args(model)[1]
        elif get_origin(model) is list and isinstance(part, int):
            model = get_args(model)[0]
        else:
            return None
    fields = getattr(_unwrap(model), "model_fields", None)
    return list(fields) if fields else None


def _hint(err: dict, root: Any = None) -> str | None:
    """The known key closest to an unknown one, if any is close."""
    known = _fields_at(tuple(err["loc"][:-1]), root) or []
    hint = difflib.get_close_matches(str(err["loc"][-1]), known, 1, cutoff=0.8)
    return hint[0] if hint else None


def _message(err: dict, root: Any = None) -> str:
    """One error of pydantic in words (without the key path); ``root``: the model validated
    (default :class:`Params`)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "param":
        return ctx["msg"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        known, hint = _fields_at(tuple(err["loc"][:-1]), root) or [], _hint(err, root)
        return "unknown key" + (f" (did you mean {hint!r}?)" if hint
                                else f" (expected one of {', '.join(known)})" if known else "")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {_kind(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_kind(value)}"
    if kind == "too_short":
        return (f"expected at least {ctx.get('min_length')} item(s), got "
                f"{ctx.get('actual_length')}")
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {_shown(value)}"
    if kind == "string_pattern_mismatch":
        return f"expected a lower-case name (letters, digits, _), got {_shown(value)}"
    if kind in _TYPE_ERRORS:
        return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_kind(value)}"
    return f"{err['msg']}, got {_shown(value)}"


def _located(prefix: tuple, err: dict) -> tuple[str, str]:
    """(key path, message) of one error; a bad mapping key is named as the key itself."""
    loc, msg = prefix + tuple(err["loc"]), _message(err)
    if loc and loc[-1] == "[key]":  # pydantic's marker for an invalid key of a dict
        loc, msg = loc[:-1], f"{msg} (as a key)"
    return _path(loc, err.get("ctx")).lstrip("."), msg


def _errors(err: ValidationError, prefix: tuple = ()) -> list[tuple[str, str]]:
    """(key path, message) per error; a misspelt required key is one problem (the unknown
    key with its 'did you mean'), not two."""
    errors = err.errors()
    found = [_located(prefix, e) for e in errors]
    for i, e in enumerate(errors):
        meant = _hint(e) if e["type"] == "extra_forbidden" else None
        if meant is None:
            continue
        meant_path = _path(prefix + tuple(e["loc"][:-1]) + (meant,)).lstrip(".")
        for j, (path, _) in enumerate(found):
            if path == meant_path and errors[j]["type"] == "missing":
                found[j], found[i] = found[i], None
                break
    return list(dict.fromkeys(f for f in found if f is not None))


def problems(params: Any) -> list[tuple[str, str]]:
    """Problems of a whole params file (parsed YAML): [(key path, message)], [] if valid."""
    if not isinstance(params, dict):
        return [("", f"expected a mapping of sections, got {_kind(params)}")]
    try:
        Params.model_validate(params)
    except ValidationError as err:
        return _errors(err)
    return []


def check(params: Any) -> list[str]:
    """:func:`problems` as lines ``key.path: message``."""
    return [f"{path}: {msg}" if path else msg for path, msg in problems(params)]


def check_section(name: str, values: Any) -> list[str]:
    """Problems of one section (e.g. ``imaging_features`` handed to a function) as lines, key
    paths starting with ``name``; the checks across sections are left to :func:`check`."""
    try:
        SECTIONS[name].model_validate(values)
    except ValidationError as err:
        return [f"{path}: {msg}" for path, msg in _errors(err, (name,))]
    return []
