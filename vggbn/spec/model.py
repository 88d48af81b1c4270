"""SweepSpec (the YAML sweep file's data model) and the stored spec. Pure: no I/O, no Ray.

A sweep file is validated before anything starts: an unknown key, a bad value, a grid mixed with
Optuna, a tuning metric on the test set, or two grid points that resolve to one trial config fail
with the key path (plan/load.py reads the file, applies --set and base_from, and adds the file's
name and the fix). A spec stored in an experiment (`spec.yaml`) is read back as data: its
structure is checked, today's trial-config rules are not applied to it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vggbn.config import TrialConfig, suggest
from vggbn import yaml_input
from vggbn.errors import ConfigError, SpecError, cut
from vggbn.schema import COSTS, METRICS, SCHEMA_VERSION
from vggbn.spec.resources import Budget, Cost, Resources
from vggbn.spec.scheduler import Scheduler, check_scheduler
from vggbn.spec.space import Seeds, SpaceEntry, check_seeds, check_space
from vggbn.spec.tracking import Tracking
from vggbn.spec.workers import check_spec as check_workers
from vggbn.uri import join, normalize, problem

MAX_TRIALS = 100_000  # a sweep larger than this is a typo (num_samples: 1e9), not a study


SweepSpecError = SpecError  # the public name (vggbn.SweepSpecError)


class BaseFrom(BaseModel):
    """`base_from: results/hpo`: the base comes from an HPO export's best trial on a validation
    metric. Resolved when the sweep file is read (plan/earlier.py); the stored spec keeps the record."""

    model_config = ConfigDict(extra="forbid")
    experiment: str = Field(description="the earlier experiment directory or URI")
    metric: str = Field("val_acc", description="chosen on this validation metric (never test_*)")
    keys: list[str] | None = Field(None, description="the keys to take (default: the keys it "
                                   "searched)")
    trial_id: str | None = Field(None, description="the trial taken (default: the best)")
    value: float | None = Field(None, description="its metric value (filled when resolved)")
    taken: dict[str, Any] | None = Field(None, description="what went into base (filled when resolved)")


# ---------------------------------------------------------------------- the spec
class SweepSpec(BaseModel):
    """One sweep file. `base` + `space` are TrialConfig keys, checked before anything starts."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, ge=1, description="the spec format (set when stored)")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=100,
                      description="experiment directory name: letters, digits, _ . - (not starting "
                                  "with a dot)")
    description: str = Field("", description="what it runs, what it costs, what it should reach")
    metric: str | list[str] = Field("test_acc", description="what the search optimises; a list "
                                    "(e.g. [val_acc, gflops]) for a multi-objective Optuna search")
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    base: dict[str, Any] = Field(default_factory=dict)
    cases: list[dict[str, Any]] = Field(default_factory=list, description="explicit setups (TrialConfig "
                                        "overrides of base), each crossed with the grid")
    space: dict[str, SpaceEntry] = Field(default_factory=dict, description="searched keys: grid, "
                                         "choice, uniform, loguniform, randint, or when (conditional)")
    seeds: Seeds | None = Field(None, description="adaptive seeds instead of a seed grid: "
                                "{min: 2, max: 8, ci_halfwidth: 0.5}")
    search: Literal["grid", "random", "optuna"] = "grid"
    seed: int | None = Field(0, description="seed of the random / Optuna TPE sampler")
    num_samples: int = Field(1, ge=1, le=MAX_TRIALS,
                             description="grid: repeats of the grid; random/optuna: trials")
    max_concurrent: int = Field(0, ge=0, description="trials at once (0 = as resources allow)")
    scheduler: Scheduler = Field(default_factory=Scheduler)
    resources: Resources = Field(default_factory=Resources)
    storage: str = Field("results", description="local directory or s3:// / gs:// URI")
    max_failures: int = Field(2, ge=0, description="retries of a failed trial (from its checkpoint)")
    budget: Budget = Field(default_factory=Budget)
    cost: Cost = Field(default_factory=Cost)
    warm_start: str | None = Field(None, description="an earlier export of the same metric whose "
                                   "finished trials start the Optuna search")
    base_from: BaseFrom | None = Field(None, description="base from an HPO export's best trial on val_acc")
    checkpoint_every: int = Field(1, ge=1, description="epochs between trial checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="most recent checkpoints kept per trial")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow / W&B runs besides the "
                               "TensorBoard files: {mlflow: sqlite:///mlflow.db, wandb: PROJECT}")

    @model_validator(mode="before")
    @classmethod
    def _one_objective_is_a_name(cls, raw):
        """metric: [val_acc] is metric: val_acc (Ray takes a one-element list for two objectives)."""
        if isinstance(raw, dict):
            for k in ("metric", "mode"):
                if isinstance(raw.get(k), list) and len(raw[k]) == 1:
                    raw = {**raw, k: raw[k][0]}
            if isinstance(raw.get("mode"), list) and isinstance(raw.get("metric", "test_acc"), str):
                raise ValueError(f"mode: a list {raw['mode']} for one metric; give one mode, e.g. "
                                 f"mode: max")
        return raw

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        """A bad URI fails here, before Ray starts (`s3://` alone would become a local `s3:/`)."""
        problem = storage_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version: {self.schema_version} was written by a newer vggbn "
                             f"(this one reads up to {SCHEMA_VERSION}); upgrade vggbn")
        if info.context and info.context.get("stored"):  # data as run: today's rules don't apply
            return self
        if self.trial_count() > MAX_TRIALS:
            raise ValueError(f"space: {self.trial_count():,} trials (grid x cases x num_samples) is more "
                             f"than {MAX_TRIALS:,}; shrink the grid or num_samples")
        if self.budget.gpu_hours is not None and self.budget.cpu_hours is not None:
            raise ValueError("budget: set gpu_hours or cpu_hours, not both")
        if self.budget.gpu_hours is not None and self.resources.gpu == 0:
            raise ValueError("budget.gpu_hours: the trials use no GPU (resources.gpu is 0), so it "
                             "would never be reached; set budget.cpu_hours, or resources.gpu")
        if self.base_from is not None and self.base_from.taken is None:
            raise ValueError("base_from: not resolved (the earlier experiment was not read); load the "
                             "sweep file with vggbn.load_spec, which reads it")
        try:
            base = TrialConfig.from_flat(self.base)
        except ConfigError as e:
            raise ValueError(f"base{': ' if e.unknown_key else '.'}{e}") from None
        for i, case in enumerate(self.cases):
            try:
                TrialConfig.from_flat({**self.base, **case})
            except ConfigError as e:
                raise ValueError(f"cases[{i}]: {e}") from None
            both = sorted(set(case) & set(self.space))
            if both:
                raise ValueError(f"cases[{i}].{both[0]}: also in space; set it in one place")
        check_space(self)
        check_workers(self)  # what a data-parallel trial cannot run
        if self.seeds is not None:
            check_seeds(self)
        self._check_distinct_grid_points()
        self._check_objectives()
        for metric, _ in self.objectives:
            if metric.startswith("val_"):
                d = self.space.get("val_fraction")  # a conditional one: every branch's values
                fracs = d.probe_values() if d is not None else [base.val_fraction]
                if d is not None and d.kind == "when" and len(d.branches) < len(self.space[d.when].values):
                    fracs.append(base.val_fraction)  # a parent value without a branch keeps base's
                if not all(f and f > 0 for f in fracs):
                    raise ValueError(f"metric: {metric} needs a validation split: set "
                                     f"base.val_fraction (e.g. 0.1)")
            tunes = self.scheduler.type != "fifo" or self.search == "optuna"
            if tunes and metric.startswith("test_"):
                raise ValueError(f"metric: {metric} would tune on the test set (scheduler "
                                 f"{self.scheduler.type}, search {self.search}); use val_acc with "
                                 f"base.val_fraction: 0.1 (model selection never looks at the test set)")
        check_scheduler(self)
        return self

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) pairs: one, or several for a multi-objective Optuna search."""
        metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        modes = [self.mode] * len(metrics) if isinstance(self.mode, str) else list(self.mode)
        return list(zip(metrics, modes))

    @property
    def primary_metric(self) -> str:
        return self.objectives[0][0]

    def _check_objectives(self) -> None:
        metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        modes = [self.mode] if isinstance(self.mode, str) else list(self.mode)
        if not metrics:
            raise ValueError("metric: empty list; give one metric, or a list for multi-objective search")
        if len(metrics) > 1 or not isinstance(self.mode, str):
            if len(modes) != len(metrics):
                raise ValueError(f"mode: {len(modes)} modes for {len(metrics)} metrics; give one "
                                 f"mode per metric, e.g. metric: [val_acc, gflops], mode: [max, min]")
        for m in metrics:
            if m not in OBJECTIVES:
                raise ValueError(f"metric: {m!r} is not reported by a trial{suggest(m, OBJECTIVES)}; "
                                 f"reported: {', '.join(OBJECTIVES)}")
        for m, mode in self.objectives:
            want = "max" if m.endswith("_acc") else "min"
            if mode != want:
                raise ValueError(f"mode: {m} should be mode: {want}")
        if len(metrics) > 1:
            if len(set(metrics)) < len(metrics):
                raise ValueError(f"metric: {metrics} names a metric twice")
            if self.search != "optuna":
                raise ValueError(f"metric: {len(metrics)} objectives need search: optuna (a "
                                 f"multi-objective TPE search); search {self.search} optimises one")
            if self.scheduler.type != "fifo":
                raise ValueError(f"scheduler: {self.scheduler.type} stops trials on one metric, so "
                                 f"it cannot serve {len(metrics)} objectives ({', '.join(metrics)}); "
                                 f"use scheduler: {{type: fifo}}, or one metric")

    def _check_distinct_grid_points(self, limit: int = 20_000) -> None:
        """Two grid points that resolve to one trial config would put one model in the table under
        two labels (as the original study's "Res" and "LeakyReLU" rows did): refuse them."""
        if self.search != "grid" or self.trial_count() // self.num_samples > limit:
            return
        dims = self.grid_dims()
        seen: dict[tuple, dict[str, Any]] = {}
        for case in self.cases or [{}]:
            for values in itertools.product(*dims.values()):
                point = {**case, **dict(zip(dims, values))}
                flat = TrialConfig.from_flat({**self.base, **point}).to_flat()
                flat.pop("preset")  # a label: the flags it set are in the config
                key = tuple(sorted((k, repr(v)) for k, v in flat.items()))
                if key in seen:
                    a, b = seen[key], point
                    diff = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
                    if not diff:
                        raise ValueError("space: the grid holds " + ", ".join(
                            f"{k}={v!r}" for k, v in b.items()) + " twice; remove the repeat")
                    what = ", ".join(f"{k}={a.get(k)!r} and {k}={b.get(k)!r}" for k in diff)
                    hint = (" (e.g. base.recipe: seed, the study's Adam recipe, under which the "
                            "optimizer rows differ)" if "preset" in diff else "")
                    if self.base_from and self.base_from.taken:  # the HPO's keys override the rows' own
                        hint = f" (base_from took {', '.join(self.base_from.taken)}: name fewer in base_from.keys)"
                    raise ValueError(
                        f"space: {what} resolve to the same trial config under recipe "
                        f"{flat['recipe']}, so the table would show one model under two labels; "
                        f"drop one, or set what should differ between them{hint}")
                seen[key] = point

    # -------------------------------------------------------------- derived
    def trial_epochs(self) -> list[int]:
        if "epochs" in self.space:
            return [int(v) for v in self.space["epochs"].probe_values()]
        return [TrialConfig.from_flat({**self.base, **c}).epochs for c in self.cases or [{}]]

    def grid_dims(self) -> dict[str, list]:
        return {k: list(d.values) for k, d in self.space.items() if d.kind == "grid"}

    def variant_count(self) -> int:
        """Setups of the grid other than its seeds (the table's rows)."""
        return (math.prod(len(v) for k, v in self.grid_dims().items() if k != "seed")
                * max(1, len(self.cases)))

    def trial_count(self) -> int:
        """Trials of the sweep; with adaptive seeds, the worst case (every variant at `max`)."""
        seeds = self.seeds.max if self.seeds else len(self.grid_dims().get("seed", [0]))
        return self.variant_count() * seeds * self.num_samples

    def storage_uri(self) -> str:
        return normalize(self.storage)  # ~ expanded as in data_dir, file:// as its path

    def experiment_path(self) -> str:  # <storage>/<name>, a URI's query (?endpoint_override=) kept at the end
        return join(self.storage_uri(), self.name)



CASE_KEY = "_case"
OBJECTIVES = METRICS + COSTS


def storage_problem(uri: str) -> str | None:
    """What is wrong with a storage location (a local path, file://, s3://, gs://), or None."""
    return problem(uri)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's trial config -> a flat TrialConfig dict (a case's keys override base's)."""
    return {**{k: v for k, v in config.items() if k != CASE_KEY}, **(config.get(CASE_KEY) or {})}


def parse_yaml(text: str, where: str, fix: str) -> dict:
    """A sweep file's text as its mapping; a SweepSpecError (`where`, what is wrong, `fix`)."""
    try:
        raw = yaml_input.load(text)
    except yaml.YAMLError as e:
        raise SweepSpecError(f"{where}: not valid YAML: {cut(e, 400)}", fix) from None
    except yaml_input.TooBig as e:
        raise SweepSpecError(f"{where}: not a sweep file vggbn reads ({e}).", fix) from None
    if not isinstance(raw, dict):
        what = "empty" if raw is None else {"list": "a list", "str": "plain text"}.get(
            type(raw).__name__, f"a {type(raw).__name__}")
        raise SweepSpecError(f"{where}: {what}, not a sweep spec (a YAML mapping: name:, base:, space: ...).",
                             fix)
    return raw


def stored_spec(text: str, where: str) -> SweepSpec:
    """An experiment's spec.yaml, read as data: its structure is checked, not today's trial-config
    rules (an old spec may hold a grid point that today's defaults would refuse)."""
    fix = "restore the file from the run that wrote it (or a copy of that sweep file)"
    raw = parse_yaml(text, where, fix)
    try:
        return SweepSpec.model_validate(raw, context={"stored": True})
    except ValidationError as e:
        raise SweepSpecError(f"{where}: not a spec vggbn can read ({spec_errors(e)}).", fix) from None


MAX_ERRORS = 5  # problems listed in one message


def spec_errors(e: ValidationError) -> str:
    """A SweepSpec's ValidationError in one line: each problem with its key path."""
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            top = err["loc"][0] if len(err["loc"]) == 1 else None
            hint = suggest(str(top), SweepSpec.model_fields) if top else ""
            out.append(f"{loc}: unknown key{hint}")
        elif err["type"] == "missing":
            out.append(f"{loc}: required")
        elif err["type"] == "string_pattern_mismatch" and len(err["loc"]) == 1:  # name: a/b
            field = SweepSpec.model_fields.get(str(err["loc"][0]))
            out.append(f"{loc}: {cut(repr(err['input']))} is not allowed"
                       + (f" ({field.description})" if field and field.description else ""))
        else:
            out.append(f"{loc + ': ' if loc else ''}{msg}"
                       + (f" (got {cut(repr(err['input']))})" if loc and "input" in err
                          and not isinstance(err["input"], dict) else ""))
    # a message of a few lines whatever the input: each problem cut (a validator may quote a value),
    # and the first few of a long list of them
    more = f"; and {len(out) - MAX_ERRORS} more" if len(out) > MAX_ERRORS else ""
    return "; ".join(cut(o, 1000) for o in out[:MAX_ERRORS]) + more
