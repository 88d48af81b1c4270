#!/usr/bin/env bash
# make_exp_b7b995a.sh -- regenerates the test fixture tests/data/exp_b7b995a/asha and its
# tests/data/exp_b7b995a/expected.json.
#
# What it is: a real, raw Ray Tune experiment directory of an ASHA sweep run by the OLD release,
# git commit b7b995a (the last commit before vggbn/sweep.py became the package vggbn/sweep/),
# whose driver was KILLED partway (SIGKILL of its whole process group, as a reboot or a lost
# head node does). Several trials are TERMINATED in Ray's experiment snapshot, at least one is
# not, and no trials.parquet was exported. Ray's own files are kept (experiment_state-*.json,
# callback-states-*.pkl, tuner.pkl, basic-variant-state-*.json, spec.yaml, trial_*/params.json,
# params.pkl, result.json, progress.csv, checkpoint_*/{meta.json,state.pt,epochs.json}); the
# TensorBoard event files are deleted.
# expected.json is the outcome of the SAME sweep run to its end, uninterrupted, by the same old
# code: {"<lr>": {"status": ..., "epochs_run": ...}} for its 10 learning rates, from its
# trials.parquet (keys are Python's repr of the float lr, e.g. "0.003", "1e-08").
#
# Why it exists: a sweep interrupted under the old release must be resumable by today's code
# (`vggbn resume DIR`), from wherever it now lies. What such a directory holds:
# - tuner.pkl (cloudpickle) refers to vggbn.sweep.SchedulerState by module path, but holds the
#   class of its scheduler, PersistentASHA, BY VALUE: b7b995a's build_tuner redefined its Ray
#   classes on every lookup, so the scheduler's class was no longer the module's by the time the
#   Tuner was pickled. A restore gets an object of b7b995a's own PersistentASHA (methods state()
#   / load(), attributes _stopped, _num_stopped, ASHA's _brackets / _trial_info), driven by
#   today's SchedulerState. The trainable is named only ("vggbn_trial"; Tuner.restore is given
#   today's).
# - the ASHA rungs, in the old format, in the state of the SchedulerState callback, which Ray 2.60
#   saves in callback-states-<session>.pkl beside experiment_state-<session>.json (same snapshot):
#     {0: {"asha": {"rungs": [[[milestone, {trial_id: metric}], ...]],   # one bracket
#                   "trial_bracket": {trial_id: bracket index},          # live trials only
#                   "stopped": [trial_id, ...], "num_stopped": int}}, 1: None, ...}
#   (index 0 is vggbn's callback, the Nones Ray's own stateless ones). A resume that restores
#   those rungs stops the same trials as the uninterrupted sweep (expected.json); with empty rungs
#   it does not (step 7 checks both, with the old code).
# - basic-variant-state-<session>.json (a pickle despite its name): Ray's grid searcher, whose
#   _TrialIterator still holds the trials not created yet, with a StorageContext of the path the
#   sweep was made at (a temp dir this script deletes). Ray's restore of a moved directory
#   re-roots the trials in experiment_state, not these: the trials created after the resume
#   write to the old path. With that path gone, b7b995a itself resumes a moved copy with those
#   trials errored ("Check that all nodes in the cluster have read/write access to the
#   configured storage path"); so step 7 resumes at the original path.
#
# How: the ASHA spec of b7b995a's tests/test_fault_tolerance.py (asha_spec): metric val_acc,
# max_concurrent 1, asha grace_period 1 / reduction_factor 2, lr grid [3e-3, 1e-8, 2e-3, 3e-8,
# 1e-3, 2e-8, 1e-7, 5e-8, 5e-4, 4e-8], recipe seed, synthetic 640 images, val_fraction 0.2,
# 4 epochs, batch 64, cpu, 1 CPU a trial; plus keep_checkpoints 1 and width $WIDTH (default
# 0.03125, half the old test's: ~150 kB a checkpoint, the fixture ~1.1 MB). Both sweeps run with
# TUNE_GLOBAL_CHECKPOINT_S=1. The killed one is polled (trial_*/result.json, and the newest
# experiment_state-*.json on disk) until >= 4 trials have results and the snapshot holds >= 3
# TERMINATED trials and one that is not; then its process group gets SIGKILL, and so do Ray's
# own processes (gcs_server, raylet, ...: they leave the group but stay in the driver's
# session). The script checks the result (snapshot and callback state parse; >= 3 TERMINATED,
# >= 1 not; the old ASHA format; no trials.parquet; every checkpoint the snapshot names is on
# disk; tuner.pkl as described above), then the old release resumes copies of it (step 7)
# before anything is copied into tests/data. The old package goes first on PYTHONPATH (ahead of
# the venv's editable install of this checkout); the Ray workers inherit it. ~1.5 minutes on a
# 2-core CPU.
#
# Usage: tests/data/make_exp_b7b995a.sh   (from anywhere; PYTHON=... for another interpreter than
# <repo>/.venv/bin/python, WIDTH=... for another model width). Replaces tests/data/exp_b7b995a.
# Trial ids, timestamps and where the kill lands differ on every run; expected.json does not
# (the sweep is deterministic on CPU: repeated runs gave the same statuses and epochs).
set -euo pipefail

COMMIT=b7b995a
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WIDTH="${WIDTH:-0.03125}"
DEST="$ROOT/tests/data/exp_$COMMIT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vggbn_exp_$COMMIT.XXXXXX")"
# The killed sweep is made at a fixed path: Ray 2.60 cannot resume a moved experiment whose
# searcher still holds trials to create (they keep the old storage path), so the test resumes a
# copy at this same path.
KILLED_STORE=/tmp/vggbn-exp-b7b995a
store() { if [ "$1" = asha ]; then echo "$KILLED_STORE"; else echo "$WORK/exp_$1"; fi; }
SRC="$WORK/src"  # detached worktree of the old commit

cleanup() {
    git -C "$ROOT" worktree remove --force "$SRC" 2>/dev/null || true
    git -C "$ROOT" worktree prune
    rm -rf "$WORK" "$KILLED_STORE"
}
trap cleanup EXIT

# 1. the old code, outside the repo
git -C "$ROOT" worktree add --detach "$SRC" "$COMMIT"

# 2. the two sweeps (same spec, other name/storage), as b7b995a's asha_spec wrote them
for name in through asha; do
    "$PYTHON" - "$WORK/$name.yaml" "$name" "$(store "$name")" "$WIDTH" <<'EOF'
import sys
import yaml

out, name, storage, width = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
lrs = [3e-3, 1e-8, 2e-3, 3e-8, 1e-3, 2e-8, 1e-7, 5e-8, 5e-4, 4e-8]
spec = {"name": name, "storage": storage, "metric": "val_acc", "resources": {"cpu": 1},
        "max_concurrent": 1, "keep_checkpoints": 1,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "base": {"recipe": "seed", "dataset": "synthetic", "width": width, "batch_size": 64,
                 "device": "cpu", "synthetic_size": 640, "val_fraction": 0.2, "epochs": 4},
        "space": {"lr": {"grid": lrs}}}
with open(out, "w") as f:
    yaml.safe_dump(spec, f, sort_keys=False)
EOF
done

# RAY_ADDRESS=local: always a fresh local Ray (whose workers get this PYTHONPATH), never an
# already-running cluster that would import another vggbn
export RAY_ADDRESS=local PYTHONPATH="$SRC" VGGBN_CACHE_DIR="$WORK/cache" TUNE_GLOBAL_CHECKPOINT_S=1

# 3. the uninterrupted sweep -> expected.json
(cd "$SRC" && "$PYTHON" -m vggbn sweep "$WORK/through.yaml")
(
    cd "$SRC"
    "$PYTHON" - "$WORK/exp_through/through" "$WORK/expected.json" <<'EOF'
import json, os, sys
import pandas as pd
import vggbn

exp, out = sys.argv[1], sys.argv[2]
assert vggbn.__file__.startswith(os.environ["PYTHONPATH"]), vggbn.__file__
t = pd.read_parquet(f"{exp}/trials.parquet").sort_values("lr")
assert len(t) == 10 and t["lr"].is_unique, t
assert (t["status"] == "early_stopped").sum() >= 3, t  # the rungs did cut trials
expected = {repr(float(r.lr)): {"status": r.status, "epochs_run": int(r.epochs_run)}
            for r in t.itertuples()}
with open(out, "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
print(json.dumps(expected, indent=1))
EOF
)

# 4. the same sweep, killed partway (again, up to 5 times, while the kill lands where the
# snapshot names a deleted checkpoint: exit 3)
for attempt in 1 2 3 4 5; do
    rm -rf "$KILLED_STORE"
    rc=0
(
    cd "$SRC"
    "$PYTHON" - "$WORK/asha.yaml" "$KILLED_STORE/asha" "$WORK/asha.stderr" <<'EOF'
import glob, json, os, re, signal, subprocess, sys, time

spec, exp, log = sys.argv[1], sys.argv[2], sys.argv[3]


def results():  # trial id -> result rows so far (as b7b995a's tests/test_fault_tolerance.py)
    out = {}
    for f in glob.glob(f"{exp}/trial_*/result.json"):
        try:
            rows = [json.loads(x) for x in open(f).read().splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError):
            continue
        if rows:
            out[os.path.basename(os.path.dirname(f)).removeprefix("trial_")] = rows
    return out


def snapshot():  # statuses in the newest experiment state on disk (None: none readable yet)
    files = sorted(glob.glob(f"{exp}/experiment_state-*.json"))
    try:
        state = json.load(open(files[-1]))
        return [json.loads(t[0])["status"] for t in state["trial_data"]]
    except (IndexError, OSError, ValueError, KeyError):
        return None


def kill_session(sid):
    """SIGKILL every process of the driver's session at once, as a reboot would: the driver's
    process group, and Ray's own processes (gcs_server, raylet, the trial workers...), which
    leave that group but stay in the session. Until none is left."""
    for _ in range(100):
        left = []
        for p in os.listdir("/proc"):
            try:
                if not p.isdigit() or os.getsid(int(p)) != sid:
                    continue
                if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # dead already, not yet reaped
                os.kill(int(p), signal.SIGKILL)
                left.append(int(p))
            except (OSError, IndexError):  # gone meanwhile
                pass
        if not left:
            return
        time.sleep(0.05)
    sys.exit(f"processes of session {sid} survive SIGKILL: {left}")


proc = subprocess.Popen([sys.executable, "-m", "vggbn", "sweep", spec], start_new_session=True,
                        stdout=subprocess.DEVNULL, stderr=open(log, "w"))
deadline = time.time() + 300
try:
    while True:
        if proc.poll() is not None:
            sys.exit(f"the sweep ended (rc {proc.returncode}) before it was killed:\n"
                     + open(log).read()[-3000:])
        if time.time() > deadline:
            sys.exit(f"timed out: results {sorted(results())}, snapshot {snapshot()}")
        statuses = snapshot() or []
        done = statuses.count("TERMINATED")
        if len(results()) >= 4 and done >= 3 and done < len(statuses):  # and one live
            break
        time.sleep(0.1)
finally:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    kill_session(proc.pid)
    proc.wait()
# Ray's snapshot lags the trials by up to TUNE_GLOBAL_CHECKPOINT_S: it may name a checkpoint
# that keep_checkpoints 1 had deleted already. Such a run is retried (exit 3), so that the
# fixture is an ordinary interruption, not also a missing checkpoint.
state = json.load(open(sorted(glob.glob(f"{exp}/experiment_state-*.json"))[-1]))
for meta, run in state["trial_data"]:
    tid = json.loads(meta)["trial_id"]
    for name in sorted(set(re.findall(r"checkpoint_\d{6}", run))):
        if not os.path.isdir(f"{exp}/trial_{tid}/{name}"):
            print(f"the snapshot names {tid}/{name}, no longer on disk: again")
            sys.exit(3)
print(f"killed with results for {sorted(results())}; snapshot {statuses}")
EOF
) || rc=$?
[ "$rc" = 3 ] || break
done
[ "$rc" = 0 ] || { echo "the killed sweep failed (exit $rc, attempt $attempt)" >&2; exit 1; }

# 5. check the killed experiment, with the old code: what a resume will find
(
    cd "$SRC"
    "$PYTHON" - "$KILLED_STORE/asha" <<'EOF'
import glob, json, os, pickle, re, sys
import vggbn.sweep

exp = sys.argv[1]
assert vggbn.sweep.__file__.startswith(os.environ["PYTHONPATH"]), vggbn.sweep.__file__
assert not os.path.exists(f"{exp}/trials.parquet")  # the sweep did not finish
(state_file,) = glob.glob(f"{exp}/experiment_state-*.json")  # one session
(cb_file,) = glob.glob(f"{exp}/callback-states-*.pkl")
session = state_file.removesuffix(".json").split("experiment_state-")[1]
assert cb_file.endswith(f"callback-states-{session}.pkl"), (state_file, cb_file)
state = json.load(open(state_file))
trials = {}
for meta, run in state["trial_data"]:
    meta, run = json.loads(meta), json.loads(run)
    trials[meta["trial_id"]] = (meta["status"], meta["config"]["lr"],
                                (run.get("last_result") or {}).get("epoch"))
statuses = [s for s, _, _ in trials.values()]
assert 4 <= len(trials) <= 10, trials  # Ray adds trials as max_concurrent lets them start
assert statuses.count("TERMINATED") >= 3 and statuses.count("TERMINATED") < 10, trials
cb = pickle.load(open(cb_file, "rb"))  # unpickles with plain dicts/lists only
asha = cb[0]["asha"]
assert set(asha) == {"rungs", "trial_bracket", "stopped", "num_stopped"}, asha
assert all(v is None for k, v in cb.items() if k != 0), cb
assert [m for m, _ in asha["rungs"][0]] == [4.0, 2.0, 1.0], asha["rungs"]
assert any(rec for _, rec in asha["rungs"][0]), asha["rungs"]
for tid, (status, lr, epoch) in sorted(trials.items()):
    print(tid, f"lr={lr:g}", status, f"last epoch {epoch}")
print("callback state:", cb)
# tuner.pkl: the trainable by name, vggbn.sweep.SchedulerState by module path
raw = open(f"{exp}/tuner.pkl", "rb").read()
for name in (b"vggbn_trial", b"PersistentASHA", b"SchedulerState"):
    assert name in raw, name
assert b"vggbn.sweep" in raw
# b7b995a's build_tuner redefined its Ray classes on each lookup, so the scheduler's class was no
# longer vggbn.sweep.PersistentASHA by the time tuner.pkl was written: cloudpickle stored that
# class BY VALUE (b7b995a's methods, no import), SchedulerState by reference
assert b"_define_ray_classes.<locals>.PersistentASHA.state" in raw, "PersistentASHA not by value"
assert b"_define_ray_classes.<locals>.SchedulerState" not in raw, "SchedulerState by value"
# every checkpoint Ray's snapshot refers to is on disk (keep_checkpoints 1 deletes older ones)
for meta, run in state["trial_data"]:
    tid = json.loads(meta)["trial_id"]
    for ck in glob.glob(f"{exp}/trial_{tid}/checkpoint_*"):
        assert os.path.isfile(f"{ck}/state.pt") and os.path.isfile(f"{ck}/meta.json"), ck
    for name in set(re.findall(r"checkpoint_\d{6}", run)):
        assert os.path.isdir(f"{exp}/trial_{tid}/{name}"), (tid, name, "not on disk")
EOF
)

# 6. the fixture, staged before anything else touches the killed experiment: no TensorBoard files
mkdir -p "$WORK/fixture"
cp -a "$KILLED_STORE/asha" "$WORK/fixture/asha"
cp "$WORK/expected.json" "$WORK/fixture/expected.json"
find "$WORK/fixture/asha" -name 'events.out.tfevents.*' -delete

# 7. the old release resumes a copy of it to expected.json, and without the ASHA state (Ray's
# plain restore: empty rungs) to something else. In place (at the storage path it was made at):
# the old release cannot resume a MOVED copy of this sweep (see the header)
resume_old() {  # $1: "with" or "without" the callback state
    rm -rf "$KILLED_STORE/asha"
    cp -a "$WORK/fixture/asha" "$KILLED_STORE/asha"
    [ "$1" = with ] || rm "$KILLED_STORE/asha"/callback-states-*.pkl
    (cd "$SRC" && "$PYTHON" -m vggbn resume "$KILLED_STORE/asha" > "$WORK/resume_$1.out")
    tail -1 "$WORK/resume_$1.out"
    (
        cd "$SRC"
        "$PYTHON" - "$KILLED_STORE/asha/trials.parquet" "$WORK/expected.json" "$1" <<'EOF'
import json, sys
import pandas as pd

t, expected, how = pd.read_parquet(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3]
got = {repr(float(r.lr)): {"status": r.status, "epochs_run": int(r.epochs_run)} for r in t.itertuples()}
diff = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
if how == "with":
    assert got == expected, f"the old release resumed it to another outcome: {diff}"
    print("resumed by the old release: expected.json")
else:
    assert diff, "resumed with empty ASHA rungs: expected.json all the same, the fixture tests nothing"
    print(f"resumed with empty rungs: differs from expected.json at {diff}")
EOF
    )
}
resume_old with
resume_old without

# 8. into tests/data
rm -rf "$DEST"
cp -a "$WORK/fixture" "$DEST"
du -ab "$DEST" | sort -k2
echo "total $(du -sb "$DEST" | cut -f1) bytes; largest file $(find "$DEST" -type f -printf '%s\n' | sort -n | tail -1) bytes"
