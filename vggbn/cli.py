"""`vggbn train | presets | sweep | resume | export | report | landscape`.

Errors for people: what went wrong and how to fix it on stderr, exit code 2, no traceback unless
--debug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import DEFAULT_RECIPE, PRESETS, RECIPES, ConfigError, TrialConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the command line: printed as 'vggbn: error: ...', exit code 2."""


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
    from tqdm import tqdm

    from .data import load
    from .train import fit, provenance, resolve_device

    flat = parse_sets(args.set)
    for key in ("preset", "recipe"):
        if getattr(args, key) is not None:
            flat[key] = getattr(args, key)
    try:
        cfg = TrialConfig.from_flat(flat)
    except ConfigError as e:
        raise UsageError(f"bad trial config: {e}\nFix: see `vggbn presets` and the "
                         f"TrialConfig fields in the README.") from None
    device = resolve_device(cfg.device)
    data = load(cfg, device)  # before the progress bar: a missing dataset fails cleanly
    if not args.quiet:  # say what is trained: the recipe fills everything not set
        default = "" if "recipe" in flat else " (default; --recipe seed for the study's)"
        print(f"{cfg.preset or cfg.arch} on {cfg.dataset}, {device}: recipe {cfg.recipe}{default}: "
              f"{cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
              f"{cfg.schedule}, augment {'on' if cfg.augment else 'off'}, precision {cfg.precision}",
              file=sys.stderr)
        same = _same_as_other_preset(cfg, flat)
        if same:
            print(f"note: under recipe {cfg.recipe}, preset {cfg.preset} trains exactly the config of "
                  f"preset {same} (the study's rows are defined against --recipe seed)", file=sys.stderr)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_flat(), indent=2) + "\n")
        (out / "provenance.json").write_text(json.dumps(provenance(device), indent=2) + "\n")
        log = open(out / "metrics.jsonl", "w")
    bar = tqdm(total=cfg.epochs, desc=cfg.preset or cfg.arch, unit="epoch", file=sys.stderr,
               disable=args.quiet)

    def on_epoch(metrics, state):
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", test_acc=f"{metrics['test_acc']:.4f}")
        if out is not None:
            log.write(json.dumps(metrics) + "\n")
            log.flush()

    try:
        result = fit(cfg, on_epoch=on_epoch, data=data)
    finally:
        bar.close()
        if out is not None:
            log.close()
    if out is not None:
        summary = {k: v for k, v in result.items() if k not in ("history", "steps")}
        (out / "result.json").write_text(json.dumps({"config": cfg.to_flat(), "result": summary,
                                                     "provenance": provenance(device)}, indent=2) + "\n")
        if result["steps"]:
            with open(out / "steps.jsonl", "w") as f:
                f.writelines(json.dumps(s) + "\n" for s in result["steps"])
    keys = ["epoch", "train_loss", "train_acc", "val_acc", "test_loss", "test_acc", "images_per_s"]
    line = "  ".join(f"{k}={_fmt(result[k])}" for k in keys if k in result)
    print(f"{line}  params={result['params']:,}  diverged={result['diverged']}"
          + (f"  -> {out}" if out else ""))
    return 0


def _same_as_other_preset(cfg: TrialConfig, flat: dict[str, Any]) -> str | None:
    """An earlier row of the study's table that, with the same keys, resolves to cfg's very config
    (e.g. vgg_a_bn for vgg_a_bn_sgd under the SGD recipe; vgg_a_bn itself gets no note)."""
    if cfg.preset is None:
        return None
    mine = {**cfg.to_flat(), "preset": None}
    for name in list(PRESETS)[:list(PRESETS).index(cfg.preset)]:
        if {**TrialConfig.from_flat({**flat, "preset": name}).to_flat(),
                                   "preset": None} == mine:
            return name
    return None


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------- presets
def cmd_presets(args: argparse.Namespace) -> int:
    from .models import build_model, count_params

    rows = []
    for name, p in PRESETS.items():
        cfg = TrialConfig.from_flat({"preset": name})
        rows.append({"preset": name, "section": p["section"], "label": p["label"],
                     "flags": ", ".join(f"{k}={v}" for k, v in p["flags"].items()),
                     "params": count_params(build_model(cfg, 3, 10))})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["preset", "section", "label", "params", "flags"]
    table = [[r[c] if c != "params" else f"{r[c]:,}" for c in cols] for r in rows]
    widths = [max(len(str(x)) for x in [c, *[t[i] for t in table]]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join((str(x).rjust(w) if c == "params" else str(x).ljust(w))
                        for x, w, c in zip(t, widths, cols)))
    print("\nparams with CIFAR-10 input (3x32x32, 10 classes). Recipes:")
    for name, r in RECIPES.items():
        print(f"  {name}{' (default)' if name == DEFAULT_RECIPE else ''}: {r['description']}")
    return 0


# ---------------------------------------------------------------------- sweeps (Ray)
def _summary_lines(summary: dict) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["status"].items()))
    wall = f" in {summary['wall_time_s']:.0f} s" if summary.get("wall_time_s") else ""
    return (f"{summary['trials']} trials ({counts}){wall}; exported trials.parquet, epochs.parquet"
            + (", steps.parquet" if summary["steps"] else "")
            + (", probes.parquet" if summary.get("probes") else "") + f" to {summary['path']}"
            + "".join(f"\n  errored {t}: {e}" for t, e in sorted(summary.get("errors", {}).items()))
            + "".join(f"\n  restored {t}: {n}" for t, n in sorted(summary.get("restore_notes", {}).items())))


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep

    spec = sweep.load_spec(args.file, parse_sets(args.set))
    if args.dry_run:
        print(sweep.dry_run(spec))
        return 0
    print(_summary_lines(sweep.run_sweep(spec, address=args.address)))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from . import sweep

    print(_summary_lines(sweep.resume_sweep(args.path, address=args.address)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import sweep

    sweep._spec_of(args.path)  # a clear error when this is not a sweep directory
    print(_summary_lines(sweep.export(args.path)))
    return 0


# ---------------------------------------------------------------------- report
def _optimization_figures(results, figs: Path) -> list[tuple[str, Path, str]]:
    """(title, png, caption) for the Santurkar probes and Li et al. surfaces, when the data is there."""
    from analysis import plots

    out = []
    if results.probes is not None and len(results.probes):
        out.append(("How BatchNorm helps optimisation (Santurkar et al. 2018, Fig. 4)",
                    plots.save(plots.santurkar_triple(results.trials, results.probes),
                               figs / "santurkar_fig4.png"),
                    "At weights w with minibatch gradient g, for step sizes η (multiples of the "
                    "current lr): (a) the band of L(w − ηg), (b) the band of ‖∇L(w − ηg) − ∇L(w)‖, "
                    "(c) max over η of ‖∇L(w − ηg) − ∇L(w)‖ / ‖ηg‖. Same minibatch, BN in training "
                    "mode as in the step."))
    if results.surfaces is not None and len(results.surfaces):
        s = results.surfaces
        out.append(("Loss landscape, 1D (Li et al. 2018)",
                    plots.save(plots.landscape_1d(results.trials, s), figs / "landscape_1d.png"),
                    "Final checkpoints, one filter-normalised random direction; eval mode on a "
                    "fixed subset of the training set."))
        if (s["kind"] == "2d").any():
            out.append(("Loss landscape, 2D (Li et al. 2018)",
                        plots.save(plots.landscape_2d(results.trials, s), figs / "landscape_2d.png"),
                        "Two filter-normalised directions; one colour scale for all panels."))
            out.append(("Loss landscape, 3D",
                        plots.save(plots.landscape_3d(results.trials, s), figs / "landscape_3d.png"),
                        ""))
    return out


def _missing_trials(results) -> list[str]:
    """Grid combinations the spec asks for that have no trial in the export."""
    import itertools
    from collections import Counter

    missing = []
    for meta in results.specs:
        spec = meta.get("spec") or {}
        grid = {k: d["grid"] for k, d in (spec.get("space") or {}).items() if d.get("grid")}
        if not grid:
            continue
        t = results.trials[results.trials["sweep"] == spec.get("name")]
        have = Counter(tuple(str(v) for v in row) for row in t[list(grid)].itertuples(index=False))
        want = Counter(tuple(str(v) for v in c) for c in itertools.product(*grid.values())
                       for _ in range(spec.get("num_samples", 1) * max(1, len(spec.get("cases") or []))))
        for combo, n in (want - have).items():
            missing += [", ".join(f"{k}={v}" for k, v in zip(grid, combo))] * n
    return missing


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from analysis import plots, table
    from analysis.results import load, swept_keys

    try:
        results = load(*args.paths)
    except FileNotFoundError as e:
        raise UsageError(f"{e}\nFix: give the directory of a finished or interrupted sweep, "
                         f"e.g. results/quick.") from None
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    figs = out / "figures"
    reference = table.load_reference(args.reference) if args.reference else None
    tab, info = table.comparison_table(results.trials, results.epochs, baseline=args.baseline,
                                       target=args.target, reference=reference)
    paths = table.write_tables(tab, info, out)
    trials = results.trials
    names = ", ".join(dict.fromkeys(trials["sweep"].astype(str))) if len(trials) else "?"
    md = [f"# vggbn report: {names}", ""]
    missing = _missing_trials(results)
    incomplete = trials[trials["status"] != "completed"]
    if results.partial or missing:
        pending = trials["status"] == "incomplete"
        started = pending & (trials["epochs_run"] > 0)
        md += [f"> **Partial sweep**: {int(started.sum())} trials unfinished and "
               f"{int((pending & ~started).sum()) + len(missing)} not started; the table uses the "
               f"completed ones (run `vggbn resume` to finish).", ""]
        md += [f"> missing: {m}" for m in missing] + ([""] if missing else [])
    for meta in results.specs:
        desc = (meta.get("spec") or {}).get("description")
        if desc:
            md += [f"*{(meta.get('spec') or {}).get('name')}*: {desc}", ""]
    md += [f"{len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in
                                                 trials["status"].value_counts().items()), ""]
    md += ["## Comparison table", "", paths["md"].read_text(), "",
           f"Also as [CSV]({paths['csv'].name}) and [LaTeX]({paths['tex'].name}).", ""]
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    fig = plots.save(plots.accuracy_bars(tab, info), figs / "accuracy.png")
    md += [f"![test accuracy by variant]({rel(fig)})", ""]
    fig = plots.save(plots.learning_curves(trials, results.epochs), figs / "learning_curves.png")
    md += ["## Learning curves", "", f"![learning curves]({rel(fig)})", ""]
    swept = swept_keys(trials)
    if results.steps is not None and len(results.steps) and "lr" in swept and "bn" in swept:
        band = trials
        if "optimizer" in swept:  # the course's band: the optimizer run at the most learning rates
            best = trials.groupby("optimizer")["lr"].nunique().idxmax()
            band = trials[trials["optimizer"] == best]
        fig = plots.save(plots.loss_band(band, results.steps[results.steps["trial_id"].isin(
            band["trial_id"])]), figs / "loss_band.png")
        md += ["## Loss band (BN vs no BN, across learning rates)", "",
               "Per training step, the min and max of the training loss over the runs with "
               "different learning rates (the course's band, per step across runs).", "",
               f"![loss band]({rel(fig)})", ""]
    for meta in results.specs:
        spec = meta.get("spec") or {}
        if spec.get("search") in ("optuna", "random") or (spec.get("scheduler") or {}).get("type") == "asha":
            params = [k for k in (spec.get("space") or {}) if k != "seed"]
            t = trials[trials["sweep"] == spec.get("name")]
            metric = "best_val_acc" if spec.get("metric") == "val_acc" else spec.get("metric", "test_acc")
            fig = plots.save(plots.hpo_progress(t, metric, spec.get("mode", "max"), params),
                             figs / f"hpo_{spec.get('name')}.png")
            md += [f"## Search: {spec.get('name')}", "", f"![search progress]({rel(fig)})", ""]
    for title, png, caption in _optimization_figures(results, figs):
        md += [f"## {title}", "", caption, "", f"![{title}]({rel(png)})", ""]
    if results.probes is not None and len(results.probes):
        beta = results.probes.groupby(["trial_id", "step"])["beta"].max().groupby("trial_id").median()
        md += ["Median effective β-smoothness per trial (max over η at each probe):", ""]
        md += [f"- {trials.set_index('trial_id').loc[t, 'label']}: {b:.3g}" for t, b in beta.items()]
        md += [""]
    md += ["## Trials that did not complete", ""]
    if len(incomplete):
        cols = [c for c in ("trial_id", "label", "seed", "status", "epochs_run", "error")
                if c in incomplete]
        md += [_md_table(incomplete[cols].fillna("")), ""]
    else:
        md += ["None: every trial completed.", ""]
    wall = pd.to_numeric(trials.get("wall_time_s"), errors="coerce").sum()
    prov_cols = [c for c in trials.columns if c.startswith("prov_") and c not in ("prov_created_utc",)]
    md += ["## Provenance", "", f"- sweeps: {', '.join(results.paths)}",
           f"- trial compute: {wall / 3600:.2f} h in {len(trials)} trials"]
    for c in prov_cols:
        vals = [str(v) for v in trials[c].dropna().unique()]
        if vals:
            md.append(f"- {c.removeprefix('prov_')}: {', '.join(vals[:5])}"
                      + (f" (+{len(vals) - 5} more)" if len(vals) > 5 else ""))
    (out / "report.md").write_text("\n".join(md) + "\n")
    n_ok = int(tab["n"].sum()) if len(tab) else 0
    print(f"report: {out / 'report.md'}  ({len(tab)} variants, {n_ok} completed trials"
          + (f", {len(incomplete)} not completed" if len(incomplete) else "")
          + (f", {len(missing)} missing" if missing else "") + ")")
    return 0


def _md_table(df) -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(str(v).replace("|", "/") for v in r) + " |"
             for r in df.itertuples(index=False)]
    return "\n".join(rows)


def cmd_landscape(args: argparse.Namespace) -> int:
    from analysis.results import load

    from . import sweep

    if not (Path(args.path) / "trials.parquet").is_file():
        raise UsageError(f"{args.path}: no trials.parquet here.\nFix: run the sweep to its end "
                         f"(`vggbn resume {args.path}`) or `vggbn export {args.path}` first.")
    summary = sweep.landscape(args.path, trial_ids=args.trials, resolution=args.resolution,
                              samples=args.samples, seed=args.seed, address=args.address)
    results = load(args.path)
    figs = Path(args.path) / "report" / "figures"
    pngs = [png for _, png, _ in _optimization_figures(results, figs)]
    print(f"surfaces of {summary['trials']} trials ({summary['points']} points) -> "
          f"{Path(args.path) / 'surfaces.parquet'}; figures: {', '.join(str(p) for p in pngs)}"
          + (f"; skipped (no checkpoint or diverged): {', '.join(summary['skipped'])}"
             if summary["skipped"] else ""))
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
    sw.set_defaults(func=cmd_sweep)

    rs = sub.add_parser("resume", help="continue an interrupted sweep, then export")
    rs.add_argument("path", help="the sweep's directory, e.g. results/quick")
    rs.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    rs.set_defaults(func=cmd_resume)

    ex = sub.add_parser("export", help="write trials/epochs/steps.parquet for a sweep directory")
    ex.add_argument("path", help="the sweep's directory, e.g. results/quick")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="the comparison table, figures and report.md of sweeps")
    rp.add_argument("paths", nargs="+", help="sweep directories, e.g. results/quick")
    rp.add_argument("--baseline", default="vgg_a", help="preset of the baseline row (default vgg_a)")
    rp.add_argument("--target", type=float, help="accuracy (fraction) for epochs/seconds-to-target "
                    "(default: the baseline's mean final accuracy)")
    rp.add_argument("--reference", help="CSV preset,reference_test_acc (default: the study's)")
    rp.add_argument("--out", help="output directory (default: <first path>/report)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("landscape", help="Li et al. loss surfaces around trials' final checkpoints")
    ls.add_argument("path", help="a sweep directory, e.g. results/landscape")
    ls.add_argument("--trials", nargs="+", help="trial ids (default: every trial with a checkpoint)")
    ls.add_argument("--resolution", type=int, default=21, help="points per axis (default 21)")
    ls.add_argument("--samples", type=int, default=2048, help="training images evaluated per point")
    ls.add_argument("--seed", type=int, default=0, help="seed of the directions and the subset")
    ls.add_argument("--address", help="a Ray cluster to spread the grid points over")
    ls.set_defaults(func=cmd_landscape)
    return p




def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .sweep import SweepSpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError, DataError, SweepSpecError) as e:
        if args.debug:
            raise
        print(f"vggbn {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vggbn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
