"""What a PBT trial ran with, epoch by epoch, and where its weights came from.

A PBT exploit restarts a trial from another trial's checkpoint with a perturbed copy of that
trial's values. The trial's stored config (vggbn-config.json) stays what it started with; the
config in force is the checkpoint's config (the weights' own: architecture, seed, ...) with the
perturbed keys set to the values Ray hands the restarted trial. Each start that changes what is in
force appends a segment to `trial_<id>/vggbn-pbt.json` (written whole, atomically, by the trial
alone):

    {"start_epoch": 4, "values": {"lr": 0.0012, ...}, "donor_trial": "ab12_00003", "donor_epoch": 4,
     "donor_sha256": "...", "time": ...}

epochs start_epoch+1 on were trained with `values`, from the weights `donor_trial` had after
`donor_epoch` (None: the trial's own). The export turns segments into per-epoch columns
(pbt_<key>, pbt_donor_trial, pbt_donor_epoch, pbt_exploit) and a trial's schedule. Each segment
also keeps the epochs it reported (`epochs`): Ray's result.json of a paused trial can lose lines.
"""

from __future__ import annotations

import json
import time
from typing import Any

from vggbn.config import TrialConfig
from vggbn.schema import EPOCH_EXTRA, EPOCH_METRICS, PBT_FILE, SCHEMA_VERSION, TRIAL_DIR
from vggbn.schema import PBT_DONOR as DONOR
from vggbn.schema import PBT_DONOR_EPOCH as DONOR_EPOCH
from vggbn.schema import PBT_EXPLOIT as EXPLOIT
from vggbn.schema import PBT_EXPLOITS, PBT_SCHEDULE
from vggbn.schema import PBT_PREFIX as PREFIX
from vggbn.spec.model import flat_config


def _name(trial_id: str) -> str:
    return f"{TRIAL_DIR.format(trial_id=trial_id)}/{PBT_FILE}"


def read(exp, trial_id: str) -> dict | None:
    try:
        raw = exp.read_bytes(_name(trial_id))
        doc = json.loads(raw) if raw is not None else None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("segments"), list) else None


def writer(ckpt) -> str | None:
    """The trial whose directory holds a checkpoint (trial_<id>/checkpoint_NNNNNN)."""
    if ckpt is None:
        return None
    parent = ckpt.path.rstrip("/").rsplit("/", 2)[-2]
    prefix = TRIAL_DIR.format(trial_id="")
    return parent[len(prefix):] if parent.startswith(prefix) else None


class Record:
    """A PBT trial's record, kept by its trainable: `start` (the config in force for this run, a new
    segment when it changed) and `epoch` (each reported epoch, into the current segment). Ray's own
    result.json of a trial it paused and restarted can lose lines (Ray 2.60 copies the storage's
    older copy over the local file on restart), so the record keeps the epochs too."""

    def __init__(self, exp, trial_id: str, keys: list[str]):
        self.exp, self.trial_id, self.keys = exp, trial_id, list(keys)
        self.doc = read(exp, trial_id) or {"schema_version": SCHEMA_VERSION, "keys": self.keys,
                                           "segments": []}

    def start(self, raw: dict[str, Any], ckpt, state: dict | None, cfg: TrialConfig,
              meta: dict | None = None) -> TrialConfig:
        """The config this run trains with: the checkpoint's (the weights' own: architecture,
        seed, ...; a donor's after an exploit) with Ray's values of the perturbed keys."""
        flat = flat_config(raw)
        values = {k: flat[k] for k in self.keys if k in flat}
        donor = donor_epoch = sha = None
        start, base = 0, cfg.to_flat()
        if state is not None:
            start = int(state["epoch"])
            if isinstance(state.get("config"), dict):
                base = dict(state["config"])
            src = writer(ckpt)
            if src and src != self.trial_id:
                donor, donor_epoch, sha = src, start, (meta or {}).get("state_sha256")
        new = TrialConfig.from_stored({**base, **values, "cpu_threads": cfg.cpu_threads})
        seg = {"start_epoch": start, "values": {k: getattr(new, k) for k in self.keys},
               "donor_trial": donor, "donor_epoch": donor_epoch}
        segs = self.doc["segments"]
        last = segs[-1] if segs else None
        same = last is not None and last["values"] == seg["values"] and (
            donor is None or (last["donor_trial"], last["donor_epoch"]) == (donor, donor_epoch))
        if not same:
            segs.append({**seg, "donor_sha256": sha, "time": time.time(), "epochs": []})
            self._write()
        return new

    def epoch(self, metrics: dict[str, Any]) -> None:
        rows = self.doc["segments"][-1].setdefault("epochs", [])
        row = {k: v for k, v in metrics.items() if k in EPOCH_METRICS or k in EPOCH_EXTRA}
        rows[:] = [r for r in rows if r.get("epoch") != row["epoch"]] + [{**row, "timestamp": int(time.time())}]
        self._write()

    def _write(self) -> None:
        self.exp.write_bytes(_name(self.trial_id), json.dumps(self.doc, indent=1).encode())


def epochs_frame(doc: dict):
    """The trial's epochs as it reported them, each from the segment (run) that trained it last,
    with the values in force (pbt_<key>) and where its weights came from."""
    import pandas as pd

    latest: dict[int, tuple[dict, dict]] = {}
    for seg in doc["segments"]:  # in time order: a later run's report of an epoch wins
        for row in seg.get("epochs", []):
            latest[int(row["epoch"])] = (row, seg)
    out = []
    for e in sorted(latest):
        row, seg = latest[e]
        out.append({**row, **{f"{PREFIX}{k}": seg["values"].get(k) for k in doc.get("keys", [])},
                    DONOR: seg["donor_trial"], DONOR_EPOCH: seg["donor_epoch"],
                    EXPLOIT: seg["donor_trial"] is not None and e == seg["start_epoch"] + 1})
    return pd.DataFrame(out)


def merge(doc: dict, ray_epochs):
    """The record's epochs (the trial's truth), with Ray's time_total_s where Ray kept the epoch."""
    frame = epochs_frame(doc)
    if not len(frame):
        return ray_epochs
    if "time_total_s" in ray_epochs and len(ray_epochs):
        t = ray_epochs.set_index("epoch")["time_total_s"]
        frame["time_total_s"] = frame["epoch"].map(t)
    return frame


def trial_columns(doc: dict) -> dict[str, Any]:
    """trials.parquet: how many exploits, and the schedule (the config is one, not one value)."""
    segs = doc["segments"]
    return {PBT_EXPLOITS: sum(s["donor_trial"] is not None for s in segs),
            PBT_SCHEDULE: json.dumps([{k: s[k] for k in ("start_epoch", "values", "donor_trial",
                                                            "donor_epoch")} for s in segs])}
