"""`vggbn report` and `vggbn landscape`: analysis of exported sweeps. The directories (and the
landscape's grid) are checked before analysis' pandas, matplotlib and scipy are imported."""

from __future__ import annotations

import argparse

from vggbn.cli.inputs import exported
from vggbn.errors import UsageError
from vggbn.uri import join


def cmd_report(args: argparse.Namespace) -> int:
    exported(args.paths)
    from analysis.report import write_report

    print(write_report(args.paths, args.out, baseline=args.baseline, target=args.target,
                       reference=args.reference))
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    if args.resolution < 2 or args.samples < 1:
        raise UsageError(f"--resolution {args.resolution} / --samples {args.samples}: need a resolution of "
                         f"at least 2 points per axis and at least 1 sample.", "e.g. --resolution 21 "
                         "--samples 2048")
    exported([args.path])
    from analysis.report import landscape_figures
    from analysis.results import load
    from vggbn.sweep.surfaces import landscape

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
