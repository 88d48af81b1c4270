"""`vggbn report` and `vggbn landscape`: analysis of exported sweeps. The directories (and the
landscape's grid) are checked before analysis' pandas, matplotlib and scipy are imported."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from vggbn.cli.inputs import default_out, exported, out_dir
from vggbn.errors import UsageError
from vggbn.store.exports import report_dir
from vggbn.uri import is_remote, join, normalize


BYTES_PER_POINT = 1024  # a grid point: its tuple and result dict measured 0.42 KB; the rest for the DataFrame


def _memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _out(out: str | None, path: str) -> None:
    """The directory report or landscape writes its files to (--out, else report_dir(path)), made now."""
    if out and is_remote(str(out)):
        return
    if out:
        out_dir(Path(out), "reports")
    else:
        default_out(report_dir(path))


def cmd_report(args: argparse.Namespace) -> int:
    if args.target is not None and not (math.isfinite(args.target) and 0 < args.target <= 1):
        hint = f"--target {args.target / 100:g}" if 1 < args.target <= 100 else "--target 0.8 (80 %)"
        raise UsageError(f"--target {args.target}: an accuracy as a fraction in (0, 1].", f"e.g. {hint}")
    seen: dict[str, str] = {}
    for path in args.paths:
        key = normalize(str(path))
        if key in seen:
            raise UsageError(f"{path}: named twice ({seen[key]} is the same experiment): its trials would count "
                             f"twice.", "name each experiment once")
        seen[key] = str(path)
    exported(args.paths)
    _out(args.out, args.paths[0])  # before analysis' imports: a bad one answers at once
    from analysis.report import write_report

    print(write_report(args.paths, args.out, baseline=args.baseline, target=args.target,
                       reference=args.reference))
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    if args.resolution < 2 or args.samples < 1:
        raise UsageError(f"--resolution {args.resolution} / --samples {args.samples}: need a resolution of "
                         f"at least 2 points per axis and at least 1 sample.", "e.g. --resolution 21 "
                         "--samples 2048")
    points = args.resolution ** 2 + args.resolution  # the 2D grid and the 1D axis (landscape.grid_points)
    if points * BYTES_PER_POINT > _memory() // 4:
        most = int((_memory() // 4 // BYTES_PER_POINT) ** 0.5)
        raise UsageError(f"--resolution {args.resolution}: {points:,} grid points a trial would take about "
                         f"{points * BYTES_PER_POINT / 2**30:,.0f} GiB here, over a quarter of this machine's "
                         f"{_memory() / 2**30:.0f} GiB.", f"--resolution {min(most, 201)} or less (21 is the default; "
                         f"Li et al. use 51)")
    exported([args.path])
    if args.out:  # the default, <path>/report, is in the experiment: the lease says if it cannot be written
        _out(args.out, args.path)
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
