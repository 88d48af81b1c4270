"""SweepSpec (YAML) -> ray.tune.Tuner; the trainable around `fit`; resume; export.

The only module that imports ray. A sweep's experiment lives in `<storage>/<name>/` (Ray's
files, `spec.yaml`) and its export beside it: `trials.parquet`, `epochs.parquet`,
`steps.parquet` (when steps were recorded), `probes.parquet` (when probes were taken), and
`surfaces.parquet` from `vggbn landscape`. Those files are the interface for analysis.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import ConfigError, TrialConfig, _suggest

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
EPOCH_METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "lr", "epoch_time_s", "images_per_s", "diverged")
STATUSES = ("completed", "early_stopped", "errored", "diverged", "incomplete")


class SweepSpecError(ValueError):
    """A sweep file that cannot run: names the file, the key path and what is wrong."""


# ---------------------------------------------------------------------- the spec
class Dim(BaseModel):
    """One searched TrialConfig key: exactly one of grid, choice, uniform, loguniform, randint."""

    model_config = ConfigDict(extra="forbid")
    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self):
        set_ = [k for k in ("grid", "choice", "uniform", "loguniform", "randint")
                if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint"
                             + (f" (got {', '.join(set_)})" if set_ else ""))
        kind = set_[0]
        val = getattr(self, kind)
        if kind in ("grid", "choice") and not val:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not val[0] < val[1]:
            raise ValueError(f"{kind} needs [low, high] with low < high (got {list(val)})")
        if kind == "loguniform" and val[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {val[0]})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint")
                    if getattr(self, k) is not None)

    @property
    def values(self):
        return getattr(self, self.kind)

    def probe_values(self) -> list[Any]:
        """Values that must each make a valid TrialConfig (all listed; the ends of ranges)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        if self.kind == "randint":  # tune.randint's upper bound is exclusive
            return [self.values[0], self.values[1] - 1]
        return list(self.values)

    def to_tune(self):
        from ray import tune

        v = self.values
        if self.kind == "grid":
            return tune.grid_search(list(v))
        if self.kind == "choice":
            return tune.choice(list(v))
        return getattr(tune, self.kind)(v[0], v[1])  # uniform, loguniform, randint

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA keeps 1/reduction_factor per rung")
    max_t: int | None = Field(None, ge=1, description="ASHA's last rung in epochs (default: epochs)")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also its torch threads)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction packs trials on one GPU")
    memory_gb: float = Field(0.0, ge=0, description="host RAM per trial in GiB (0 = no reservation): "
                             "Ray schedules by it and a CPU trial is capped to it, so a trial that "
                             "outgrows it errors alone instead of the kernel's OOM killer taking "
                             "the node's other trials")

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu}: above 1, GPUs per trial must be a whole number")
        return self


class SweepSpec(BaseModel):
    """One sweep file. `base` + `space` are TrialConfig keys, checked before anything starts."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="experiment directory name")
    description: str = Field("", description="what it runs, what it costs, what it should reach")
    metric: str = "test_acc"
    mode: Literal["max", "min"] = "max"
    base: dict[str, Any] = Field(default_factory=dict)
    cases: list[dict[str, Any]] = Field(default_factory=list, description="explicit setups (TrialConfig "
                                        "overrides of base), each crossed with the grid")
    space: dict[str, Dim] = Field(default_factory=dict)
    search: Literal["grid", "random", "optuna"] = "grid"
    seed: int | None = Field(0, description="seed of the random / Optuna TPE sampler")
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; random/optuna: trials")
    max_concurrent: int = Field(0, ge=0, description="trials at once (0 = as resources allow)")
    scheduler: Scheduler = Field(default_factory=Scheduler)
    resources: Resources = Field(default_factory=Resources)
    storage: str = Field("results", description="local directory or s3:// / gs:// URI")
    max_failures: int = Field(2, ge=0, description="retries of a failed trial (from its checkpoint)")
    checkpoint_every: int = Field(1, ge=1, description="epochs between trial checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="most recent checkpoints kept per trial")

    @model_validator(mode="after")
    def _check(self):
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
        for key, dim in self.space.items():
            if key not in TrialConfig.model_fields:
                raise ValueError(f"space.{key}: unknown TrialConfig key"
                                 f"{_suggest(key, TrialConfig.model_fields)}")
            if key in self.base:
                raise ValueError(f"space.{key}: also set in base; set it in one place")
            for i, v in enumerate(dim.probe_values()):
                try:
                    TrialConfig.from_flat({**self.base, key: v})
                except ConfigError as e:
                    raise ValueError(f"space.{key}.{dim.kind}[{i}]: {e}") from None
            if self.search == "optuna" and dim.kind == "grid":
                raise ValueError(f"space.{key}: grid cannot be mixed with search: optuna (Optuna "
                                 f"samples every dimension); use choice: {list(dim.values)}")
            if self.search == "grid" and dim.kind != "grid":
                raise ValueError(f"space.{key}: {dim.kind} needs search: random or optuna "
                                 f"(search: grid enumerates grid dimensions only)")
        self._check_distinct_grid_points()
        if self.metric not in METRICS:
            raise ValueError(f"metric: {self.metric!r} is not reported by a trial"
                             f"{_suggest(self.metric, METRICS)}; reported: {', '.join(METRICS)}")
        want = "max" if self.metric.endswith("_acc") else "min"
        if self.mode != want:
            raise ValueError(f"mode: {self.metric} should be mode: {want}")
        if self.metric.startswith("val_"):
            fracs = ([d.values for k, d in self.space.items() if k == "val_fraction"] or
                     [[base.val_fraction]])[0]
            if not all(f and f > 0 for f in fracs):
                raise ValueError(f"metric: {self.metric} needs a validation split: set "
                                 f"base.val_fraction (e.g. 0.1)")
        tunes = self.scheduler.type == "asha" or self.search == "optuna"
        if tunes and self.metric.startswith("test_"):
            raise ValueError(f"metric: {self.metric} would tune on the test set (scheduler "
                             f"{self.scheduler.type}, search {self.search}); use val_acc with "
                             f"base.val_fraction: 0.1 (model selection never looks at the test set)")
        if self.scheduler.type == "asha":
            epochs = max(self.trial_epochs())
            max_t = self.scheduler.max_t or epochs
            if max_t > epochs:
                raise ValueError(f"scheduler.max_t: {max_t} is beyond the trials' {epochs} epochs")
            if self.scheduler.grace_period > max_t:
                raise ValueError(f"scheduler.grace_period: {self.scheduler.grace_period} is "
                                 f"beyond max_t {max_t}")
        return self

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

    def trial_count(self) -> int:
        return (math.prod(len(v) for v in self.grid_dims().values()) * self.num_samples
                * max(1, len(self.cases)))

    def storage_uri(self) -> str:
        return self.storage if "://" in self.storage else str(Path(self.storage).absolute())

    def experiment_path(self) -> str:
        return f"{self.storage_uri().rstrip('/')}/{self.name}"

    def param_space(self) -> dict[str, Any]:
        space = {**self.base, **{k: d.to_tune() for k, d in self.space.items()}}
        if self.cases:
            from ray import tune

            space[CASE_KEY] = tune.grid_search([dict(c) for c in self.cases])
        return space


CASE_KEY = "_case"


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's trial config -> a flat TrialConfig dict (a case's keys override base's)."""
    return {**{k: v for k, v in config.items() if k != CASE_KEY}, **(config.get(CASE_KEY) or {})}


def _set_path(d: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise SweepSpecError(f"--set {path}: {k} is not a section")
    d[keys[-1]] = value


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file; `overrides` are dotted paths (base.epochs=3)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepSpecError(f"{path}: no such sweep file (the shipped ones are in sweeps/)") from None
    except yaml.YAMLError as e:
        raise SweepSpecError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: a sweep file is a mapping (name:, base:, space: ...)")
    for k, v in (overrides or {}).items():
        _set_path(raw, k, v)
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SweepSpecError(f"{path}: {_spec_errors(e)}") from None


def _spec_errors(e: ValidationError) -> str:
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            top = err["loc"][0] if len(err["loc"]) == 1 else None
            hint = _suggest(str(top), SweepSpec.model_fields) if top else ""
            out.append(f"{loc}: unknown key{hint}")
        elif err["type"] == "missing":
            out.append(f"{loc}: required")
        else:
            out.append(f"{loc + ': ' if loc else ''}{msg}"
                       + (f" (got {err['input']!r})" if loc and "input" in err
                          and not isinstance(err["input"], dict) else ""))
    return "; ".join(out)


def dry_run(spec: SweepSpec) -> str:
    """The trials a sweep would run, without starting Ray."""
    grid = spec.grid_dims()
    sampled = {k: d for k, d in spec.space.items() if d.kind != "grid"}
    combos = list(itertools.product(*grid.values())) or [()]
    lines = [f"sweep {spec.name}: {spec.trial_count()} trials "
             f"(search {spec.search}, scheduler {spec.scheduler.type}, metric {spec.metric} "
             f"{spec.mode}, {spec.resources.cpu:g} CPU + {spec.resources.gpu:g} GPU each) -> "
             f"{spec.experiment_path()}"]
    if spec.base:
        lines.append("base: " + ", ".join(f"{k}={v}" for k, v in spec.base.items()))
    n = 0
    for _ in range(spec.num_samples):
        for case, combo in itertools.product(spec.cases or [{}], combos):
            n += 1
            flags = ", ".join(f"{k}={v}" for k, v in [*case.items(), *zip(grid, combo)])
            flags += ("; " if flags and sampled else "") + ", ".join(
                f"{k} ~ {d.describe()}" for k, d in sampled.items())
            lines.append(f"  {n:3d}  {flags}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the trainable
class TrialOutOfMemory(RuntimeError):
    """A trial ran out of (GPU or host) memory: one line saying where, with what, and the fix."""


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _oom_message(cfg: TrialConfig, device, e: BaseException, resources: dict) -> str:
    import torch

    what = " ".join(str(e).split())
    what = what[what.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in what else what
    if device.type == "cuda":
        share = resources.get("GPU", 0)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        budget = f"resources.gpu={share or 1:g} of {total:.1f} GiB"
        more = "give each trial a larger resources.gpu (fewer trials per GPU)"
    else:
        mem = resources.get("memory", 0)
        budget = f"resources.memory_gb={mem / 2**30:g}" if mem else "resources.memory_gb unset"
        more = "raise resources.memory_gb" if mem else "run fewer trials per node"
    bf16 = ", use precision=bf16" if cfg.precision == "fp32" else ""
    return (f"out of memory on {device} ({budget}; batch_size={cfg.batch_size}, "
            f"eval_batch_size={cfg.eval_batch_size}, arch={cfg.arch}, width={cfg.width:g}, "
            f"precision={cfg.precision}): {what[:300]}. Fix: lower batch_size, eval_batch_size or "
            f"width{bf16}, or {more}. Only this trial stopped.")


def _cap_host_memory(nbytes: int) -> None:
    """Cap this process's private memory (RLIMIT_DATA) at what it uses now + nbytes, so a too-big
    CPU trial gets a clean allocation error. nbytes 0 lifts an earlier trial's cap (reused actors)."""
    try:
        import resource
    except ImportError:  # not on Linux/macOS: Ray's reservation still applies
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if not nbytes:
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        return
    try:
        status = Path("/proc/self/status").read_text()
        used = int(status.split("VmData:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return
    soft = used + int(nbytes)
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_state(fs, ckpt_path: str) -> dict:
    """One checkpoint's training state, checked against the sha256 written beside it."""
    import hashlib
    import io

    import torch

    with fs.open_input_stream(f"{ckpt_path}/meta.json") as f:
        meta = json.loads(f.read().decode())
    with fs.open_input_stream(f"{ckpt_path}/state.pt") as f:
        raw = f.read()
    want = meta.get("state_sha256")
    if want and hashlib.sha256(raw).hexdigest() != want:
        raise ValueError(f"state.pt is damaged ({len(raw)} bytes, sha256 does not match meta.json)")
    return torch.load(io.BytesIO(raw), weights_only=False, map_location="cpu")


def _resume_state(ckpt) -> dict | None:
    """The state of the newest readable checkpoint, from Ray's latest back through the older ones
    it keeps (keep_checkpoints). A corrupt or half-written one is skipped with a warning, and a
    restore-*.json note beside the trial's checkpoints says so (the export reads it); with none
    readable the trial restarts from epoch 0."""
    import pyarrow.fs as pafs

    fs, latest = ckpt.filesystem, ckpt.path.rstrip("/")
    trial_dir, name = latest.rsplit("/", 1)
    try:
        found = fs.get_file_info(pafs.FileSelector(trial_dir))
        older = sorted((i.path for i in found if i.type == pafs.FileType.Directory
                        and i.base_name.startswith("checkpoint_") and i.base_name < name), reverse=True)
    except OSError:
        older = []
    bad = []
    for path in [latest, *older]:
        try:
            state = _load_state(fs, path)
        except Exception as e:  # any unreadable checkpoint: try the previous one
            bad.append(f"{path.rsplit('/', 1)[1]}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        if bad:
            _restore_note(fs, trial_dir, bad, path.rsplit("/", 1)[1], state.get("epoch"))
        return state
    _restore_note(fs, trial_dir, bad, None, 0)
    return None


def _restore_note(fs, trial_dir: str, bad: list[str], used: str | None, epoch) -> None:
    text = (f"unreadable checkpoint(s) {'; '.join(bad)}; "
            + (f"resumed from {used} (epoch {epoch})" if used else "no readable checkpoint: restarted from epoch 0"))
    warnings.warn(f"vggbn: {text}", stacklevel=2)
    logging.getLogger("vggbn").warning(text)
    try:
        with fs.open_output_stream(f"{trial_dir}/restore-{time.time_ns()}.json") as f:
            f.write(json.dumps({"time": time.time(), "unreadable": bad, "resumed_from": used,
                                "epoch": epoch, "note": text}).encode())
    except OSError:
        pass


def vggbn_trial(config: dict[str, Any], checkpoint_every: int = 1) -> None:
    """One Ray Tune trial: TrialConfig from Ray's dict, fit, report every epoch, checkpoint."""
    import gc

    import ray
    import torch
    from ray import tune

    from .train import fit, provenance, resolve_device

    cfg = TrialConfig.from_flat(flat_config(config))  # an invalid config errors this trial alone
    resources = tune.get_context().get_trial_resources().required_resources
    if cfg.cpu_threads == 0:
        cfg = cfg.model_copy(update={"cpu_threads": max(1, int(resources.get("CPU", 1)))})
    device = resolve_device(cfg.device)
    gpu = resources.get("GPU", 0)
    if device.type == "cuda" and 0 < gpu < 1:  # packed trials: each keeps to its share
        torch.cuda.set_per_process_memory_fraction(gpu, device)
    _cap_host_memory(int(resources.get("memory", 0)) if device.type == "cpu" else 0)
    ckpt = tune.get_checkpoint()
    resume_state = _resume_state(ckpt) if ckpt is not None else None
    meta = {"provenance": provenance(device)}
    node_id = ray.get_runtime_context().get_node_id()

    def on_epoch(metrics: dict, state: dict) -> None:
        metrics = {**metrics, "node_id": node_id}  # which node ran each epoch (spot losses show)
        last = metrics["epoch"] >= cfg.epochs or metrics["diverged"]
        if metrics["epoch"] % checkpoint_every and not last:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            (Path(d) / "meta.json").write_text(json.dumps(
                {**meta, "epoch": metrics["epoch"], "state_sha256": _sha256(Path(d) / "state.pt"),
                 "params": sum(v.numel() for k, v in state["model"].items()
                               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))}))
            for key, name in (("steps", "steps"), ("probes", "probes"), ("history", "epochs")):
                if state[key]:
                    (Path(d) / f"{name}.json").write_text(json.dumps(state[key]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    oom = None
    try:
        fit(cfg, on_epoch=on_epoch, resume_state=resume_state)
    except Exception as e:
        if not _is_oom(e):
            raise
        oom = _oom_message(cfg, device, e, resources)
    if oom:  # raised outside the except block, so the failed step's tensors can be freed first
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrialOutOfMemory(oom)


def _trainable(spec: SweepSpec):
    from ray import tune

    fn = tune.with_parameters(vggbn_trial, checkpoint_every=spec.checkpoint_every)
    res = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.memory_gb:
        res["memory"] = int(spec.resources.memory_gb * 2**30)
    return tune.with_resources(fn, res)


def _reporter(spec: SweepSpec):
    from ray.tune import CLIReporter

    metrics = ["epoch", "train_loss"]
    metrics += ["val_acc"] if spec.metric.startswith("val_") or "val_fraction" in spec.base else []
    metrics += ["test_acc"]
    common = set.intersection(*(set(c) for c in spec.cases)) if spec.cases else set()
    params = list(spec.space) + sorted(f"{CASE_KEY}/{k}" for k in common)  # keys every case sets
    params = params or [k for k in ("preset", "seed") if k in spec.base]
    return CLIReporter(parameter_columns=params, metric_columns=metrics, max_report_frequency=30,
                       sort_by_metric=False)


# ---------------------------------------------------------------------- ASHA across a resume
def _define_ray_classes() -> None:
    """ASHA whose rung records survive a resume. Ray 2.60 leaves the scheduler out of the
    experiment checkpoint, so a restored ASHA starts with empty rungs and promotes or stops
    differently. The state rides in a Tune Callback's get_state/set_state instead: Ray saves it
    in the same snapshot as the trials' states (consistent with them) and restores it before the
    trials are re-added. Scheduler and callback are pickled together into tuner.pkl, so after
    Tuner.restore the callback still holds the very scheduler the controller uses.
    Defined on first use (module __getattr__) so importing vggbn.sweep does not import Ray."""
    from ray.tune import Callback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    def snapshot_errored(tune_controller, trial) -> None:
        # Ray 2.60 re-serialises a trial into the experiment snapshot only when it is marked; a
        # trial whose node died is no longer tracked with an actor, so its final ERROR is never
        # marked and the snapshot keeps it RUNNING (export said "incomplete", resume re-ran it).
        # on_trial_error comes just before the status change; the snapshot is written after it.
        mark = getattr(tune_controller, "_mark_trial_to_checkpoint", None)
        if mark is not None:
            mark(trial)

    class FIFO(FIFOScheduler):
        def on_trial_error(self, tune_controller, trial) -> None:
            super().on_trial_error(tune_controller, trial)
            snapshot_errored(tune_controller, trial)

    class PersistentASHA(ASHAScheduler):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._stopped: set[str] = set()  # decided STOP: stays stopped if re-run after a crash

        def state(self) -> dict:
            return {"rungs": [[[m, dict(rec)] for m, rec in b._rungs] for b in self._brackets],
                    "trial_bracket": {t: self._brackets.index(b) for t, b in self._trial_info.items()},
                    "stopped": sorted(self._stopped), "num_stopped": self._num_stopped}

        def load(self, state: dict) -> None:
            for b, rungs in zip(self._brackets, state["rungs"]):
                for (milestone, rec), (m, saved) in zip(b._rungs, rungs):
                    if milestone != m:
                        raise ValueError(f"ASHA rung {m} in the saved state, {milestone} in the spec")
                    rec.clear()
                    rec.update(saved)
            self._trial_info = {t: self._brackets[i] for t, i in state["trial_bracket"].items()}
            self._stopped = set(state["stopped"])
            self._num_stopped = state["num_stopped"]

        def on_trial_add(self, tune_controller, trial) -> None:
            if trial.trial_id not in self._trial_info:  # a restored or retried trial keeps its bracket
                super().on_trial_add(tune_controller, trial)

        def on_trial_error(self, tune_controller, trial) -> None:
            super().on_trial_error(tune_controller, trial)
            snapshot_errored(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            if trial.trial_id in self._stopped:
                return TrialScheduler.STOP
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP:
                self._stopped.add(trial.trial_id)
            return action

    class SchedulerState(Callback):
        def __init__(self, scheduler: PersistentASHA):
            self.scheduler = scheduler

        def get_state(self) -> dict:
            return {"asha": self.scheduler.state()}

        def set_state(self, state: dict) -> None:
            self.scheduler.load(state["asha"])

    for cls in (FIFO, PersistentASHA, SchedulerState):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__  # pickled by reference
        globals()[cls.__name__] = cls


def __getattr__(name: str):
    if name in ("FIFO", "PersistentASHA", "SchedulerState"):
        _define_ray_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_tuner(spec: SweepSpec):
    from ray import tune

    scheduler, callbacks = __getattr__("FIFO")(), []
    if spec.scheduler.type == "asha":
        scheduler = __getattr__("PersistentASHA")(
            time_attr="epoch", max_t=spec.scheduler.max_t or max(spec.trial_epochs()),
            grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)
        callbacks.append(__getattr__("SchedulerState")(scheduler))
    search_alg = None
    if spec.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
    elif spec.search == "random":
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=spec.seed)
    return tune.Tuner(
        _trainable(spec),
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent or None,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                                    reuse_actors=True),  # no process start + torch import per trial
        run_config=tune.RunConfig(
            name=spec.name, storage_path=spec.storage_uri(),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            callbacks=callbacks, progress_reporter=_reporter(spec), verbose=1),
    )


def _init_ray(address: str | None) -> bool:
    """Connect to a cluster or start a local Ray; True when it started a local one."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the table with the swept flags
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # resume loses at most ~5 s
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                          "log_to_driver": False}
    ray.init(address=address, **kw) if address else ray.init(**kw)
    return not address


def _check_gpus(spec: SweepSpec, local: bool) -> None:
    """A local Ray without GPUs would leave GPU trials pending forever (a cluster may autoscale)."""
    import ray

    if local and spec.resources.gpu > 0 and not ray.cluster_resources().get("GPU"):
        raise SweepSpecError(f"resources.gpu: {spec.resources.gpu:g}, but this machine has no GPU "
                             f"visible to Ray.\nFix: --set resources.gpu=0 to run on the CPU, or "
                             f"--address a cluster with GPU workers.")


def prepare_data(spec: SweepSpec) -> SweepSpec:
    """The driver fetches/decodes each dataset once before trials start; trials get an absolute
    data_dir (the per-node file lock in data.prepare stays as the fallback)."""
    from . import data

    datasets = (list(spec.space["dataset"].values) if "dataset" in spec.space
                else [TrialConfig.from_flat({**spec.base, **c}).dataset for c in spec.cases or [{}]])
    base = dict(spec.base)
    if any(d != "synthetic" for d in datasets) and not base.get("data_dir"):
        base["data_dir"] = data.default_data_dir()
    for d in datasets:
        if d != "synthetic":
            data.prepare(d, base.get("data_dir"))
    return spec.model_copy(update={"base": base})


def _experiment_exists(path: str) -> bool:
    return "://" not in path and any(Path(path).glob("experiment_state*.json"))


def _write_text(uri: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(uri)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _wait_for_final_upload(timeout: float = 600.0) -> None:
    """Wait for Ray's last upload of the experiment state to storage. In Ray 2.60 the snapshot
    forced at the end of fit() waits for the previous upload, then starts the last one in a
    daemon thread that nothing joins: an export right after fit() could read the state before
    it, and a process that exits at once could leave a stale state in S3."""
    import threading

    for t in threading.enumerate():
        target = getattr(t, "_target", None)
        if t is not threading.current_thread() and "_BackgroundProcess" in getattr(target, "__qualname__", ""):
            t.join(timeout)


def run_sweep(spec: SweepSpec, *, address: str | None = None, prepare: bool = True) -> dict:
    """Run a sweep to the end, then export. Returns the export's summary."""
    if _experiment_exists(spec.experiment_path()):
        raise SweepSpecError(f"{spec.experiment_path()} already holds a sweep named {spec.name}.\n"
                             f"Fix: `vggbn resume {spec.experiment_path()}` to continue it, or "
                             f"--set name=OTHER for a new one.")
    if prepare:
        spec = prepare_data(spec)
    local = _init_ray(address)
    _check_gpus(spec, local)
    _write_text(spec.experiment_path() + "/spec.yaml",
                yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    t0 = time.time()
    build_tuner(spec).fit()
    _wait_for_final_upload()
    return export(spec.experiment_path(), wall_time_s=time.time() - t0)


def resume_sweep(path: str, *, address: str | None = None) -> dict:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from their
    last checkpoint, errored ones are retried (from their checkpoint)."""
    from ray import tune

    spec = _spec_of(path)
    _init_ray(address)
    t0 = time.time()
    tuner = tune.Tuner.restore(spec.experiment_path() if "://" in path else str(Path(path).absolute()),
                               trainable=_trainable(spec), resume_unfinished=True,
                               resume_errored=True)
    tuner.fit()
    _wait_for_final_upload()
    return export(path, wall_time_s=time.time() - t0)


def _spec_of(path: str) -> SweepSpec:
    import pyarrow.fs as pafs

    uri = path if "://" in path else str(Path(path).absolute())
    fs, p = pafs.FileSystem.from_uri(uri)
    try:
        with fs.open_input_stream(p.rstrip("/") + "/spec.yaml") as f:
            raw = yaml.safe_load(f.read().decode())
    except (FileNotFoundError, OSError):
        raise SweepSpecError(f"{path}: no spec.yaml here, so it is not a vggbn sweep directory "
                             f"(expected <storage>/<name>/ as written by `vggbn sweep`)") from None
    spec = SweepSpec.model_validate(raw)
    # where it is now is where it lives (the directory may have been moved or downloaded)
    storage, name = uri.rstrip("/").rsplit("/", 1)
    return spec.model_copy(update={"storage": storage, "name": name})


# ---------------------------------------------------------------------- export
def _trial_status(trial, last: dict, epochs: int) -> str:
    if trial.status == "ERROR":
        return "errored"
    if last.get("diverged"):
        return "diverged"
    if trial.status == "TERMINATED":
        return "completed" if last.get("epoch", 0) >= epochs else "early_stopped"
    return "incomplete"


def _read_checkpoint(ckpt) -> tuple[dict, list, list, list]:
    """(meta, steps, probes, epochs) from a trial checkpoint's JSON files."""
    if ckpt is None:
        return {}, [], [], []
    try:
        with ckpt.as_directory() as d:
            def read(name, default):
                f = Path(d) / name
                return json.loads(f.read_text()) if f.is_file() else default
            return (read("meta.json", {}), read("steps.json", []), read("probes.json", []),
                    read("epochs.json", []))
    except Exception as e:  # an unreadable checkpoint must not stop the export
        warnings.warn(f"checkpoint {ckpt.path}: {e}", stacklevel=2)
        return {}, [], [], []


def export(path: str, wall_time_s: float | None = None) -> dict:
    """Write trials/epochs/steps.parquet next to the Ray experiment. Returns a summary."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from ray.tune import ExperimentAnalysis

    from .train import provenance

    uri = path if "://" in path else str(Path(path).absolute())
    quiet = logging.getLogger("ray.tune")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # trials that never started have no results yet: not news
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ea = ExperimentAnalysis(uri)
    finally:
        quiet.setLevel(level)
    driver = provenance()
    spec = _spec_of(path)
    rows, epoch_frames, step_rows, probe_rows = [], [], [], []
    for trial in ea.trials:
        tid = trial.trial_id
        try:
            cfg = TrialConfig.from_flat(flat_config(trial.config)).to_flat()
            epochs = cfg["epochs"]
        except ConfigError as e:
            cfg, epochs = dict(trial.config), 0
            cfg["config_error"] = str(e)
        df = ea.trial_dataframes.get(tid)
        if df is None or df.empty:
            df = pd.DataFrame(columns=list(EPOCH_METRICS))
        df = df[[c for c in df.columns if c in EPOCH_METRICS or c in ("time_total_s", "timestamp", "node_id")]]
        meta, steps, probes, history = _read_checkpoint(trial.checkpoint)
        if "epoch" in df:
            df = df.drop_duplicates("epoch", keep="last")
            # the checkpoint's own history fills epochs whose results Ray lost (a node dying
            # between a report and the driver logging it); those rows have no node_id/timestamp
            lost = [h for h in history if h.get("epoch") not in set(df["epoch"])]
            if lost:
                df = pd.concat([df, pd.DataFrame(lost)[[c for c in EPOCH_METRICS if c in lost[0]]]],
                               ignore_index=True)
            df = df.sort_values("epoch", ignore_index=True)
        last = df.iloc[-1].to_dict() if len(df) else {}
        status = _trial_status(trial, last, epochs)
        sel = "val_acc" if "val_acc" in df and df["val_acc"].notna().any() else "test_acc"
        best = df.loc[df[sel].idxmax()].to_dict() if sel in df and df[sel].notna().any() else {}
        lr_ = trial.last_result or {}
        row = {"trial_id": tid, "sweep": spec.name, "status": status, **cfg,
               **{("final_lr" if m == "lr" else m): last.get(m) for m in EPOCH_METRICS},
               "epochs_run": int(len(df)),
               "best_epoch": best.get("epoch"), "best_test_acc": best.get("test_acc"),
               "best_val_acc": best.get("val_acc"), "params": meta.get("params"),
               "wall_time_s": lr_.get("time_total_s"), "node": lr_.get("node_ip"),
               "hostname": lr_.get("hostname"), "node_id": lr_.get("node_id"),
               "failures": int(getattr(trial, "num_failures", 0) or 0),
               "restore_notes": _restore_notes(trial),
               "error": _error_text(trial) if status == "errored" else None}
        prov = meta.get("provenance") or {**driver, "device": None, "device_name": None}
        row.update({f"prov_{k}": v for k, v in prov.items()})
        rows.append(row)
        if len(df):
            epoch_frames.append(df.assign(trial_id=tid))
        step_rows += [{"trial_id": tid, **s} for s in steps]
        probe_rows += [{"trial_id": tid, **p} for p in probes]

    trials = pd.DataFrame(rows)
    fs, base = pafs.FileSystem.from_uri(uri)

    def write(df: pd.DataFrame, name: str) -> None:
        table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"vggbn": json.dumps({"spec": spec.model_dump(mode="json"),
                                                                     "driver": driver}).encode()})
        pq.write_table(table, f"{base}/{name}", filesystem=fs)

    write(trials, "trials.parquet")
    epochs_df = (pd.concat(epoch_frames, ignore_index=True) if epoch_frames
                 else pd.DataFrame(columns=["trial_id", *EPOCH_METRICS]))
    cols = ["trial_id"] + [c for c in epochs_df.columns if c != "trial_id"]
    write(epochs_df[cols], "epochs.parquet")
    if step_rows:
        write(pd.DataFrame(step_rows), "steps.parquet")
    if probe_rows:
        write(pd.DataFrame(probe_rows), "probes.parquet")
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    notes = {r["trial_id"]: r["restore_notes"] for r in rows if r["restore_notes"]}
    errors = {r["trial_id"]: r["error"] for r in rows if r["error"]}
    return {"path": uri, "trials": len(trials), "status": counts, "wall_time_s": wall_time_s,
            "steps": len(step_rows), "probes": len(probe_rows), "restore_notes": notes,
            "errors": errors, "failures": int(sum(r["failures"] for r in rows))}


def _restore_notes(trial) -> str | None:
    """What the trial's restore-*.json notes say (a checkpoint it could not read), oldest first."""
    import pyarrow.fs as pafs

    try:
        fs = trial.storage.storage_filesystem
        found = fs.get_file_info(pafs.FileSelector(trial.storage.trial_fs_path))
        notes = []
        for info in sorted(found, key=lambda i: i.base_name):
            if info.base_name.startswith("restore-") and info.base_name.endswith(".json"):
                with fs.open_input_stream(info.path) as f:
                    notes.append(json.loads(f.read().decode())["note"])
        return " | ".join(notes) or None
    except Exception:  # notes are informative; a sweep exports without them
        return None


def _error_text(trial) -> str | None:
    """The last line of the trial's error (Ray keeps error.txt in the trial's storage dir)."""
    try:
        fs = trial.storage.storage_filesystem
        with fs.open_input_stream(f"{trial.storage.trial_fs_path}/error.txt") as f:
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:500] if lines else None
    except Exception:
        return None


# ---------------------------------------------------------------------- landscape
def _ray_map(fn, args: tuple, parts: list) -> list:
    """Run fn(*args, part) for each part as Ray tasks; the shared args go to the object store once."""
    import ray

    refs = [ray.put(a) for a in args]
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(*refs, part) for part in parts])


def landscape(path: str, *, trial_ids: list[str] | None = None, resolution: int = 21,
              samples: int = 2048, seed: int = 0, address: str | None = None) -> dict:
    """Li et al. surfaces around the final checkpoint of each (chosen) trial -> surfaces.parquet.
    Grid points run as Ray tasks when a cluster is given (--address / RAY_ADDRESS)."""
    import pandas as pd
    import pyarrow.fs as pafs
    import torch
    from ray.tune import ExperimentAnalysis

    from .landscape import surfaces

    uri = path if "://" in path else str(Path(path).absolute())
    _spec_of(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ea = ExperimentAnalysis(uri)
    map_chunks = None
    if address or os.environ.get("RAY_ADDRESS"):
        _init_ray(address)
        map_chunks = _ray_map
    known = {t.trial_id for t in ea.trials}
    unknown = sorted(set(trial_ids or []) - known)
    if unknown:
        raise SweepSpecError(f"{path}: no trial {', '.join(unknown)} (trials: {', '.join(sorted(known))})")
    frames, skipped = [], []
    for trial in ea.trials:
        if trial_ids and trial.trial_id not in trial_ids:
            continue
        last = trial.last_result or {}
        if trial.checkpoint is None or last.get("diverged"):
            skipped.append(trial.trial_id)
            continue
        with trial.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False, map_location="cpu")
        cfg = TrialConfig.from_flat(flat_config(trial.config)).to_flat()
        df = surfaces(cfg, state["model"], resolution=resolution, samples=samples, seed=seed,
                      map_chunks=map_chunks)
        frames.append(df.assign(trial_id=trial.trial_id, epoch=state["epoch"]))
    if not frames:
        raise SweepSpecError(f"{path}: no trial with a usable checkpoint (skipped: {', '.join(skipped)})")
    out = pd.concat(frames, ignore_index=True)
    fs, base = pafs.FileSystem.from_uri(uri)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(out, preserve_index=False), f"{base}/surfaces.parquet",
                   filesystem=fs)
    return {"path": uri, "trials": len(frames), "skipped": skipped, "points": len(out)}
