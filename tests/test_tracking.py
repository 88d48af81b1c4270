"""Experiment tracking: one small sweep logs to TensorBoard, MLflow (a local SQLite store) and W&B
(offline) at once, then `vggbn extend` resumes it through Ray's restored tuner; the tests read each
tracker's own files back and compare them with the sweep's export. A missing extra, a bad value, or
W&B online without a key fail before anything is claimed."""

from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import tiny, vggbn
from vggbn.plan.load import load_spec
from vggbn.spec.model import SweepSpecError

pytestmark = pytest.mark.filterwarnings("ignore:.*noload:DeprecationWarning")  # mlflow's SQLAlchemy store
CASES = [{"bn": False}, {"bn": True, "dropout": 0.1}]  # the second case sets a key the first does not


def _spec(root: Path, **over) -> dict:
    return {"name": "tracked", "storage": str(root), "metric": "test_acc",
            "base": tiny(val_fraction=0.25, synthetic_size=256), "cases": CASES,
            "space": {"seed": {"grid": [0]}}, "resources": {"cpu": 1},
            "tracking": {"mlflow": f"sqlite:///{root}/mlflow.db", "wandb": "vggbn-tests"}, **over}


def _wandb_env(root: Path) -> dict:
    return {"WANDB_MODE": "offline", "WANDB_DIR": "", "WANDB_CONFIG_DIR": str(root / "wbcfg"),
            "WANDB_CACHE_DIR": str(root / "wbcache"), "WANDB_DATA_DIR": str(root / "wbdata"), "WANDB_SILENT": "true",
            "VGGBN_CACHE_DIR": str(root / "cache"), "VGGBN_DATA_DIR": str(root / "datasets")}


def _mlflow_runs(root: Path) -> dict[str, dict]:
    """trial id -> {run, params, tags, history: {metric: [(step, value)]}} from the SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("tracked")
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        history = {m: sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, m))
                   for m in ("val_acc", "test_acc")}
        out[run.data.tags["vggbn.trial_id"]] = {"run": run.info.run_id, "status": run.info.status,
                                                "params": run.data.params, "tags": run.data.tags, "history": history}
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """The sweep (2 cases x seed 0, 2 epochs), the MLflow runs it left, then `vggbn extend` adding seed 1."""
    root = tmp_path_factory.mktemp("tracked")
    path = root / "tracked.yaml"
    path.write_text(yaml.safe_dump(_spec(root)))
    r = vggbn("sweep", path, env=_wandb_env(root), cwd=root)  # W&B's offline runs: ./wandb/
    assert r.returncode == 0, r.stderr[-3000:]
    before = _mlflow_runs(root)
    r = vggbn("extend", root / "tracked", "--set", "space.seed.grid=[0,1]", env=_wandb_env(root), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, before


def _export(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    exp = root / "tracked"
    return pd.read_parquet(exp / "trials.parquet"), pd.read_parquet(exp / "epochs.parquet")


def _history(epochs: pd.DataFrame, trial_id: str, metric: str) -> list[tuple[int, float]]:
    e = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
    return list(zip(e["epoch"].astype(int), e[metric].astype(float)))


@pytest.mark.ray
def test_mlflow_has_one_run_per_trial_with_params_tags_and_epoch_metrics(tracked):
    root, before = tracked
    trials, epochs = _export(root)
    runs = _mlflow_runs(root)
    assert len(trials) == 4 and set(runs) == set(trials["trial_id"])  # the extension's trials joined
    for t in trials.itertuples():
        run = runs[t.trial_id]
        assert run["status"] == "FINISHED"
        p = run["params"]
        assert (p["bn"], float(p["dropout"]), int(p["seed"])) == (str(t.bn), t.dropout, t.seed)
        assert run["tags"]["vggbn.variant"] == f"bn={t.bn}, dropout={t.dropout}"
        assert run["tags"]["vggbn.seed"] == str(t.seed)
        for m in ("val_acc", "test_acc"):  # step = epoch, values as exported
            got, want = run["history"][m], _history(epochs, t.trial_id, m)
            assert [s for s, _ in got] == [s for s, _ in want] == [1, 2]
            assert [v for _, v in got] == pytest.approx([v for _, v in want])
    for trial_id, run in before.items():  # the extension left the first runs as they were
        assert runs[trial_id]["run"] == run["run"] and runs[trial_id]["history"] == run["history"]


def _wandb_records(path: Path):
    """The records of a .wandb file (LevelDB's log format after a 7-byte header: 32 KiB blocks of
    chunks with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb-core writes history keys as nested_key


@pytest.mark.ray
def test_wandb_offline_runs_hold_each_trials_config_and_metrics(tracked):
    import json

    root, _ = tracked
    trials, epochs = _export(root)
    files = {f.parent.name.rsplit("-", 1)[1]: f for f in (root / "wandb").glob("offline-run-*/run-*.wandb")}
    assert set(files) == set(trials["trial_id"])  # W&B run id = trial id
    assert not list((root / "tracked").glob("trial_*/wandb"))  # not in Ray's trial folders (copied too early)
    for t in trials.itertuples():
        records = list(_wandb_records(files[t.trial_id]))
        kinds = [r.WhichOneof("record_type") for r in records]
        assert "exit" in kinds  # wandb.finish() ran
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {_item_key(i): json.loads(i.value_json) for i in run.config.update}
        assert run.project == "vggbn-tests" and run.run_group == "tracked"
        assert (config["bn"], config["dropout"], config["seed"]) == (t.bn, t.dropout, t.seed)
        assert list(run.tags) == [f"bn={t.bn}, dropout={t.dropout}", f"seed={t.seed}"]
        history = [{_item_key(i): json.loads(i.value_json) for i in r.history.item} for r in records
                   if r.WhichOneof("record_type") == "history"]
        for m in ("val_acc", "test_acc"):
            want = _history(epochs, t.trial_id, m)
            assert [h["epoch"] for h in history] == [s for s, _ in want] == [1, 2]
            assert [h[m] for h in history] == pytest.approx([v for _, v in want])


def _tb_events(trial_dir: Path):
    """The Event protos of a trial's TensorBoard files (TFRecord: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    for f in sorted(trial_dir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            yield event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4


@pytest.mark.ray
def test_tensorboard_has_per_epoch_scalars_and_one_hparams_column_set(tracked):
    from tensorboardX.proto import plugin_hparams_pb2

    root, _ = tracked
    trials, epochs = _export(root)
    columns = set()
    for t in trials.itertuples():
        scalars, hparams = {}, {}
        for ev in _tb_events(root / "tracked" / f"trial_{t.trial_id}"):
            for v in ev.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    hparams[v.tag] = plugin_hparams_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                elif v.tag.startswith("ray/tune/"):
                    scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
        for m in ("val_acc", "test_acc"):  # float32 in the event file
            got, want = scalars[f"ray/tune/{m}"], _history(epochs, t.trial_id, m)
            assert [s for s, _ in got] == [s for s, _ in want] == [1, 2]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
        start = hparams["_hparams_/session_start_info"].session_start_info.hparams
        assert (start["bn"].bool_value, start["dropout"].number_value, start["seed"].number_value) == (
            t.bn, pytest.approx(t.dropout), t.seed)  # the resolved dropout (0.0) where a case leaves it out
        experiment = hparams["_hparams_/experiment"].experiment
        columns.add(tuple(h.name for h in experiment.hparam_infos))
        assert {"ray/tune/val_acc", "ray/tune/test_acc"} <= {m.name.tag for m in experiment.metric_infos}
    assert columns == {("bn", "dropout", "seed")}  # every trial: the same columns (Ray's own: _case/...)


@pytest.mark.parametrize("key", ["mlflow", "wandb"])
def test_a_missing_package_fails_before_anything_is_claimed(tmp_path, key):
    hide = tmp_path / "hide" / key
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{key}'\", name='{key}')\n")
    spec = _spec(tmp_path, tracking={key: "sqlite:///x.db" if key == "mlflow" else "proj"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = vggbn("sweep", tmp_path / "s.yaml", env={"PYTHONPATH": str(hide.parent), "WANDB_MODE": "offline"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"tracking.{key}: the {key} package is not installed" in r.stderr
    assert f"Fix: pip install 'vggbn[{key}]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "tracked").exists()


def test_wandb_online_without_an_api_key_fails_before_anything_is_claimed(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_spec(tmp_path, tracking={"wandb": "proj"})))
    env = {"HOME": str(tmp_path), "WANDB_MODE": "", "WANDB_API_KEY": "", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
           "NETRC": str(tmp_path / "netrc")}
    r = vggbn("sweep", tmp_path / "s.yaml", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "tracking.wandb: no W&B API key" in r.stderr and "WANDB_MODE=offline" in r.stderr
    assert not (tmp_path / "tracked").exists()


def test_bad_tracking_values_exit_2_naming_the_key(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_spec(tmp_path, tracking={"mlflow": 3})))
    r = vggbn("sweep", tmp_path / "s.yaml", "--dry-run")
    assert r.returncode == 2 and "tracking.mlflow" in r.stderr and "Fix:" in r.stderr, r.stderr
    for tracking, said in [({"neptune": "x"}, "tracking.neptune: unknown key"),
                           ({"mlflow": "ftp://host/x"}, "MLflow does not log to ftp:// URIs"),
                           ({"mlflow": "sqlite://x.db"}, "sqlite:///PATH"),
                           ({"mlflow": "http://"}, "no host"),
                           ({"wandb": "my project"}, "not a W&B project name"),
                           ({"wandb": ["p"]}, "tracking.wandb")]:
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(_spec(tmp_path, tracking=tracking)))
        with pytest.raises(SweepSpecError, match="tracking") as e:
            load_spec(tmp_path / "s.yaml")
        assert said in str(e.value) and "Fix:" in str(e.value)
