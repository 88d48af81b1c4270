"""`vggbn train | presets | sweep | resume | extend | export | status | report | landscape`.

Errors for people: what went wrong and how to fix it on stderr, exit code 2, no traceback unless
--debug.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from vggbn.errors import UsageError, VggbnError
from vggbn.config import DEFAULT_RECIPE, RECIPES, ConfigError, TrialConfig, earlier_preset_with_same_config

EXIT_USAGE = 2


def parse_sets(items: list[str] | None, where: str = "--set") -> dict[str, Any]:
    """['key=value', ...] -> dict; values parsed as YAML scalars (1e-3, true, null, [1, 2])."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{where} {item!r} is not KEY=VALUE.\n"
                             f"Fix: write e.g. {where} epochs=3")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        out[key.strip()] = parsed
    return out


# ---------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from vggbn.data import load
    from vggbn.train import resolve_device, run

    flat = parse_sets(args.set)
    for key in ("preset", "recipe"):
        if getattr(args, key) is not None:
            flat[key] = getattr(args, key)
    try:
        cfg = _stored_trial(args, flat) if args.source or args.trial else TrialConfig.from_flat(flat)
    except ConfigError as e:
        raise UsageError(f"bad trial config: {e}\nFix: see `vggbn presets` and the "
                         f"TrialConfig fields in the README.") from None
    out = Path(args.out) if args.out else None
    if out is not None:  # before any training: a bad --out fails at once
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            what = "is a file, not a directory" if out.is_file() else f"cannot be created ({e.strerror or e})"
            raise UsageError(f"--out {out}: {what}.\nFix: give a directory (it is created if it does "
                             f"not exist), e.g. --out runs/{out.name or 'run'}") from None
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


def _stored_trial(args: argparse.Namespace, flat: dict[str, Any]) -> TrialConfig:
    """`--from DIR --trial ID`: the trial's resolved config as it trained (--set changes a key)."""
    from vggbn.plan.earlier import rerun_config
    from vggbn.store.experiment import ExperimentError

    if not (args.source and args.trial):
        raise UsageError("--from and --trial go together.\nFix: e.g. vggbn train --from results/hpo "
                         "--trial 3f2a1b0c (the trial ids are in trials.parquet and the report)")
    if args.preset or args.recipe:
        raise UsageError("--preset/--recipe with --from: the stored config already resolved them.\n"
                         "Fix: drop them (change single keys with --set KEY=VALUE)")
    try:
        stored = rerun_config(args.source, args.trial)
    except ExperimentError:
        raise
    except ValueError as e:
        if not str(e).startswith("--"):  # a storage error (StorageError): its own message and fix
            raise
        fix = (f"give a trial id of that experiment (trials.parquet and `vggbn report {args.source}` list "
               f"them)" if str(e).startswith("--trial") else "train one of its schedules' values with "
               "`vggbn train --set KEY=VALUE`")
        raise UsageError(f"{e}.\nFix: {fix}") from None
    if not args.quiet:
        print(f"trial {args.trial} of {args.source}, as stored"
              + (f", with {', '.join(f'{k}={v}' for k, v in flat.items())}" if flat else ""), file=sys.stderr)
    return TrialConfig.from_stored({**stored, **flat})


# ---------------------------------------------------------------------- presets
def cmd_presets(args: argparse.Namespace) -> int:
    from vggbn.models import preset_rows

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


# ---------------------------------------------------------------------- sweeps (Ray)
def cmd_sweep(args: argparse.Namespace) -> int:
    from vggbn.store.experiment import Experiment
    from vggbn.sweep.export import summary_text
    from vggbn.plan.dry_run import dry_run
    from vggbn.plan.load import load_spec

    spec = load_spec(args.file, parse_sets(args.set))
    if args.dry_run:
        print(dry_run(spec))
        return 0
    from vggbn.sweep.runner import resume_sweep, run_sweep

    exp = Experiment(spec.experiment_path())
    if args.resume and exp.has_ray_state():
        print(f"{exp.uri} holds this sweep already: resuming it", file=sys.stderr)
        summary = resume_sweep(exp.uri, address=args.address)
    else:
        summary = run_sweep(spec, address=args.address)
    print(summary_text(summary))
    if args.report:  # a bucket's experiment is read in place; its report goes to reports/<name>/
        from analysis.report import write_report

        print(write_report([summary["path"]]))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from vggbn.sweep.export import summary_text
    from vggbn.sweep.runner import resume_sweep

    print(summary_text(resume_sweep(args.path, address=args.address)))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from vggbn.sweep.export import summary_text
    from vggbn.sweep.runner import extend_sweep

    print(summary_text(extend_sweep(args.path, parse_sets(args.set), address=args.address)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vggbn.sweep.export import export, summary_text

    print(summary_text(export(args.path)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from vggbn.sweep.status import status, status_text

    st = status(args.path)
    print(json.dumps(st, indent=1) if args.json else status_text(st))
    return 0


# ---------------------------------------------------------------------- analysis
def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    print(write_report(args.paths, args.out, baseline=args.baseline, target=args.target,
                       reference=args.reference))
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from vggbn.sweep.surfaces import landscape

    if args.resolution < 2 or args.samples < 1:
        raise UsageError(f"--resolution {args.resolution} / --samples {args.samples}: need a resolution of "
                         f"at least 2 points per axis and at least 1 sample.\nFix: e.g. --resolution 21 "
                         f"--samples 2048")
    from analysis.report import landscape_figures
    from analysis.results import load

    from vggbn.uri import join

    load(args.path)  # the export the figures read (local or in the bucket): a damaged one fails first
    summary = landscape(args.path, trial_ids=args.trials, resolution=args.resolution,
                        samples=args.samples, seed=args.seed, address=args.address)
    # surfaces.parquet goes beside the experiment (in the bucket, for a remote one); the figures,
    # as `vggbn report` draws them, into --out (default <path>/report, or reports/<name>/)
    pngs = landscape_figures(summary["path"], args.out)
    print(f"surfaces of {summary['trials']} trials ({summary['points']} points) -> "
          f"{join(summary['path'], 'surfaces.parquet')}" + (f"; figures: {', '.join(pngs)}" if pngs else "")
          + (f"; skipped (no checkpoint or diverged): {', '.join(summary['skipped'])}"
             if summary["skipped"] else ""))
    return 0


# ---------------------------------------------------------------------- AWS setup
def cmd_cluster_init(args: argparse.Namespace) -> int:
    from vggbn import cluster

    if args.delete:
        lines = cluster.delete(region=args.region, name=args.name, config=args.config)
    elif not (args.bucket and args.ssh_cidr):
        raise UsageError("--bucket and --ssh-cidr are required (unless --delete).\nFix: e.g. --bucket my-results "
                         "--ssh-cidr $(curl -s https://checkip.amazonaws.com)/32")
    else:
        lines = cluster.init(args.bucket, args.ssh_cidr, out=args.out, region=args.region, name=args.name,
                             config=args.config, force=args.force)
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vggbn", description="Ablation and HPO studies of VGG / "
                                "BatchNorm training on Ray Tune.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one trial (no Ray)")
    t.add_argument("--preset", choices=None, help="study row, see `vggbn presets`")
    t.add_argument("--recipe", help="strong (default) or seed (the study's own)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrialConfig field")
    t.add_argument("--out", help="directory for config.json, metrics.jsonl, result.json")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--from", dest="source", metavar="DIR", help="re-run a trial of this experiment "
                   "from its stored config (with --trial)")
    t.add_argument("--trial", metavar="ID", help="the trial id, with --from")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("presets", help="the study's rows as flags, with parameter counts")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_presets)

    sw = sub.add_parser("sweep", help="run a sweep file on Ray Tune, then export its results")
    sw.add_argument("file", help="a sweep YAML, e.g. sweeps/quick.yaml")
    sw.add_argument("--set", action="append", metavar="PATH=VALUE",
                    help="override a spec key: base.epochs=3, resources.gpu=0.5, storage=s3://b/p")
    sw.add_argument("--dry-run", action="store_true", help="list the trials; do not start Ray")
    sw.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    sw.add_argument("--resume", action="store_true",
                    help="if this spec's experiment exists already (wherever its storage is), resume it")
    sw.add_argument("--report", action="store_true",
                    help="then write the report as `vggbn report` does (a bucket's: into reports/<name>/)")
    sw.set_defaults(func=cmd_sweep)

    rs = sub.add_parser("resume", help="continue an interrupted sweep, then export")
    rs.add_argument("path", help="the sweep's directory, e.g. results/quick")
    rs.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    rs.set_defaults(func=cmd_resume)

    xt = sub.add_parser("extend", help="more seeds or variants for a finished (or interrupted) grid "
                        "sweep: finished trials stay, new ones join the same experiment and table")
    xt.add_argument("path", help="the sweep's directory, e.g. results/quick")
    xt.add_argument("--set", action="append", metavar="PATH=VALUE", required=True,
                    help="what to add: space.seed.grid=[0,1,2,3], space.preset.grid=[...], seeds.max=8")
    xt.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    xt.set_defaults(func=cmd_extend)

    ex = sub.add_parser("export", help="write trials/epochs/steps.parquet for a sweep directory")
    ex.add_argument("path", help="the sweep's directory, e.g. results/quick")
    ex.set_defaults(func=cmd_export)

    st = sub.add_parser("status", help="where a sweep stands (running, stopped or finished): trials done, "
                        "running, errored, pending; the best so far; compute used. Reads only; no Ray")
    st.add_argument("path", help="the sweep's directory: results/quick, file://..., s3://BUCKET/PREFIX/NAME")
    st.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    st.set_defaults(func=cmd_status)

    rp = sub.add_parser("report", help="the comparison table, figures and report.md of sweeps")
    rp.add_argument("paths", nargs="+", help="sweep directories, e.g. results/quick")
    rp.add_argument("--baseline", default="vgg_a", help="preset of the baseline row (default vgg_a)")
    rp.add_argument("--target", type=float, help="accuracy (fraction) for epochs/seconds-to-target "
                    "(default: the baseline's mean final accuracy)")
    rp.add_argument("--reference", help="CSV preset,reference_test_acc (default: the study's)")
    rp.add_argument("--out", help="output directory (default: <first path>/report; for s3:// or gs://, "
                    "reports/<name>/ here)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("landscape", help="Li et al. loss surfaces around trials' final checkpoints")
    ls.add_argument("path", help="a sweep directory, e.g. results/landscape")
    ls.add_argument("--trials", nargs="+", help="trial ids (default: every trial with a checkpoint)")
    ls.add_argument("--resolution", type=int, default=21, help="points per axis (default 21)")
    ls.add_argument("--samples", type=int, default=2048, help="training images evaluated per point")
    ls.add_argument("--seed", type=int, default=0, help="seed of the directions and the subset")
    ls.add_argument("--address", help="a Ray cluster to spread the grid points over")
    ls.add_argument("--out", help="where the figures go, in <out>/figures (default: <path>/report; for "
                    "s3:// or gs://, reports/<name>/ here); surfaces.parquet goes beside the experiment")
    ls.set_defaults(func=cmd_landscape)

    ci = sub.add_parser("cluster-init", help="AWS: security group + instance profiles; writes a cluster config")
    ci.add_argument("--bucket", help="the results bucket, the only one the nodes may use")
    ci.add_argument("--ssh-cidr", help="where SSH may come from: your public IP/32")
    ci.add_argument("--region", help="default: the config's provider.region")
    ci.add_argument("--name", default="vggbn", help="prefix and tag of what it creates (default vggbn)")
    ci.add_argument("--config", default="cluster.yaml", help="the template (default cluster.yaml)")
    ci.add_argument("--out", default="cluster.local.yaml", help="the config to write (default cluster.local.yaml)")
    ci.add_argument("--force", action="store_true", help="replace an existing --out")
    ci.add_argument("--delete", action="store_true", help="remove what cluster-init created under --name")
    ci.set_defaults(func=cmd_cluster_init)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VggbnError as e:
        if args.debug:
            raise
        print(f"vggbn {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vggbn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vggbn sweep X --dry-run | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run() -> None:
    """The `vggbn` command: main(), Python's exit handlers, then exit without C++ static destructors.

    pyarrow's thread pools can abort the interpreter's exit ("terminate called without an active
    exception", apache/arrow#34314): a command that finished, with its message printed, would end
    with SIGABRT instead of its exit code (seen once in CI, on `vggbn landscape` after reading the
    export). Ray's shutdown, logging's flush and weakref finalizers are atexit handlers: they run.
    """
    exit_without_teardown(main())


def exit_without_teardown(code: int | None) -> None:
    """Exit as the interpreter would (non-daemon threads joined, exit handlers run, streams flushed),
    then os._exit: native threads that outlive Python's finalization cannot crash the exit.
    Also how the test suite ends (tests/conftest.py)."""
    for t in threading.enumerate():  # what the interpreter's exit would wait for, first
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, a closed stream: nothing more to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    run()
