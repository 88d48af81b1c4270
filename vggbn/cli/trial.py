"""`vggbn train` and `vggbn presets`: one trial, no Ray. The config is resolved (and --from's stored
one read) before torch is imported."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vggbn.cli.inputs import out_dir, parse_sets
from vggbn.config import DEFAULT_RECIPE, RECIPES, ConfigError, TrialConfig, earlier_preset_with_same_config
from vggbn.errors import StoredTrialError, UsageError
from vggbn.plan.earlier import rerun_config


def cmd_train(args: argparse.Namespace) -> int:
    flat = parse_sets(args.set)
    for key in ("preset", "recipe"):
        if getattr(args, key) is not None:
            flat[key] = getattr(args, key)
    try:
        cfg = stored_trial(args, flat) if args.source or args.trial else TrialConfig.from_flat(flat)
    except ConfigError as e:
        raise UsageError(f"bad trial config: {e}", "see `vggbn presets` and the TrialConfig fields in the "
                         "README.") from None
    out = out_dir(Path(args.out)) if args.out else None
    from vggbn.data import load  # torch: the input is checked
    from vggbn.train import resolve_device, run

    device = resolve_device(cfg.device)
    data = load(cfg, device)  # before the progress bar: a missing dataset fails cleanly
    if not args.quiet:  # say what is trained: the recipe fills everything not set
        default = "" if "recipe" in flat else " (default; --recipe seed for the study's)"
        print(f"{cfg.preset or cfg.arch} on {cfg.dataset}, {device}: recipe {cfg.recipe}{default}: "
              f"{cfg.describe()}", file=sys.stderr)
        same = earlier_preset_with_same_config(cfg, flat)
        if same:
            print(f"note: under recipe {cfg.recipe}, preset {cfg.preset} trains exactly the config of "
                  f"preset {same} (the study's rows are defined against --recipe seed)", file=sys.stderr)
    result = run(cfg, data, out=out, progress=not args.quiet)
    keys = ["epoch", "train_loss", "train_acc", "val_acc", "test_loss", "test_acc", "images_per_s"]
    line = "  ".join(f"{k}={result[k]:.4f}" if isinstance(result[k], float) else f"{k}={result[k]}"
                     for k in keys if k in result)
    print(f"{line}  params={result['params']:,}  diverged={result['diverged']}" + (f"  -> {out}" if out else ""))
    return 0


def stored_trial(args: argparse.Namespace, flat: dict[str, Any]) -> TrialConfig:
    """`--from DIR --trial ID`: the trial's resolved config as it trained (--set changes a key)."""
    if not (args.source and args.trial):
        raise UsageError("--from and --trial go together.", "e.g. vggbn train --from results/hpo --trial "
                         "3f2a1b0c (the trial ids are in trials.parquet and the report)")
    if args.preset or args.recipe:
        raise UsageError("--preset/--recipe with --from: the stored config already resolved them.",
                         "drop them (change single keys with --set KEY=VALUE)")
    try:
        stored = rerun_config(args.source, args.trial)
    except StoredTrialError as e:  # no such trial, or a PBT sweep's: the fix is the command's
        fix = (f"give a trial id of that experiment (trials.parquet and `vggbn report {args.source}` list "
               f"them)" if e.option == "--trial" else "train one of its schedules' values with "
               "`vggbn train --set KEY=VALUE`")
        raise UsageError(f"{e.what}.", fix) from None
    if not args.quiet:
        print(f"trial {args.trial} of {args.source}, as stored"
              + (f", with {', '.join(f'{k}={v}' for k, v in flat.items())}" if flat else ""), file=sys.stderr)
    return TrialConfig.from_stored({**stored, **flat})


def cmd_presets(args: argparse.Namespace) -> int:
    from vggbn.models import preset_rows  # torch: the parameter counts are the built models'

    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["preset", "label", "params", "structure", "seed_init", "flags"]
    table = [[r[c] if c != "params" else f"{r[c]:,}" for c in cols] for r in rows]
    widths = [max(len(str(x)) for x in [c, *[t[i] for t in table]]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join((str(x).rjust(w) if c == "params" else str(x).ljust(w))
                        for x, w, c in zip(t, widths, cols)))
    print("\nparams with CIFAR-10 input (3x32x32, 10 classes). structure: one conv layer and one "
          "classifier hidden layer.\nseed_init: the study's init of the row, used by the `seed` "
          "recipe only (`strong` keeps its own; an explicit `init` wins). Recipes:")
    for name, r in RECIPES.items():
        print(f"  {name}{' (default)' if name == DEFAULT_RECIPE else ''}: {r['description']}")
    return 0
