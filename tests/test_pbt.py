"""Population Based Training: the values in force after an exploit (the optimizer's lr too), the
record of donors and schedules in the export, the spec's rules, and the report's schedule figure."""

import io
import json
import math

import pandas as pd
import pytest
import torch
import yaml

from conftest import SWEEPS, ray_worker, tiny, vggbn, vggbn_main
from vggbn.config import TrialConfig
from vggbn.plan.load import load_spec
from vggbn.spec.model import SweepSpecError
from vggbn.train import fit, lr_factor

HI = 0.02  # the top of the lr range: a perturbed value is clipped to it

TINY = {
    "name": "pbt_tiny", "metric": "val_acc", "mode": "max",
    "base": tiny(epochs=3, val_fraction=0.1, record_steps=True),
    "space": {"lr": {"loguniform": [1.0e-3, HI]}},
    "search": "random", "seed": 0, "num_samples": 2,
    # 2 trials, the bottom half clones the top half at every epoch, all at once: an exploit at
    # epochs 1 and 2 whatever the scores; the new lr is the donor's x 2 (no resampling)
    "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                  "resample_probability": 0.0, "perturbation_factors": [2.0], "synch": True},
    "checkpoint_every": 1, "keep_checkpoints": 4, "resources": {"cpu": 1},
}


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("pbt")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    env = {"VGGBN_CACHE_DIR": str(root / "cache"), "VGGBN_DATA_DIR": str(root / "datasets")}
    with ray_worker(ray_cluster, env) as address:
        r = vggbn("sweep", root / "tiny.yaml", "--set", f"storage={root}", "--address", address, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = root / "pbt_tiny"
    return exp, pd.read_parquet(exp / "epochs.parquet"), pd.read_parquet(exp / "trials.parquet")


def test_after_an_exploit_the_new_values_are_in_force_and_the_weights_are_the_donors(pbt_run):
    exp, epochs, trials = pbt_run
    exploits = epochs[epochs["pbt_exploit"]]
    assert len(exploits) >= 2  # synch, quantile 0.5, 2 trials: one per perturbation point
    assert int(trials["pbt_exploits"].sum()) == len(exploits)
    by = epochs.set_index(["trial_id", "epoch"])
    for _, x in exploits.iterrows():
        donor = by.loc[(x["pbt_donor_trial"], int(x["pbt_donor_epoch"]))]
        assert x["pbt_donor_trial"] != x["trial_id"] and int(x["pbt_donor_epoch"]) == x["epoch"] - 1
        assert x["pbt_lr"] == pytest.approx(min(2 * donor["pbt_lr"], HI), rel=1e-12)
        assert x["pbt_lr"] != donor["pbt_lr"]
        # the optimizer's own lr (read from its param_groups during the epoch; constant schedule)
        assert x["lr"] == pytest.approx(x["pbt_lr"], rel=1e-12)
    first = exploits.sort_values("epoch").drop_duplicates("trial_id")
    for _, x in first.iterrows():  # a trial's first exploit changes its own lr
        assert by.loc[(x["trial_id"], x["epoch"] - 1), "lr"] != pytest.approx(x["lr"], rel=1e-6)
    # the steps (the final weights' lineage): the first step after the last exploit ran at the new lr
    steps = pd.read_parquet(exp / "steps.parquet")
    last = exploits.sort_values("epoch").drop_duplicates("trial_id", keep="last")
    for _, x in last.iterrows():
        s = steps[(steps["trial_id"] == x["trial_id"]) & (steps["epoch"] == x["epoch"])].sort_values("step")
        assert s["lr"].iloc[0] == pytest.approx(x["pbt_lr"], rel=1e-12)
        # the weights came from the donor: its state (weights and history in one sha256-checked
        # file) holds the donor's own report of donor_epoch
        (ckpt,) = sorted((exp / f"trial_{x['trial_id']}").glob("checkpoint_*"))[-1:]
        history = {h["epoch"]: h for h in json.loads((ckpt / "epochs.json").read_text())}
        donor = by.loc[(x["pbt_donor_trial"], int(x["pbt_donor_epoch"]))]
        mine = history[int(x["pbt_donor_epoch"])]
        assert (mine["val_loss"], mine["train_loss"]) == (donor["val_loss"], donor["train_loss"])
        record = json.loads((exp / f"trial_{x['trial_id']}" / "vggbn-pbt.json").read_text())
        seg = record["segments"][-1]
        assert seg["donor_trial"] == x["pbt_donor_trial"] and len(seg["donor_sha256"]) == 64
    # the trial's stored config is the one it started with; trials.parquet says it was a schedule
    for _, t in trials.iterrows():
        sched = json.loads(t["pbt_schedule"])
        assert sched[0]["donor_trial"] is None and sched[0]["values"]["lr"] == t["lr"]
        assert len(epochs[epochs["trial_id"] == t["trial_id"]]) == 3 and t["status"] == "completed"


def test_fit_resumed_under_other_values_uses_them_from_the_first_step():
    """A PBT exploit: another run's state (lr A, its weight decay and momentum), config B."""
    a = tiny(epochs=2, optimizer="sgd", lr=0.05, weight_decay=0.0, momentum=0.9, schedule="cosine",
             record_steps=True)
    b = {**a, "lr": 0.004, "weight_decay": 0.01, "momentum": 0.5, "label_smoothing": 0.1}
    saved = {}

    def keep(metrics, state):  # as a checkpoint keeps it: a copy, not the live tensors
        buf = io.BytesIO()
        torch.save(state, buf)
        saved[metrics["epoch"]] = buf.getvalue()

    fit(a, on_epoch=keep)
    state = torch.load(io.BytesIO(saved[1]), weights_only=True)
    seen = {}

    def look(metrics, s):
        seen.update(metrics=metrics, opt=s["optimizer"]["param_groups"][0], sched=s["scheduler"])

    r = fit(b, on_epoch=look, resume_state=state)
    spe = len(r["steps"]) // 2
    first = [s for s in r["steps"] if s["epoch"] == 2][0]
    cb = TrialConfig.from_flat(b)
    assert first["lr"] == pytest.approx(0.004 * lr_factor(cb, spe, spe), rel=1e-12)
    assert seen["metrics"]["lr"] == pytest.approx(0.004 * lr_factor(cb, 2 * spe - 1, spe), rel=1e-12)
    assert seen["opt"]["weight_decay"] == 0.01 and seen["opt"]["momentum"] == 0.5
    assert seen["opt"]["initial_lr"] == 0.004 and seen["sched"]["base_lrs"] == [0.004]
    # the weights did continue from A's state (epoch 1 is A's, not re-trained)
    assert r["history"][0] == state["history"][0] and len(r["history"]) == 2
    assert all(math.isfinite(s["train_loss"]) for s in r["steps"])


def _spec(tmp_path, **changes):
    raw = yaml.safe_load((SWEEPS / "pbt.yaml").read_text())
    for path, value in changes.items():
        d = raw
        *keys, last = path.split(".")
        for k in keys:
            d = d[k]
        d[last] = value
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("changes, says", [
    ({"metric": "test_acc"}, "would tune on the test set"),
    ({"space.arch": {"choice": ["vgg_a", "vgg_b"]}, "scheduler.perturb": ["lr", "arch"]},
     "arch changes the model's layers"),
    ({"scheduler.perturbation_interval": 3}, "checkpoint_every: 2 does not divide"),
    ({"scheduler.perturbation_interval": 8, "checkpoint_every": 1}, "nothing would be perturbed"),
    ({"search": "optuna"}, "use search: random"),
    ({"scheduler.perturb": ["momentum"]}, "momentum is not searched in space"),
    ({"keep_checkpoints": 2}, "use 4"),
    ({"num_samples": 1}, "at least 2 trials"),
    ({"resources.workers": 2}, "data-parallel trials (2 workers) is not supported"),
    ({"cases": [{"bn": False}, {"bn": True}]}, "run one pbt sweep per case"),
    ({"space.dropout": {"uniform": [0.0, 0.3]}}, "space.dropout: searched but not perturbed"),
    ({"scheduler.burn_in": 3}, "does not divide scheduler.burn_in"),
])
def test_spec_refuses(tmp_path, changes, says):
    with pytest.raises(SweepSpecError, match="Fix:") as e:
        load_spec(_spec(tmp_path, **changes))
    assert says in str(e.value)


def test_cli_dry_run_explains_and_refuses(tmp_path):
    r = vggbn_main("sweep", SWEEPS / "pbt.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "a population of 4 trials; every 2 epochs" in r.stdout
    assert "perturbed: lr ~ loguniform [0.003, 0.5]" in r.stdout
    r = vggbn_main("sweep", _spec(tmp_path, **{"scheduler.perturb": ["dropout"], "space.dropout":
                                                {"uniform": [0.0, 0.5]}}), "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dropout adds or removes the model's Dropout layers" in r.stderr and "Fix:" in r.stderr


def test_pb2_without_scikit_learn_names_the_extra(tmp_path):
    import importlib.util

    if importlib.util.find_spec("sklearn") is not None:
        pytest.skip("scikit-learn is installed: PB2 runs")
    with pytest.raises(SweepSpecError, match=r"pip install 'vggbn\[pb2\]'"):
        load_spec(_spec(tmp_path, **{"scheduler.type": "pb2"}))


def test_report_draws_each_trials_schedule(pbt_run, tmp_path):
    from analysis import pbt
    from analysis.report import write_report
    from analysis.results import load

    exp, epochs, _ = pbt_run
    write_report([str(exp)], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## PBT schedules: pbt_tiny" in md and (tmp_path / "report/figures/pbt_pbt_tiny.png").stat().st_size > 0
    frame = pbt.schedule_frame(load(str(exp)).epochs)
    # what is drawn is what each trial's own record says ran each epoch
    for tid, g in frame.groupby("trial_id"):
        record = json.loads((exp / f"trial_{tid}" / "vggbn-pbt.json").read_text())
        ran = {}
        for seg in record["segments"]:
            for row in seg["epochs"]:
                ran[row["epoch"]] = (seg["values"]["lr"], seg["donor_trial"])
        assert {int(e): (v, d if isinstance(d, str) else None) for e, v, d in
                zip(g["epoch"], g["value"], g["donor_trial"])} == ran
    assert frame["exploit"].sum() == epochs["pbt_exploit"].sum() >= 2
    # the same sweep loaded twice (ids "<sweep>/..."): every donor is a trial of its own sweep
    both = pbt.schedule_frame(load(str(exp), str(exp)).epochs)
    donors = both["donor_trial"].dropna()
    assert len(donors) == 2 * frame["donor_trial"].notna().sum() > 0
    assert set(donors) <= set(both["trial_id"])


def test_a_pbt_experiment_gives_no_single_config_to_start_from(pbt_run, tmp_path):
    """Its trials' values changed while they trained: base_from, warm_start and train --from refuse it."""
    exp, _, trials = pbt_run
    abl = {"name": "abl", "base_from": str(exp), "space": {"seed": {"grid": [0, 1]}}, "storage": str(tmp_path)}
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(abl))
    with pytest.raises(SweepSpecError, match="is a pbt sweep"):
        load_spec(tmp_path / "abl.yaml")
    r = vggbn_main("train", "--from", exp, "--trial", trials["trial_id"].iloc[0])
    assert r.returncode == 2 and "is a pbt sweep" in r.stderr and "Traceback" not in r.stderr
