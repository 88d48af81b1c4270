"""SweepSpec (the YAML sweep file), load_spec, the stored spec, dry_run. No Ray import here.

A sweep file is validated before anything starts: an unknown key, a bad value, a grid mixed with
Optuna, a tuning metric on the test set, or two grid points that resolve to one trial config fail
with the file, the key path and the fix. A spec stored in an experiment (`spec.yaml`) is read back
as data: its structure is checked, today's trial-config rules are not applied to it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from vggbn.config import TrialConfig, suggest
from vggbn.errors import ConfigError, SpecError
from vggbn.schema import COSTS, METRICS, SCHEMA_VERSION
from vggbn.plan.dry_run import dry_run  # noqa: F401  (this module's API)
from vggbn.sweep.data_parallel import check_spec as check_workers
from vggbn.spec.space import (BaseFrom, Budget, Cost, Dim, Resources, Scheduler, Seeds, SpaceEntry, When,  # noqa: F401  (points, Dim,
                    check_seeds, check_space, points)  # When: this module's API)
from vggbn.spec.tracking import Tracking

MAX_TRIALS = 100_000  # a sweep larger than this is a typo (num_samples: 1e9), not a study
STORAGE_SCHEMES = ("s3", "gs", "gcs", "file")  # experiment.normalize opens these


SweepSpecError = SpecError  # the name the public API has always had


# ---------------------------------------------------------------------- the spec
class SweepSpec(BaseModel):
    """One sweep file. `base` + `space` are TrialConfig keys, checked before anything starts."""

    model_config = ConfigDict(extra="forbid")
    _warm: tuple | None = PrivateAttr(None)  # earlier.warm_start's result: its export read once
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

    @model_validator(mode="before")
    @classmethod
    def _base_from(cls, raw, info: ValidationInfo):
        """A sweep file's base_from is resolved (the earlier export read) once; stored specs keep it."""
        if isinstance(raw, dict) and raw.get("base_from") and not (info.context or {}).get("stored"):
            from vggbn.plan.earlier import resolve_base_from

            raw = resolve_base_from(raw)
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
        try:
            base = TrialConfig.from_flat(self.base)
        except ConfigError as e:
            raise ValueError(f"base{': ' if str(e).startswith('unknown') else '.'}{e}") from None
        for i, case in enumerate(self.cases):
            try:
                TrialConfig.from_flat({**self.base, **case})
            except ConfigError as e:
                raise ValueError(f"cases[{i}]: {e}") from None
            both = sorted(set(case) & set(self.space))
            if both:
                raise ValueError(f"cases[{i}].{both[0]}: also in space; set it in one place")
        check_space(self)
        check_workers(self)  # what a data-parallel trial cannot run (distributed.py)
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
        if self.scheduler.type in ("pbt", "pb2"):
            from vggbn.sweep.schedulers.pbt import check
            check(self)
        if self.scheduler.type == "asha":
            epochs = max(self.trial_epochs())
            max_t = self.scheduler.max_t or epochs
            if max_t > epochs:
                raise ValueError(f"scheduler.max_t: {max_t} is beyond the trials' {epochs} epochs")
            if self.scheduler.grace_period > max_t:
                raise ValueError(f"scheduler.grace_period: {self.scheduler.grace_period} is "
                                 f"beyond max_t {max_t}")
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
        return self.storage if "://" in self.storage else str(Path(self.storage).absolute())

    def experiment_path(self) -> str:  # <storage>/<name>, a URI's query (?endpoint_override=) kept at the end
        from vggbn.uri import join

        return join(self.storage_uri(), self.name)

    def param_space(self) -> dict[str, Any]:
        space = {**self.base, **{k: d.to_tune() for k, d in self.space.items() if not isinstance(d, When)}}
        if self.cases:
            from ray import tune

            space[CASE_KEY] = tune.grid_search([dict(c) for c in self.cases])
        return space


CASE_KEY = "_case"
OBJECTIVES = METRICS + COSTS


def storage_problem(uri: str) -> str | None:
    """What is wrong with a storage location (a local path, file://, s3://, gs://), or None."""
    from vggbn.uri import problem

    return problem(uri)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's trial config -> a flat TrialConfig dict (a case's keys override base's)."""
    return {**{k: v for k, v in config.items() if k != CASE_KEY}, **(config.get(CASE_KEY) or {})}


def _set_path(d: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise SweepSpecError(f"--set {path}: {k} is not a section, so {path} cannot be set.\n"
                                 f"Fix: --set {'.'.join(keys[:keys.index(k) + 1])}=VALUE, or a key of a "
                                 f"section such as base.epochs=3, resources.gpu=0.5, space.seed.grid=[0,1]")
    d[keys[-1]] = value


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file; `overrides` are dotted paths (base.epochs=3)."""
    path = Path(path)
    if path.is_dir():
        raise SweepSpecError(f"{path}: is a directory, not a sweep file.\nFix: give a YAML file, "
                             f"e.g. sweeps/quick.yaml (to continue an experiment: vggbn resume DIR)")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SweepSpecError(f"{path}: no such sweep file.\nFix: check the path (the shipped ones are in "
                             f"sweeps/, e.g. sweeps/quick.yaml)") from None
    except UnicodeDecodeError:
        raise SweepSpecError(f"{path}: not a text file (not UTF-8).\nFix: give a YAML sweep file, "
                             f"e.g. sweeps/quick.yaml") from None
    except OSError as e:
        raise SweepSpecError(f"{path}: cannot be read ({e.strerror or e}).\nFix: check the path and "
                             f"its permissions") from None
    raw = _parse_yaml(text, str(path), "Fix: give a sweep file (a YAML mapping: name:, base:, space: ...), "
                                       "e.g. sweeps/quick.yaml")
    for k, v in (overrides or {}).items():
        _set_path(raw, k, v)
    try:
        spec = SweepSpec.model_validate(raw)
        if spec.warm_start:  # its export is read here, so a bad one fails before anything starts
            from vggbn.plan.earlier import warm_start

            warm_start(spec)
        return spec
    except ValidationError as e:
        msg = _spec_errors(e)
        raise SweepSpecError(f"{path}: {msg}\nFix: {_where_to_fix(e, msg, path, overrides)}") from None
    except ValueError as e:
        raise SweepSpecError(f"{path}: {e}\nFix: give warm_start an earlier export of this metric, "
                             f"or remove it") from None


def _where_to_fix(e: ValidationError, msg: str, path: Path, overrides: dict[str, Any] | None) -> str:
    """The --set that gave the bad value, else the keys in the file (the message says what to write)."""
    locs = [".".join(str(p) for p in err["loc"]) for err in e.errors()]
    sets = [k for k in overrides or {} if any(loc == k or loc.startswith(k + ".") for loc in locs)
            or ("." in k and k in msg)]  # a section key named by a spec-wide check: base.dropout=3 ...
    if sets:
        return "change " + ", ".join(f"--set {k}" for k in sets) + " as said above"
    keys = ", ".join(dict.fromkeys(loc for loc in locs if loc))
    return f"edit {keys + ' in ' if keys else ''}{path} as said above"


def _parse_yaml(text: str, where: str, fix: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SweepSpecError(f"{where}: not valid YAML: {' '.join(str(e).split())}\n{fix}") from None
    if not isinstance(raw, dict):
        what = "empty" if raw is None else {"list": "a list", "str": "plain text"}.get(
            type(raw).__name__, f"a {type(raw).__name__}")
        raise SweepSpecError(f"{where}: {what}, not a sweep spec (a YAML mapping: name:, base:, space: ...)."
                             f"\n{fix}")
    return raw


def stored_spec(text: str, where: str) -> SweepSpec:
    """An experiment's spec.yaml, read as data: its structure is checked, not today's trial-config
    rules (an old spec may hold a grid point that today's defaults would refuse)."""
    raw = _parse_yaml(text, where, "Fix: restore the file from the run that wrote it (or a copy of that "
                                   "sweep file)")
    try:
        return SweepSpec.model_validate(raw, context={"stored": True})
    except ValidationError as e:
        raise SweepSpecError(f"{where}: not a spec vggbn can read ({_spec_errors(e)}).\nFix: restore "
                             f"the file from the run that wrote it (or a copy of that sweep file)") from None


def _spec_errors(e: ValidationError) -> str:
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
            out.append(f"{loc}: {err['input']!r} is not allowed"
                       + (f" ({field.description})" if field and field.description else ""))
        else:
            out.append(f"{loc + ': ' if loc else ''}{msg}"
                       + (f" (got {err['input']!r})" if loc and "input" in err
                          and not isinstance(err["input"], dict) else ""))
    return "; ".join(out)
