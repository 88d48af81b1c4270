"""report.md (and report.html, the same for a browser): the conclusions in words, the comparison
table, the effects of crossed flags, the figures, the trials that did not complete, provenance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vggbn import progress
from vggbn.files import write_atomic
from vggbn.spec.model import SweepSpec
from vggbn.spec.space import points
from vggbn.store.exports import report_dir

from analysis import hpo, pbt, plots, smoothness, stats, table, tradeoffs
from analysis.report_html import markdown_text, render

from analysis.frames import swept_keys
from analysis.results import load


def optimization_figures(results, figs: Path) -> list[tuple[str, Path, str]]:
    """(title, png, caption) for the Santurkar probes and Li et al. surfaces, when the data is there."""
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


def landscape_figures(path: str, out: str | Path | None = None) -> list[str]:
    """Draw an experiment's probe and surface figures into <out>/figures (report_dir(path) unless
    given); the experiment may be local or in a bucket."""
    figs = Path(out or report_dir(path)) / "figures"
    return [str(png) for _, png, _ in optimization_figures(load(path), figs)]


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


def _smoothness_section(trials, probes, comp) -> list[str]:
    """The paper's claim as a number: BN / no-BN median β with its 95% CI, per setup, in words."""
    beta = smoothness.per_probe(probes).groupby("trial_id")["beta"].median().rename("beta")
    per = trials.set_index("trial_id")[["label", "seed"]].join(beta, how="inner").sort_values(["label", "seed"])
    md = ["Median effective β-smoothness per trial (max over η at each probe, median over probes), "
          "by variant in seed order:", ""]
    md += [f"- {label}: " + ", ".join(f"{b:.3g}" for b in g["beta"]) + " (seed " + ", ".join(map(str, g["seed"]))
           + ")" for label, g in per.groupby("label", sort=True)]
    if comp.empty:
        return md + [""]
    md += ["", "## Is BN smoother? (the paper's claim)", "",
           "| setup | test acc no BN / BN | median β no BN / BN | BN / no-BN β ratio [95% CI] | "
           "‖∇L(w−ηg) − ∇L(w)‖ (max over η, median over probes) no BN / BN | verdict |", "|---|---|---|---|---|---|"]
    for _, r in comp.iterrows():
        md.append(f"| {r['setup']} | {100 * r['test_acc_no_bn']:.1f}% / {100 * r['test_acc_bn']:.1f}%"
                  f"{'' if r['both_train'] else ' (not both train)'} | {r['beta_no_bn']:.3g} / "
                  f"{r['beta_bn']:.3g} | **{r['ratio']:.2f}** [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                  f"{r['grad_diff_no_bn']:.3g} / {r['grad_diff_bn']:.3g} | {r['direction']} |")
    methods = "; ".join(dict.fromkeys(comp["method"]))
    md += ["", f"CI: {methods}. A network \"trains\" here when each of its runs completed (none "
           f"diverged) with a final test accuracy of at least 5x chance (50% with 10 classes, 5% "
           f"on CIFAR-100). A probe whose loss overflowed counts as infinitely rough. Ratio < 1: "
           f"BN's landscape is smoother."
           + (" With fewer than 3 seeds a side, the CI covers the variation along the run, not "
              "between seeds: add seeds (>= 3) to bootstrap over them." if "block" in methods else ""),
           "",
           f"**{smoothness.verdict(comp)}**", ""]
    return md


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _conclusions(tab, info, effects: dict, smooth: str | None) -> list[str]:
    """The opening lines: which variants differ from the baseline after Holm's correction (Δ with
    its CI and p), which do not, the factorial's effects, the smoothness verdict."""
    md = ["## Conclusions", ""]
    rest = tab[~tab["baseline"]] if len(tab) else tab
    if not len(rest):
        md.append("- One variant only: nothing to compare against a baseline.")
    else:
        base = tab[tab["baseline"]]
        n_base = int(base["n"].iloc[0]) if len(base) else 0
        md.append(f"- Against the baseline **{info['baseline_label']}** ({n_base} completed seeds), after "
                  f"Holm's correction over the {info['family']} variant{'s' * (info['family'] != 1)} "
                  f"tested (test accuracy, points):"
                  if info["family"] else f"- No variant could be tested against the baseline "
                  f"**{info['baseline_label']}** ({n_base} completed seeds):")
        sig = rest[rest["significant"] == True]  # noqa: E712  (None: not tested)
        same = rest[rest["significant"] == False]  # noqa: E712
        for _, r in sig.iterrows():
            paired = (f"; paired on the {r['n_pairs']} shared seeds {_pts(r['paired_delta'])} "
                      f"[{_pts(r['paired_ci_low'])}, {_pts(r['paired_ci_high'])}]"
                      if r["n_pairs"] >= 2 and pd.notna(r["paired_delta"]) else "")
            md.append(f"  - **{r['variant']}** is {abs(100 * r['delta']):.2f} points "
                      f"{'higher' if r['delta'] > 0 else 'lower'}: Δ {_pts(r['delta'])} "
                      f"[{_pts(r['delta_ci_low'])}, {_pts(r['delta_ci_high'])}] (Welch p = "
                      f"{stats.fmt_p(r['p_value'])}, Holm p = {stats.fmt_p(r['p_holm'])}; Hedges' g = "
                      f"{r['hedges_g']:.2f}{paired}).")
        if len(same):
            md.append("  - No difference at 0.05 after correction: " + "; ".join(
                f"{r['variant']} Δ {_pts(r['delta'])} [{_pts(r['delta_ci_low'])}, "
                f"{_pts(r['delta_ci_high'])}] (Holm p = {stats.fmt_p(r['p_holm'])})"
                for _, r in same.iterrows()) + ".")
        untested = rest[rest["significant"].isna()]
        if len(untested):
            md.append("  - Not tested (fewer than 2 completed seeds on a side, or no variation; n in "
                      "brackets): " + ", ".join(f"{r['variant']} ({r['n']})" for _, r in untested.iterrows()) + ".")
    for name, eff in effects.items():
        if eff.ok:
            inter = eff.terms["interaction"]
            said = eff.terms.loc[~inter | (eff.terms["p_holm"] < stats.ALPHA), "sentence"]
            md.append(f"- Factorial {' × '.join(eff.factors)}" + (f" ({name})" if len(effects) > 1 else "")
                      + f", {eff.n} trials: " + " ".join(said)
                      + ("" if (eff.terms.loc[inter, "p_holm"] < stats.ALPHA).any()
                         else " No two-way interaction is significant after Holm's correction."))
    if smooth:
        md.append(f"- Smoothness (Santurkar et al. 2018): {smooth}")
    return md + [""]


def _effects_section(effects: dict, metric: str) -> list[str]:
    """Main effects and two-way interactions of crossed flags, per sweep, or why there are none."""
    md = ["## Effects and interactions", ""]
    for name, eff in effects.items():
        md += [f"### {name}", ""] if len(effects) > 1 else []
        if not eff.ok:
            md += [f"No factorial model: {eff.reason}", ""]
            continue
        lo, hi = eff.replicates
        md += [f"A full factorial of {' × '.join(eff.factors)}: {eff.cells} "
               f"combinations with {lo if lo == hi else f'{lo}-{hi}'} completed seeds each, {eff.n} trials. "
               f"OLS of {metric} (points) on effect-coded (sum-to-zero) flags with main effects and "
               f"every two-way interaction ({eff.resid_df} residual df; higher interactions stay in "
               f"the residual). Effect: the change from a flag's low to its high level, averaged "
               f"over the other flags; interaction A × B: how much A's effect changes from B's low "
               f"level to its high one. p: the F-test of the term (for one coefficient, its t-test); "
               f"Holm over the {len(eff.terms)} terms, and the words follow the Holm p."
               + (" A flag with more than two levels has no single effect: the F-test of all its "
                  "levels at once." if (eff.terms["df"] > 1).any() else ""), "",
               "| term | levels | effect, points [95% CI] | p | Holm p |", "|---|---|---|---:|---:|"]
        for _, r in eff.terms.iterrows():
            levels = "" if r["interaction"] else " → ".join(map(str, eff.levels[r["term"]]))
            effect = ("–" if pd.isna(r["effect"])
                      else f"{stats.signed(r['effect'], 2)} [{stats.signed(r['ci_low'], 2)}, "
                      f"{stats.signed(r['ci_high'], 2)}]")
            md.append(f"| {r['term']} | {levels} | {effect} | {stats.fmt_p(r['p'])} | "
                      f"{stats.fmt_p(r['p_holm'])} |")
        md += [""] + [f"- {s}" for s in eff.sentences] + [""]
    return md


def _adaptive_sweeps(results):
    """(stored spec, its trials) of each sweep run with adaptive seeds."""
    for meta in results.specs:
        raw = meta.get("spec") or {}
        if raw.get("seeds"):
            spec = SweepSpec.model_validate(raw, context={"stored": True})
            yield spec, results.trials[results.trials["sweep"] == spec.name]


def _adaptive_cis(tab, info: dict, adaptive: list):
    """The table's 95% CI of a variant run with adaptive seeds: the corrected interval its stopping
    rule reports (a plain t interval after stopping on the width covers ~90%, not 95%)."""
    tab, names = tab.copy(), []
    for spec, t in adaptive:
        t = t[t["status"] == "completed"]
        for i, row in tab.iterrows():
            vals = pd.to_numeric(t.loc[t["variant"] == row["variant_id"], info["metric"]],
                                 errors="coerce").dropna()
            if len(vals) >= 2 and len(vals) == row["n"]:  # the row is this sweep's trials alone
                hw = spec.seeds.halfwidth(vals)
                tab.loc[i, ["ci_low", "ci_high"]] = vals.mean() - hw, vals.mean() + hw
        names.append(spec.name)
    return tab, ({**info, "adaptive": ", ".join(names)} if names else info)


def _seeds_section(adaptive: list) -> list[str]:
    """Adaptive seeds: per variant, the seeds used, the corrected CI half-width, whether the target
    was met; the trial-epochs spent against a fixed grid of `max` seeds."""
    md = []
    for spec, t in adaptive:
        if t.empty:
            continue
        rule, metric = spec.seeds, spec.primary_metric
        unit = "points" if metric.endswith("_acc") else metric
        md += [f"## Seeds: {spec.name} (adaptive)", "",
               f"Each variant started with {rule.min} seeds and got one more while the 95% CI "
               f"half-width of its mean {metric} was above {rule.ci_halfwidth:g} {unit}, up to "
               f"{rule.max}. The half-width uses the t quantile at 1 − 0.05/(2·{rule.looks}) "
               f"(Bonferroni over the {rule.looks} possible looks), so the interval covers the mean "
               f"with probability ≥ 95% whichever look stopped; the comparison table and the "
               f"accuracy figure show this interval.", "",
               f"| variant | seeds | completed | mean{' %' if metric.endswith('_acc') else ''} | corrected 95% CI | "
               f"half-width ({unit}) | target |",
               "|---|---:|---:|---:|---|---:|---|"]
        spent = fixed = 0.0
        for _, g in t.groupby("variant", sort=False):
            done = g[g["status"] == "completed"]
            vals = pd.to_numeric(done[metric], errors="coerce").dropna().to_list()
            hw = rule.halfwidth(vals) * points(metric)
            mean = sum(vals) / len(vals) * points(metric) if vals else float("nan")
            met = hw <= rule.ci_halfwidth
            why = ("met" if met else f"missed (max {rule.max} seeds)" if len(g) >= rule.max
                   else "missed (stopped before max: budget or unfinished)")
            label = g["label"].iloc[0]
            ci = f"[{mean - hw:.2f}, {mean + hw:.2f}]" if hw < float("inf") else "–"
            md.append(f"| {label} | {len(g)} | {len(vals)} | {mean:.2f} | {ci} | "
                      f"{hw:.2f} | {why} |")
            epochs = pd.to_numeric(g["epochs"], errors="coerce").max()
            spent += pd.to_numeric(g["epochs_run"], errors="coerce").sum()
            fixed += rule.max * epochs
        n_var = t["variant"].nunique()
        md += ["", f"Trial-epochs spent: **{spent:,.0f}** of the {fixed:,.0f} a fixed grid of "
               f"{rule.max} seeds would take ({n_var} variants; {spent / fixed:.0%}); "
               f"{len(t)} trials of at most {n_var * rule.max}.", ""]
    return md


def _md_table(df) -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(str(v).replace("|", "/") for v in r) + " |"
             for r in df.itertuples(index=False)]
    return "\n".join(rows)


def write_report(paths: list[str], out: str | Path | None = None, *, baseline: str = "vgg_a",
                 target: float | None = None, reference: str | None = None) -> str:
    """Write report.md, the tables and the figures of one or more exported sweeps into `out`
    (default: report_dir(first path): <path>/report, or reports/<name>/ for a bucket's). Returns
    a one-line summary."""
    step = progress.Steps("report", ["loading", "table", "statistics", "figures", "writing"])  # stderr lines
    step("loading", ", ".join(map(str, paths)))
    results = load(*paths)
    out = Path(out) if out else report_dir(paths[0])
    figs = out / "figures"
    ref = table.load_reference(reference) if reference else None
    step("table")
    tab, info = table.comparison_table(results.trials, results.epochs, baseline=baseline,
                                       target=target, reference=ref)
    adaptive = list(_adaptive_sweeps(results))  # (stored spec, trials) of each adaptive-seed sweep
    tab, info = _adaptive_cis(tab, info, adaptive)
    paths = table.write_tables(tab, info, out)
    trials = results.trials
    step("statistics")
    effects = {name: stats.factorial_effects(trials[trials["sweep"] == name], info["metric"])
               for name in dict.fromkeys(trials["sweep"].astype(str))} if len(trials) else {}
    has_probes = results.probes is not None and len(results.probes)
    comp = smoothness.smoothness_comparison(trials, results.probes) if has_probes else None
    names = ", ".join(dict.fromkeys(trials["sweep"].astype(str))) if len(trials) else "?"
    md = [f"# vggbn report: {names}", ""]
    missing = _missing_trials(results)
    incomplete = trials[trials["status"] != "completed"]
    budget_ids = set()  # trials the spec's budget ended before they started: not "partial"
    for meta in results.specs:
        b = meta.get("budget")
        if b:
            name = (meta.get("spec") or {}).get("name")
            budget_ids |= {f"{name}/{t}" if len(results.paths) > 1 else t for t in b["not_started"]}
            md += [f"> **Budget reached**: {b['spent']:.3g} of {b['limit']:g} "
                   f"{b['unit'].replace('_', '-')} used ({name}), so {len(b['not_started'])} trials "
                   f"not started (the spec's `budget`; the table uses the completed ones).", ""]
    pending = (trials["status"] == "incomplete") & ~trials["trial_id"].isin(budget_ids)
    if pending.any() or missing:
        started = pending & (trials["epochs_run"] > 0)
        md += [f"> **Partial sweep**: {int(started.sum())} trials unfinished and "
               f"{int((pending & ~started).sum()) + len(missing)} not started; the table uses the "
               f"completed ones (run `vggbn resume` to finish).", ""]
        md += [f"> missing: {m}" for m in missing] + ([""] if missing else [])
    unverified = trials.dropna(subset=["export_notes"]) if "export_notes" in trials else trials.iloc[:0]
    if len(unverified):  # what the export could not check (a trial directory gone, a config edited after)
        md += ["> **Unverified**: " + "; ".join(f"{r.trial_id}: {markdown_text(r.export_notes)}"
                                              for r in unverified.itertuples()), ""]
    md += _conclusions(tab, info, effects, smoothness.verdict(comp) if has_probes and not comp.empty else None)
    for meta in results.specs:
        desc = (meta.get("spec") or {}).get("description")
        if desc:
            md += [f"*{markdown_text((meta.get('spec') or {}).get('name'))}*: {markdown_text(desc)}", ""]
    md += [f"{len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in  # the statuses that occur
                                                 trials["status"].value_counts().items() if v), ""]
    md += ["## Comparison table", "", paths["md"].read_text(), "",
           f"Also as [CSV]({paths['csv'].name}) and [LaTeX]({paths['tex'].name}).", ""]
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    step("figures")
    fig = plots.save(plots.accuracy_dots(tab, info, trials), figs / "accuracy.png")
    md += [f"![test accuracy by variant: each seed, the mean and its 95% CI]({rel(fig)})", ""]
    md += _seeds_section(adaptive)
    md += _effects_section(effects, info["metric"])
    md += tradeoffs.report_sections(results, tab, info, figs, rel)
    md += hpo.report_sections(results, figs, rel)
    md += pbt.report_sections(results, figs, rel)
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
        widths = smoothness.band_width(band, results.steps)
        md += ["## Loss band (BN vs no BN, across learning rates)", "",
               "Per training step, the min and max of the training loss over the runs with "
               "different learning rates (the course's band, per step across runs).", "",
               f"![loss band]({rel(fig)})", ""]
        if len(widths) == 2:
            md += [f"Mean width of the band over the steps: no BN {widths[False]:.3f}, BN "
                   f"{widths[True]:.3f} (ratio BN / no BN {widths[True] / widths[False]:.2f}).", ""]
    for meta in results.specs:
        spec = meta.get("spec") or {}
        if spec.get("search") in ("optuna", "random") or (spec.get("scheduler") or {}).get("type") == "asha":
            params = [k for k in (spec.get("space") or {}) if k != "seed"]
            t = trials[trials["sweep"] == spec.get("name")]
            metric, mode = hpo.objectives(spec)[0]
            fig = plots.save(plots.hpo_progress(t, hpo.metric_column(t, metric), mode, params),
                             figs / f"hpo_{spec.get('name')}.png")
            md += [f"## Search: {spec.get('name')}", "", f"![search progress]({rel(fig)})", ""]
    for title, png, caption in optimization_figures(results, figs):
        md += [f"## {title}", "", caption, "", f"![{title}]({rel(png)})", ""]
    if has_probes:
        md += _smoothness_section(trials, results.probes, comp)
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
    step("writing", str(out))
    text = "\n".join(md) + "\n"
    write_atomic(out / "report.md", text)
    page = write_atomic(out / "report.html", render(text, out))  # the same Markdown, self-contained
    n_ok = int(tab["n"].sum()) if len(tab) else 0
    return (f"report: {out / 'report.md'}, {page}  ({len(tab)} variants, {n_ok} completed trials"
            + (f", {len(incomplete)} not completed" if len(incomplete) else "")
            + (f", {len(missing)} missing" if missing else "") + ")")
