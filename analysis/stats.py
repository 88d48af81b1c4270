"""Statistics that hold for a whole table, and the effects of crossed flags.

Per variant against the baseline (scipy / statsmodels):
- mean ± sample std (ddof=1) and a 95% Student-t CI of the mean;
- Δ = variant − baseline with Welch's t-test (unequal variances, Welch–Satterthwaite df): its 95%
  CI and two-sided p;
- Holm–Bonferroni adjusted p over the family of rows tested against the baseline (statsmodels
  `multipletests(method="holm")`): the family-wise error stays at 0.05 however many rows there are;
- Hedges' g: Δ over the pooled SD times J = 1 − 3/(4(n1+n2) − 9), with the normal-approximation
  CI of Borenstein et al. (2009, ch. 4): Var(g) = J²·((n1+n2)/(n1·n2) + d²/(2(n1+n2)));
- the paired comparison on the seeds both sides completed: a trial's seed fixes its data order and
  augmentation, so two variants run with one seed are a matched pair (scipy `ttest_rel`).

Crossed flags (bn × dropout × residual, ...): an OLS over the trials with effect (sum-to-zero)
coding, main effects and every two-way interaction; see `factorial_effects`.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analysis.frames import swept_keys

ALPHA = 0.05
MAX_LEVELS = 6  # more values than this: a searched range, not a grid of levels


def _clean(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[~np.isnan(a)]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) with the sample std and a Student-t interval; NaN where n < 2."""
    a = _clean(values)
    if len(a) == 0:
        return (math.nan,) * 4
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(a.std(ddof=1))
    if std == 0:  # identical seeds (a saturated metric): a zero-width interval, without scipy's warning
        return mean, 0.0, mean, mean
    lo, hi = stats.t.interval(confidence, len(a) - 1, loc=mean, scale=std / math.sqrt(len(a)))
    return mean, std, float(lo), float(hi)


def welch(a, b, confidence: float = 0.95) -> dict:
    """Δ = mean(a) − mean(b) with Welch's t-test: delta, ci_low, ci_high, t, df, p (NaN where a
    side has fewer than 2 values)."""
    a, b = _clean(a), _clean(b)
    out = dict(delta=math.nan, ci_low=math.nan, ci_high=math.nan, t=math.nan, df=math.nan, p=math.nan)
    if len(a) and len(b):
        out["delta"] = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return out
    with warnings.catch_warnings():  # (nearly) constant sides: scipy's NaN / huge t, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        r = stats.ttest_ind(a, b, equal_var=False)
        ci = r.confidence_interval(confidence)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), t=float(r.statistic), df=float(r.df),
               p=float(r.pvalue))
    return out


def welch_p(a, b) -> float:
    """Two-sided Welch's t-test p-value; NaN when either side has fewer than 2 values."""
    return welch(a, b)["p"]


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values; NaN p's (rows not tested) are left out of the family and
    stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def hedges_g_from_stats(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int,
                        confidence: float = 0.95) -> dict:
    """Hedges' g of group 1 against group 2 from means, sample SDs and sizes: d, g, se, ci_low,
    ci_high (Borenstein et al. 2009, eqs. 4.18-4.23)."""
    out = dict(d=math.nan, g=math.nan, se=math.nan, ci_low=math.nan, ci_high=math.nan)
    if n1 < 2 or n2 < 2:
        return out
    pooled = math.sqrt(((n1 - 1) * s1 ** 2 + (n2 - 1) * s2 ** 2) / (n1 + n2 - 2))
    if not pooled > 0:
        return out
    d = (m1 - m2) / pooled
    j = 1 - 3 / (4 * (n1 + n2) - 9)  # = 1 − 3/(4 df − 1), the small-sample correction
    se = j * math.sqrt((n1 + n2) / (n1 * n2) + d ** 2 / (2 * (n1 + n2)))
    z = stats.norm.ppf(0.5 + confidence / 2)
    g = j * d
    return dict(d=d, g=g, se=se, ci_low=g - z * se, ci_high=g + z * se)


def hedges_g(a, b, confidence: float = 0.95) -> dict:
    """Hedges' g of sample a against sample b (see hedges_g_from_stats)."""
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return hedges_g_from_stats(0, 0, len(a), 0, 0, len(b))
    return hedges_g_from_stats(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b),
                               confidence)


def paired(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> dict:
    """a − b on the keys (seeds) both have, as a paired t-test: n_pairs, delta (mean difference),
    ci_low, ci_high, p; NaN with fewer than 2 pairs."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    out = dict(n_pairs=len(both), delta=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan)
    if len(both) < 2:
        return out
    with warnings.catch_warnings():  # identical differences: no test (NaN), no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        r = stats.ttest_rel(both["a"], both["b"])
        ci = r.confidence_interval(confidence)
    out.update(delta=float((both["a"] - both["b"]).mean()), ci_low=float(ci.low),
               ci_high=float(ci.high), p=float(r.pvalue))
    return out


# ---------------------------------------------------------------------- factorial designs
NAMES = {"bn": "BN", "dropout": "dropout", "residual": "the residual connection"}


@dataclass
class Effects:
    """A factorial model over one sweep's trials, or the reason there is none (`reason`)."""

    factors: list[str]
    levels: dict[str, list] = field(default_factory=dict)
    reason: str = ""
    n: int = 0
    replicates: tuple[int, int] = (0, 0)  # fewest and most completed trials in a combination
    resid_df: int = 0
    terms: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per term, with its sentence

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def cells(self) -> int:
        return math.prod(len(v) for v in self.levels.values())

    @property
    def sentences(self) -> list[str]:
        return list(self.terms["sentence"]) if "sentence" in self.terms else []


def design_factors(trials: pd.DataFrame) -> list[str]:
    """The swept keys (seed excluded) that are not a function of another factor: a preset sweep's
    flags follow from the preset, so its one factor is the preset."""
    keys = sorted(swept_keys(trials), key=lambda k: k != "preset")
    factors: list[str] = []
    for k in keys:
        if not any((trials.groupby(trials[f].map(str))[k].agg(lambda c: c.map(str).nunique()) == 1).all()
                   for f in factors):
            factors.append(k)
    return factors


def _sorted_levels(col: pd.Series) -> list:
    vals = list(dict.fromkeys(col.dropna()))
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def _phrases(key: str, levels: list) -> dict:
    """Words for a two-level flag: the subject ("BN", "dropout 0.5"), and at its low / high level."""
    lo, hi = levels
    name = NAMES.get(key, key)
    if isinstance(hi, (bool, np.bool_)) or (isinstance(lo, numbers.Real) and lo == 0):
        amount = "" if isinstance(hi, (bool, np.bool_)) else f" {hi:g}"
        return dict(subject=name + amount, low=f"without {name}", high=f"with {name}{amount}")
    return dict(subject=f"{key}={hi} (vs {lo})", low=f"at {key}={lo}", high=f"at {key}={hi}")


def fmt_p(p: float) -> str:
    """p as people read it: 3 decimals, scientific below 0.001."""
    return "–" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def signed(x: float, digits: int = 1) -> str:
    """+1.2 / -1.2, and +0.0 for a value that rounds to zero (never -0.0)."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def factorial_effects(trials: pd.DataFrame, metric: str = "test_acc", scale: float = 100.0) -> Effects:
    """Main effects and two-way interactions of the crossed flags of one sweep, or why not.

    Needs a full factorial: at least two factors, every combination of their levels with >= 2
    completed trials (seeds). Fits OLS of metric × scale (points) on effect-coded factors (a
    k-level factor: k − 1 columns, +1 at its level, −1 at the lowest level, sum to zero), main
    effects + every two-way interaction; higher interactions stay in the residual. For a two-level
    flag the effect is the change from its low to its high level averaged over the other factors
    (2 × its coefficient), and an interaction A × B is how much A's effect changes from B's low
    level to its high one (4 × the coefficient; textbooks' "AB effect" is half of it). p: the F-test
    of a term's coefficients (the type III test; for one coefficient, the t-test); Holm over the
    terms; the words follow the Holm p.
    """
    import statsmodels.api as sm

    factors = design_factors(trials)
    done = trials[(trials["status"] == "completed") & trials[metric].notna()] if len(trials) else trials
    eff = Effects(factors=factors)
    if len(factors) < 2:
        eff.reason = (f"only one factor varies ({factors[0]}): a one-way comparison, which the table "
                      f"makes" if factors else "no flag varies") + \
                     "; crossing two or more flags (e.g. sweeps/factorial.yaml) gives main effects and interactions."
        return eff
    for f in factors:
        eff.levels[f] = _sorted_levels(trials[f])
        if len(eff.levels[f]) > MAX_LEVELS:
            eff.reason = (f"{f} takes {len(eff.levels[f])} values (a searched range, not a grid of "
                          f"levels): no factorial model.")
            return eff
    counts = done.groupby([done[f].map(str) for f in factors]).size()
    cells = list(itertools.product(*(eff.levels[f] for f in factors)))
    n_of = {c: int(counts.get(tuple(map(str, c)), 0)) for c in cells}
    name = lambda c: ", ".join(f"{f}={v}" for f, v in zip(factors, c))  # noqa: E731
    missing = [c for c in cells if n_of[c] == 0]
    few = [c for c in cells if n_of[c] == 1]
    if missing or few:
        bad = missing or few
        what = "no completed trial at" if missing else "only one completed trial (seed) at"
        eff.reason = (f"not a full factorial of {' × '.join(factors)}: {what} {name(bad[0])}"
                      + (f" and {len(bad) - 1} more combination{'s' if len(bad) > 2 else ''}"
                         if len(bad) > 1 else "")
                      + "; every combination needs >= 2 completed seeds.")
        return eff
    eff.n, eff.replicates = len(done), (min(n_of.values()), max(n_of.values()))

    cols, of_term = {}, {}  # effect-coded columns, and the columns of each term
    for f in factors:
        lv = eff.levels[f]
        for level in lv[1:]:
            c = f"{f}[{level}]"
            cols[c] = np.where(done[f] == level, 1.0, np.where(done[f] == lv[0], -1.0, 0.0))
            of_term.setdefault(f, []).append(c)
    for a, b in itertools.combinations(factors, 2):
        for ca, cb in itertools.product(of_term[a], of_term[b]):
            cols[f"{ca}:{cb}"] = cols[ca] * cols[cb]
            of_term.setdefault(f"{a} × {b}", []).append(f"{ca}:{cb}")
    X = sm.add_constant(pd.DataFrame(cols, index=done.index))
    fit = sm.OLS(done[metric].astype(float) * scale, X).fit()
    eff.resid_df = int(fit.df_resid)
    ci = fit.conf_int(ALPHA)
    rows = []
    for term, cs in of_term.items():
        two_level = len(cs) == 1
        k = 4.0 if " × " in term else 2.0  # coefficient -> change between levels (see docstring)
        R = np.zeros((len(cs), len(X.columns)))
        for i, c in enumerate(cs):
            R[i, X.columns.get_loc(c)] = 1
        p = float(fit.f_test(R).pvalue)
        rows.append({"term": term, "interaction": " × " in term, "df": len(cs),
                     "effect": k * fit.params[cs[0]] if two_level else math.nan,
                     "ci_low": k * ci.loc[cs[0], 0] if two_level else math.nan,
                     "ci_high": k * ci.loc[cs[0], 1] if two_level else math.nan,
                     "coef": fit.params[cs[0]] if two_level else math.nan, "p": p})
    eff.terms = pd.DataFrame(rows).assign(p_holm=lambda t: holm(t["p"]))
    eff.terms["sentence"] = _sentences(eff, metric)  # main effects, then interactions: the terms' order
    return eff


def _sentences(eff: Effects, metric: str) -> list[str]:
    """The model in words: each main effect, then each interaction (does A's effect depend on B?)."""
    t = eff.terms.set_index("term")
    what = metric.replace("_acc", " accuracy").replace("_", " ")
    out = []
    for f in eff.factors:
        r = t.loc[f]
        if r["df"] > 1:
            verb = "changes" if r["p_holm"] < ALPHA else "does not measurably change"
            out.append(f"{_cap(NAMES.get(f, f))} ({', '.join(map(str, eff.levels[f]))}) {verb} {what} "
                       f"(p = {fmt_p(r['p'])}, Holm p = {fmt_p(r['p_holm'])}).")
            continue
        subject = _cap(_phrases(f, eff.levels[f])["subject"])
        ci = f"[{signed(r['ci_low'])}, {signed(r['ci_high'])}]"
        if r["p_holm"] < ALPHA:
            verb = "raises" if r["effect"] > 0 else "lowers"
            out.append(f"{subject} {verb} {what} by {abs(r['effect']):.1f} points {ci} "
                       f"(p = {fmt_p(r['p'])}, Holm p = {fmt_p(r['p_holm'])}).")
        else:
            out.append(f"{subject} has no measurable effect on {what}: {signed(r['effect'])} points {ci} "
                       f"(Holm p = {fmt_p(r['p_holm'])}).")
    for a, b in itertools.combinations(eff.factors, 2):
        r = t.loc[f"{a} × {b}"]
        if r["df"] == 1 and abs(t.loc[b, "effect"]) > abs(t.loc[a, "effect"]):
            a, b = b, a  # speak of the larger effect depending on the other flag
        pa = _phrases(a, eff.levels[a]) if r["df"] == 1 else {"subject": NAMES.get(a, a)}
        own = f"{pa['subject']}'s {'gain' if r['df'] == 1 and t.loc[a, 'effect'] > 0 else 'effect'}"
        ps = f"interaction p = {fmt_p(r['p'])}, Holm p = {fmt_p(r['p_holm'])}"
        if r["p_holm"] >= ALPHA:
            out.append(f"{_cap(own)} does not measurably depend on {NAMES.get(b, b)} ({ps}).")
        elif r["df"] > 1:
            out.append(f"{_cap(own)} depends on {NAMES.get(b, b)} ({ps}).")
        else:
            main, inter = t.loc[a, "effect"], r["effect"]
            pb = _phrases(b, eff.levels[b])
            out.append(f"{_cap(own)} depends on {NAMES.get(b, b)}: {signed(main - inter / 2)} points "
                       f"{pb['low']}, {signed(main + inter / 2)} {pb['high']} ({ps}).")
    return out
