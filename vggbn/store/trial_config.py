"""A trial's config: the one resolver, for every reader of an experiment.

The resolved TrialConfig is the truth of a trial: written once, at its start, as
`trial_<id>/vggbn-config.json` (the trainable calls resolve(..., write=True)). The export, resume,
status, the landscape job and `vggbn train --from` read it back as stored (TrialConfig.from_stored:
data, not re-resolved with today's defaults). Experiments written before that file existed keep
the config in their checkpoints: the resume state, then the newest meta.json that has one, then the
newest readable state.pt. Only a trial that never started has nothing stored: its Ray config is
resolved now, which is what it will train when resumed. No Ray.
"""

from __future__ import annotations

from vggbn.config import ConfigError, TrialConfig
from vggbn.spec.model import flat_config
from vggbn.store import checkpoint


def stored(exp, trial_id: str, checkpoints: list[tuple[str, dict]] = (),
           state: dict | None = None) -> dict | None:
    """The trial's config as stored (a flat dict), or None when it has none.

    `checkpoints`: (path, meta.json) of its checkpoints, newest first (checkpoint.with_meta), read
    for an older experiment; `state`: the checkpoint state it resumes from, when already loaded."""
    found = exp.read_trial_config(trial_id)
    if found is None and state is not None and isinstance(state.get("config"), dict):
        found = state["config"]
    if found is None:
        found = next((m["config"] for _, m in checkpoints if isinstance(m.get("config"), dict)), None)
    if found is None and checkpoints:  # written before configs were stored: the state holds it
        loaded, _, _ = checkpoint.newest_readable(exp.fs, [p for p, _ in checkpoints])
        if loaded is not None and isinstance(loaded.get("config"), dict):
            found = loaded["config"]
    return found


def resolve(exp, trial_id: str, raw: dict, checkpoints: list[tuple[str, dict]] = (),
            state: dict | None = None, write: bool = False) -> TrialConfig:
    """The trial's TrialConfig: the stored one (see stored()), else Ray's raw config dict `raw`
    resolved now (a trial not started yet). `write`: store what was resolved now (the trial's own
    start, the one place a config is written). ConfigError when it cannot be resolved."""
    found = stored(exp, trial_id, checkpoints, state)
    if found is not None:
        return TrialConfig.from_stored(found)
    cfg = TrialConfig.from_flat(flat_config(raw))
    if write:
        exp.write_trial_config(trial_id, cfg)
    return cfg


def as_row(exp, trial_id: str, raw: dict, checkpoints: list[tuple[str, dict]] = ()) -> tuple[dict, str | None]:
    """(the trial's config as the flat columns of its trials.parquet row, None), or, when its config
    cannot be resolved, (the config keys of Ray's raw dict as given, the ConfigError's text: the
    trial's error)."""
    try:
        return resolve(exp, trial_id, raw, checkpoints).to_flat(), None
    except ConfigError as e:
        return {k: v for k, v in flat_config(raw).items() if k in TrialConfig.model_fields}, str(e)
