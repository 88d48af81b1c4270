"""The export contract: metric names, trial statuses, file names and columns.

`analysis/` reads what `vggbn.sweep.export` writes through these names only. A change that
readers must know about bumps SCHEMA_VERSION; spec.yaml, each trial's config file and the parquet
metadata carry it, so later code can read older experiments on purpose.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# what a trial reports (fractions, not percent)
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
COSTS = ("gflops", "params")  # reported by every trial too, so they can be search objectives
EPOCH_METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "lr", "epoch_time_s", "images_per_s", "diverged")
STATUSES = ("completed", "early_stopped", "diverged", "errored", "incomplete")

# an experiment directory <storage>/<name>/
SPEC_FILE = "spec.yaml"                  # the validated spec as run (read back as data)
CLAIM_FILE = "vggbn-claim.json"          # one experiment directory = one sweep
LEASE_FILE = "vggbn-lease.json"          # who runs the experiment now (store/lease.py)
LEASE_LOCK = "vggbn-lease.lock"          # its OS lock on local disk
TRIAL_DIR = "trial_{trial_id}"           # Ray's trial directories (trial_dirname_creator)
TRIAL_CONFIG_FILE = "vggbn-config.json"  # the trial's resolved TrialConfig, written once at its start
TRIAL_ERROR_FILE = "vggbn-error.json"    # a deterministic failure (out of memory, invalid config)
RESTORE_NOTE_PREFIX = "restore-"         # restore-<ns>.json: a damaged checkpoint was skipped
BUDGET_FILE = "vggbn-budget.json"        # the spec's budget was reached: spent, trials not started
WARM_START_FILE = "vggbn-warm-start.json"  # the earlier trials a search started with
PBT_FILE = "vggbn-pbt.json"               # a PBT trial's schedule: values per run, donor trial + epoch
# epochs.parquet of a PBT trial: pbt_<key> (the value in force), its donor and whether it exploited
PBT_PREFIX = "pbt_"
PBT_DONOR, PBT_DONOR_EPOCH, PBT_EXPLOIT = "pbt_donor_trial", "pbt_donor_epoch", "pbt_exploit"
PBT_EXPLOITS, PBT_SCHEDULE = "pbt_exploits", "pbt_schedule"  # trials.parquet: how many, the schedule (JSON)

# checkpoint_NNNNNN/ inside a trial directory
CKPT_STATE = "state.pt"      # torch state (weights_only=True loadable), sha256 in meta.json
CKPT_META = "meta.json"      # epoch, sha256, params, provenance, the resolved config
CKPT_JSON = {"steps": "steps.json", "probes": "probes.json", "history": "epochs.json"}

# the export, beside Ray's files
TRIALS = "trials.parquet"
EPOCHS = "epochs.parquet"
STEPS = "steps.parquet"
PROBES = "probes.parquet"
SURFACES = "surfaces.parquet"
PARQUET_META_KEY = b"vggbn"                  # schema metadata: {"schema_version", "spec", "driver"}
EPOCH_EXTRA = ("timestamp", "time_total_s", "node_id")  # epochs.parquet: beside EPOCH_METRICS
