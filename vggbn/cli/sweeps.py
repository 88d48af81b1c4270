"""The commands of an experiment on Ray: `sweep`, `resume`, `extend`, `export`, `status`.

The sweep file (and --set) is loaded and validated, or the experiment directory and its stored spec
read, before vggbn.sweep's Ray modules are imported: those cost seconds, a wrong path should not.
"""

from __future__ import annotations

import argparse
import json
import sys

from vggbn.cli.inputs import experiment, parse_sets
from vggbn.plan.dry_run import dry_run
from vggbn.plan.load import load_spec
from vggbn.store.experiment import Experiment
from vggbn.sweep.status import status, status_text


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = load_spec(args.file, parse_sets(args.set))
    if args.dry_run:
        print(dry_run(spec))
        return 0
    exp = Experiment(spec.experiment_path())
    from vggbn.sweep.export import summary_text  # Ray and torch: the sweep file is valid
    from vggbn.sweep.runner import resume_sweep, run_sweep

    if args.resume and exp.has_ray_state():
        print(f"{exp.uri} holds this sweep already: resuming it", file=sys.stderr)
        summary = resume_sweep(exp.uri, address=args.address, take_over=args.take_over)
    else:
        summary = run_sweep(spec, address=args.address)
    print(summary_text(summary))
    if args.report:  # a bucket's experiment is read in place; its report goes to reports/<name>/
        from analysis.report import write_report

        print(write_report([summary["path"]]))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    experiment(args.path)
    from vggbn.sweep.export import summary_text
    from vggbn.sweep.runner import resume_sweep

    print(summary_text(resume_sweep(args.path, address=args.address, take_over=args.take_over)))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    sets = parse_sets(args.set)
    experiment(args.path)
    from vggbn.sweep.export import summary_text
    from vggbn.sweep.runner import extend_sweep

    print(summary_text(extend_sweep(args.path, sets, address=args.address, take_over=args.take_over)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    experiment(args.path)
    from vggbn.sweep.export import export, summary_text

    print(summary_text(export(args.path)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = status(args.path)  # reads only, no Ray
    print(json.dumps(st, indent=1) if args.json else status_text(st))
    return 0
