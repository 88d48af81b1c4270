"""`vggbn train | presets | sweep | resume | extend | export | status | report | landscape | cluster-init`.

argparse and main() here; each command in the module of what it works on (trial.py: one trial;
sweeps.py: an experiment on Ray; results.py: analysis; aws.py: cluster-init), each checking its
input (inputs.py) before it imports torch, Ray or pandas, so that bad input answers at once.
Errors for people: what went wrong and how to fix it on stderr, exit code 2, no traceback unless
--debug.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from vggbn.cli.aws import cmd_cluster_init
from vggbn.cli.inputs import parse_sets
from vggbn.cli.results import cmd_landscape, cmd_report
from vggbn.cli.sweeps import cmd_export, cmd_extend, cmd_resume, cmd_status, cmd_sweep
from vggbn.cli.trial import cmd_presets, cmd_train
from vggbn.errors import VggbnError
from vggbn.sweep.ray_compat import run_exit_handlers

__all__ = ["build_parser", "main", "run", "exit_without_teardown", "parse_sets", "EXIT_USAGE"]

EXIT_USAGE = 2
TAKE_OVER = ("object storage: take the experiment's lease over from a driver you know is dead (its "
             "machine is gone) without waiting for its heartbeat to go stale")
ADDRESS = "an existing Ray cluster (default: $RAY_ADDRESS, else local)"
SWEEP_DIR = "the sweep's directory, e.g. results/quick"


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
    sw.add_argument("--address", help=ADDRESS)
    sw.add_argument("--take-over", action="store_true", help=TAKE_OVER + " (with --resume)")
    sw.add_argument("--resume", action="store_true",
                    help="if this spec's experiment exists already (wherever its storage is), resume it")
    sw.add_argument("--report", action="store_true",
                    help="then write the report as `vggbn report` does (a bucket's: into reports/<name>/)")
    sw.set_defaults(func=cmd_sweep)

    rs = sub.add_parser("resume", help="continue an interrupted sweep, then export")
    rs.add_argument("path", help=SWEEP_DIR)
    rs.add_argument("--address", help=ADDRESS)
    rs.add_argument("--take-over", action="store_true", help=TAKE_OVER)
    rs.set_defaults(func=cmd_resume)

    xt = sub.add_parser("extend", help="more seeds or variants for a finished (or interrupted) grid "
                        "sweep: finished trials stay, new ones join the same experiment and table")
    xt.add_argument("path", help=SWEEP_DIR)
    xt.add_argument("--set", action="append", metavar="PATH=VALUE", required=True,
                    help="what to add: space.seed.grid=[0,1,2,3], space.preset.grid=[...], seeds.max=8")
    xt.add_argument("--address", help=ADDRESS)
    xt.add_argument("--take-over", action="store_true", help=TAKE_OVER)
    xt.set_defaults(func=cmd_extend)

    ex = sub.add_parser("export", help="write trials/epochs/steps.parquet for a sweep directory")
    ex.add_argument("path", help=SWEEP_DIR)
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
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, a closed stream: nothing more to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    run()
