#!/usr/bin/env bash
# make_exp_08213c0.sh -- regenerates the test fixture tests/data/exp_08213c0/smoke.
#
# What it is: a real, raw Ray Tune experiment directory of a small vggbn sweep, trained by the
# OLD code at git commit 08213c0, when the default training recipe was `seed` (Adam, lr 1e-3,
# batch 1024). Ray's own files are kept (experiment_state-*.json, tuner.pkl,
# basic-variant-state-*.json, spec.yaml, trial_*/params.json, params.pkl, result.json,
# progress.csv, checkpoint_*/{meta.json,state.pt,epochs.json,steps.json}); the exported
# *.parquet files and TensorBoard event files are deleted, so a test must export it itself.
#
# Why it exists: a later commit changed the default recipe to `strong` (SGD, batch 128). Ray
# stores only the keys a sweep set (params.json: dataset, synthetic_size, width, epochs,
# device, record_steps, probe_every, bn, seed) -- not recipe, optimizer, lr or batch_size. A
# re-export with today's code must report what these trials were actually trained with
# (recipe seed, adam, lr 0.001, batch_size 1024; recorded in each checkpoint's
# state.pt["config"]), not today's defaults. The fixture is that old experiment, made by the
# old code itself.
#
# How: the sweep is sweeps/smoke.yaml of 08213c0 with its `batch_size: 64` line removed (so
# batch_size comes from the recipe too, like recipe/optimizer/lr), and no `recipe:` key (the
# trials get 08213c0's default, `seed`). Tiny width, 256 synthetic images, 2 epochs, one kept
# checkpoint, no probes: ~15 s on a 2-core CPU, ~0.6 MB of files. The old package goes first
# on PYTHONPATH (ahead of the venv's editable install of this checkout); the Ray workers inherit
# it, and the script checks that every checkpoint says recipe seed / adam / 0.001 / 1024 and
# git_commit 08213c0 before copying anything.
#
# Usage: tests/data/make_exp_08213c0.sh   (from anywhere; PYTHON=... to use another
# interpreter than <repo>/.venv/bin/python). Replaces tests/data/exp_08213c0/smoke.
# Trial ids and timestamps differ on every run; the configs and recipe do not.
set -euo pipefail

COMMIT=08213c0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DEST="$ROOT/tests/data/exp_$COMMIT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vggbn_exp_$COMMIT.XXXXXX")"
SRC="$WORK/src"       # detached worktree of the old commit
STORAGE="$WORK/exp"   # the sweep's storage; the experiment is $STORAGE/smoke

cleanup() {
    git -C "$ROOT" worktree remove --force "$SRC" 2>/dev/null || true
    git -C "$ROOT" worktree prune
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. the old code, outside the repo
git -C "$ROOT" worktree add --detach "$SRC" "$COMMIT"

# 2. the old smoke sweep, batch_size left to the recipe
sed '/^  batch_size: 64$/d' "$SRC/sweeps/smoke.yaml" > "$WORK/smoke.yaml"
if grep -qE '^\s*(batch_size|recipe|optimizer|lr):' "$WORK/smoke.yaml"; then
    echo "smoke.yaml of $COMMIT still sets batch_size/recipe/optimizer/lr" >&2
    exit 1
fi
(
    cd "$SRC"
    # RAY_ADDRESS=local: always a fresh local Ray (whose workers get this PYTHONPATH), never an
    # already-running cluster that would import another vggbn
    RAY_ADDRESS=local PYTHONPATH="$SRC" VGGBN_CACHE_DIR="$WORK/cache" \
        "$PYTHON" -m vggbn sweep "$WORK/smoke.yaml" \
        --set storage="$STORAGE" --set base.width=0.03125 --set base.synthetic_size=256 \
        --set base.epochs=2 --set keep_checkpoints=1 --set base.probe_every=0
)

# 3. check, with the old code, that the trials ran the old recipe in the old code
(
    cd "$SRC"
    PYTHONPATH="$SRC" "$PYTHON" - "$STORAGE/smoke" "$COMMIT" <<'EOF'
import glob, json, os, sys
import torch
import vggbn

exp, commit = sys.argv[1], sys.argv[2]
assert vggbn.__file__.startswith(os.environ["PYTHONPATH"]), vggbn.__file__
trials = sorted(glob.glob(f"{exp}/trial_*"))
assert len(trials) == 4, trials
for t in trials:
    params = json.load(open(f"{t}/params.json"))
    assert not {"recipe", "optimizer", "lr", "batch_size"} & set(params), params
    (ckpt,) = glob.glob(f"{t}/checkpoint_*")
    cfg = torch.load(f"{ckpt}/state.pt", weights_only=True, map_location="cpu")["config"]
    got = {k: cfg[k] for k in ("recipe", "optimizer", "lr", "batch_size", "epochs")}
    assert got == {"recipe": "seed", "optimizer": "adam", "lr": 1e-3, "batch_size": 1024,
                   "epochs": 2}, (t, got)
    meta = json.load(open(f"{ckpt}/meta.json"))
    assert meta["provenance"]["git_commit"].startswith(commit), meta["provenance"]
    print(t.rsplit("/", 1)[1], params, got)
EOF
)

# 4. the raw experiment into the fixture: no exports, no TensorBoard files
rm -rf "$DEST/smoke"
mkdir -p "$DEST"
cp -a "$STORAGE/smoke" "$DEST/smoke"
rm -f "$DEST"/smoke/{trials,epochs,steps,probes,surfaces}.parquet
find "$DEST/smoke" -name 'events.out.tfevents.*' -delete
du -ab "$DEST/smoke" | sort -k2
