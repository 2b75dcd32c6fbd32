"""What a study with ``variants:`` asks: how much each variant, and each architecture, changes the result.

An *arm* is an architecture with a variant. This part of the report has

- the cross-arm table: per arm, mean ± std over seeds of Loss, Avg AUROC and Avg F1, and its seed
  ensemble's Avg AUROC;
- one *effect* table per pair of variants within an architecture, and per pair of architectures within
  a variant: per class and on average, the difference of the two seed ensembles' AUROC (A - B), its
  95% bootstrap interval (both arms scored on the same resamples: the study's bootstrap of the test
  images both scored, by patient unless the options say image), the paired DeLong p (per class,
  clustered by patient when the bootstrap is; the average's p is a two-sided Wald test with the
  bootstrap's standard error) and the Holm-adjusted p;
- under each table, the same Avg AUROC difference over the arms' own runs (:func:`seed_effect`: a t-test
  paired by seed, else Welch's), which asks whether a new draw of seeds would differ too, Holm-adjusted
  over the section's seed comparisons;
- a sentence naming the differences that survive Holm's adjustment, over every p of the tables, and one
  naming the seed comparisons that hold;
- a figure of the effects with their intervals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import ttest_ind, ttest_rel

from jobs.data.labels import CLASSES
from jobs.report import figures
from jobs.report.comparison import delong_design, on_common_images
from jobs.report.reference import MEAN_STD_COLUMNS, SeedRun, mean_std_cells, mean_std_numbers
from jobs.report.seeds import Ensemble
from jobs.report.tables import display_name, fmt, markdown_table
from jobs.scoring.bootstrap import Resampling, auroc_and_bootstrap, interval, percentile_interval, row_nanmean
from jobs.scoring.delong import comparable, delong_test, holm
from jobs.scoring.metrics import json_number, nanmean

ALPHA = 0.05  # family-wise error of the section


@dataclass
class ArmResult:
    """One arm's finished seeds (their test metrics) and seed ensemble (None: its runs' predictions
    files are missing, so it is in the cross-arm table but in no effect)."""

    key: str  # densenet121@plain-focal
    architecture: str
    variant: str
    runs: list[SeedRun]
    ensemble: Ensemble | None


@dataclass
class Effect:
    """A - B, the two arms' seed ensembles on the test images both scored."""

    kind: str  # "variant" (same architecture) or "architecture" (same variant)
    within: str  # the architecture (kind variant) or the variant (kind architecture) both share
    a: ArmResult
    b: ArmResult
    images: int
    auroc_a: np.ndarray  # (classes,) NaN where a class cannot be compared
    auroc_b: np.ndarray
    diff: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray  # DeLong, per class
    avg: tuple[float, float, float, float, float]  # Avg AUROC of A, of B, the difference, its interval
    avg_p: float  # two-sided Wald p of the average difference, with the bootstrap's standard error
    p_holm: np.ndarray | None = None  # per class, then the average: filled over the whole section
    resampling: str = ""
    over_seeds: SeedEffect | None = None  # the same question asked of the arms' own runs (None: too few seeds)

    @property
    def name_a(self) -> str:
        return self.a.variant if self.kind == "variant" else display_name(self.a.architecture)

    @property
    def name_b(self) -> str:
        return self.b.variant if self.kind == "variant" else display_name(self.b.architecture)

    @property
    def title(self) -> str:
        within = display_name(self.within) if self.kind == "variant" else f"variant {self.within}"
        return f"{within}: {self.name_a} − {self.name_b}"

    @property
    def seeds(self) -> str:
        """How many seeds each ensemble averages ("3 seeds each", "3 and 2 seeds")."""
        a, b = len(self.a.runs), len(self.b.runs)
        return f"{a} seed{'s' if a != 1 else ''} each" if a == b else f"{a} and {b} seeds"


@dataclass
class SeedEffect:
    """A - B in Avg AUROC over the arms' own runs: would another draw of seeds keep the difference?
    A t-test on the runs' test Avg AUROC, paired by seed when both arms ran two or more of the same
    seeds, else Welch's (each arm needs two seeds)."""

    paired: bool
    seeds: tuple[int, ...]  # the seeds paired, or every seed of both arms (Welch)
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    df: float
    p: float
    p_holm: float = math.nan  # Holm over the section's seed comparisons

    @property
    def design(self) -> str:
        if self.paired:
            return f"paired by seed over seeds {', '.join(map(str, self.seeds))}; t-test with {self.df:g} df"
        return f"unpaired; Welch's t-test with {self.df:.1f} df"


def seed_effect(a: ArmResult, b: ArmResult) -> SeedEffect | None:
    """The t-test of the arms' runs' Avg AUROC (see :class:`SeedEffect`); None with too few seeds."""
    by_a = {r.seed: r.avg_auroc for r in a.runs if r.avg_auroc == r.avg_auroc}
    by_b = {r.seed: r.avg_auroc for r in b.runs if r.avg_auroc == r.avg_auroc}
    common = sorted(set(by_a) & set(by_b))
    paired = len(common) >= 2
    if paired:
        xa, xb, seeds = [by_a[s] for s in common], [by_b[s] for s in common], tuple(common)
    elif len(by_a) >= 2 and len(by_b) >= 2:
        xa, xb, seeds = list(by_a.values()), list(by_b.values()), tuple(sorted({*by_a, *by_b}))
    else:
        return None
    mean_a, mean_b = float(np.mean(xa)), float(np.mean(xb))
    diff = mean_a - mean_b
    spread = np.std(np.subtract(xa, xb), ddof=1) if paired else np.var(xa, ddof=1) + np.var(xb, ddof=1)
    if spread <= 1e-12 * max(1.0, abs(diff)):  # every seed gives the same difference: nothing to test it against
        df = float(len(xa) - 1 if paired else len(xa) + len(xb) - 2)
        return SeedEffect(paired, seeds, mean_a, mean_b, diff, math.nan, math.nan, df, math.nan)
    test = ttest_rel(xa, xb) if paired else ttest_ind(xa, xb, equal_var=False)
    ci = test.confidence_interval(1 - ALPHA)
    return SeedEffect(
        paired, seeds, mean_a, mean_b, diff, float(ci.low), float(ci.high), float(test.df), float(test.pvalue)
    )


def effect_pairs(arms: list[ArmResult]) -> list[tuple[str, str, ArmResult, ArmResult]]:
    """Every two variants of an architecture, then every two architectures of a variant (in file order)."""
    pairs = []
    for kind, held in (("variant", "architecture"), ("architecture", "variant")):
        for value in dict.fromkeys(getattr(a, held) for a in arms):
            members = [a for a in arms if getattr(a, held) == value]
            pairs += [(kind, value, x, y) for i, x in enumerate(members) for y in members[i + 1 :]]
    return pairs


def wald_p(difference: float, resampled: np.ndarray) -> float:
    """Two-sided p of "no difference": ``difference`` over the standard deviation of its bootstrap
    resamples, against the normal distribution. Unlike a share of resamples past zero, it is not
    floored at 2/(resamples+1), so an average difference far beyond its noise survives Holm's
    adjustment over many tests. NaN when fewer than two resamples are defined."""
    d = resampled[~np.isnan(resampled)]
    if len(d) < 2 or difference != difference:
        return float("nan")
    se = float(np.std(d, ddof=1))
    if se == 0:
        return 1.0 if difference == 0 else 0.0
    return math.erfc(abs(difference) / se / math.sqrt(2))


def measure_effect(
    kind: str, within: str, a: ArmResult, b: ArmResult, resample: Callable[[list[str]], Resampling]
) -> Effect | None:
    """The effect A - B on the images both scored; None when they share no test image. The average is
    over every class with both labels among those images (the report's Avg AUROC), the classes too rare
    for DeLong's test included."""
    pa, pb = on_common_images(a.ensemble.test, b.ensemble.test)
    if not pa.names:
        return None
    resampling = resample(pa.names)
    auc_a, boot_a = auroc_and_bootstrap(pa.labels, pa.probs, resampling.counts)
    auc_b, boot_b = auroc_and_bootstrap(pb.labels, pb.probs, resampling.counts)
    nan = np.full(len(CLASSES), np.nan)
    diff, p = nan.copy(), nan.copy()
    for k in range(len(CLASSES)):
        y = pa.labels[:, k]
        if not comparable(y, resampling.clusters):  # DeLong needs two of each; the class is left out
            continue
        _, _, p[k] = delong_test(y, pa.probs[:, k], pb.probs[:, k], resampling.clusters)
        diff[k] = auc_a[k] - auc_b[k]
    compared = ~np.isnan(diff)
    with warnings.catch_warnings():  # a class without positives has no resample: NaN, said in the table
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = percentile_interval(boot_a - boot_b)
    avg_a, avg_b = nanmean(auc_a), nanmean(auc_b)
    avg_boot = row_nanmean(boot_a) - row_nanmean(boot_b)
    return Effect(
        kind,
        within,
        a,
        b,
        len(pa.names),
        np.where(compared, auc_a, np.nan),
        np.where(compared, auc_b, np.nan),
        diff,
        np.where(compared, low, np.nan),
        np.where(compared, high, np.nan),
        p,
        (avg_a, avg_b, avg_a - avg_b, *interval(avg_boot)),
        wald_p(avg_a - avg_b, avg_boot),
        resampling=resampling.describe(),
        over_seeds=seed_effect(a, b),
    )


def adjust(effects: list[Effect]) -> int:
    """Holm-adjust every p of the section together (each effect's classes and its average); returns how
    many p-values the family holds."""
    family = [
        (e, k)
        for e in effects
        for k in [*np.flatnonzero(~np.isnan(e.p)), *([len(CLASSES)] if e.avg_p == e.avg_p else [])]
    ]
    adjusted = holm([float(e.p[k]) if k < len(CLASSES) else e.avg_p for e, k in family])
    for e in effects:
        e.p_holm = np.full(len(CLASSES) + 1, np.nan)
    for (e, k), value in zip(family, adjusted):
        e.p_holm[k] = value
    return len(family)


def adjust_seeds(effects: list[Effect]) -> int:
    """Holm-adjust the section's seed comparisons together (their own family: another question than the
    ensembles'); returns how many there are."""
    tested = [e.over_seeds for e in effects if e.over_seeds is not None and e.over_seeds.p == e.over_seeds.p]
    for seed, value in zip(tested, holm([t.p for t in tested])):
        seed.p_holm = value
    return len(tested)


def seed_line(e: Effect) -> str:
    """The line under an effect's table: the same difference over the arms' own runs."""
    t = e.over_seeds
    if t is None:
        a, b = (sum(r.avg_auroc == r.avg_auroc for r in x.runs) for x in (e.a, e.b))
        return f"- **Across seeds**: not tested; each arm needs two seeds with a test Avg AUROC ({a} and {b} here)."
    if t.p != t.p:
        return (
            f"- **Across seeds** (each arm's runs, {t.design}): Avg AUROC {fmt(t.mean_a)} vs {fmt(t.mean_b)}, the "
            f"same difference {_signed(t.diff)} at every seed: no spread to test it against; not tested."
        )
    return (
        f"- **Across seeds** (each arm's runs, {t.design}): Avg AUROC {fmt(t.mean_a)} vs {fmt(t.mean_b)}, difference "
        f"{_signed(t.diff)} (95% CI {_interval(t.low, t.high)}), p {_p(t.p)}, p Holm {_p(t.p_holm)} over the "
        "section's seed comparisons."
    )


def _signed(x: float) -> str:
    return "n/a" if x != x else f"{x:+.4f}"


def _p(x: float) -> str:
    return "n/a" if x != x else f"{x:.4g}"


def _interval(low: float, high: float) -> str:
    return "n/a" if low != low or high != high else f"{low:+.4f} to {high:+.4f}"


def effect_table(e: Effect) -> str:
    rows = []
    for k, c in enumerate(CLASSES):
        if np.isnan(e.diff[k]):
            rows.append(
                [c, "n/a", "n/a", "n/a", "not compared (fewer than 2 positives, negatives or patients)", "", ""]
            )
            continue
        ci = _interval(e.low[k], e.high[k])
        rows.append([c, fmt(e.auroc_a[k]), fmt(e.auroc_b[k]), _signed(e.diff[k]), ci, _p(e.p[k]), _p(e.p_holm[k])])
    avg_a, avg_b, d, lo, hi = e.avg
    rows.append(
        [
            "**Average**",
            fmt(avg_a),
            fmt(avg_b),
            f"**{_signed(d)}**",
            _interval(lo, hi),
            f"{_p(e.avg_p)} (bootstrap SE)",
            _p(e.p_holm[-1]),
        ]
    )
    return markdown_table(["Class", e.name_a, e.name_b, "Difference", "95% CI", "p", "p (Holm)"], rows)


def survivors(effects: list[Effect]) -> list[str]:
    """``"DenseNet-121: clahe − plain on Effusion (+0.0123, p Holm 0.002)"`` for each adjusted p below ALPHA."""
    out = []
    for e in effects:
        names = [c for k, c in enumerate(CLASSES) if e.p_holm[k] < ALPHA]
        names = [f"{c} ({_signed(e.diff[CLASSES.index(c)])}, p Holm {_p(e.p_holm[CLASSES.index(c)])})" for c in names]
        if e.p_holm[-1] < ALPHA:
            names.insert(0, f"the average ({_signed(e.avg[2])}, p Holm {_p(e.p_holm[-1])})")
        if names:
            out.append(f"{e.title} on {', '.join(names)}")
    return out


def seed_survivors(effects: list[Effect]) -> list[str]:
    """``"DenseNet-121: clahe − plain (+0.0123, p Holm 0.01)"`` for each seed comparison that holds."""
    return [
        f"{e.title} ({_signed(t.diff)}, p Holm {_p(t.p_holm)})"
        for e in effects
        if (t := e.over_seeds) is not None and t.p_holm < ALPHA
    ]


def cross_arm_table(arms: list[ArmResult]) -> tuple[str, list[list]]:
    """Markdown and CSV rows: per arm, mean ± std over seeds and the seed ensemble's Avg AUROC (n/a
    without predictions)."""
    rows, csv_rows = [], [["Arm", "Architecture", "Variant", "Seeds", *MEAN_STD_COLUMNS, "Ensemble Avg AUROC"]]
    for a in arms:
        ens = nanmean(a.ensemble.auroc) if a.ensemble is not None else float("nan")
        rows.append([display_name(a.architecture), a.variant, str(len(a.runs)), *mean_std_cells(a.runs), fmt(ens)])
        csv_rows.append([a.key, a.architecture, a.variant, len(a.runs), *mean_std_numbers(a.runs), ens])
    headers = ["Architecture", "Variant", "Seeds", "Loss", "Avg AUROC", "Avg F1", "Ensemble Avg AUROC"]
    return markdown_table(headers, rows), csv_rows


EFFECT_HEADER = [
    "Kind",
    "Within",
    "A",
    "B",
    "Class",
    "Images",
    "AUROC A",
    "AUROC B",
    "Difference",
    "CI low",
    "CI high",
    "p",
    "p method",
    "p Holm",
]


def effect_rows(e: Effect) -> list[list]:
    rows = [
        [e.kind, e.within, e.a.key, e.b.key, c, e.images, e.auroc_a[k], e.auroc_b[k], e.diff[k]]
        + [e.low[k], e.high[k], e.p[k], "delong", e.p_holm[k]]
        for k, c in enumerate(CLASSES)
        if not np.isnan(e.diff[k])
    ]
    avg_a, avg_b, d, lo, hi = e.avg
    rows.append(
        [e.kind, e.within, e.a.key, e.b.key, "Average", e.images, avg_a, avg_b, d, lo, hi]
        + [e.avg_p, "bootstrap-se", e.p_holm[-1]]
    )
    if (t := e.over_seeds) is not None:  # a mean over runs, not images: Images left empty
        rows.append(
            [e.kind, e.within, e.a.key, e.b.key, "Average over seeds", "", t.mean_a, t.mean_b, t.diff, t.low, t.high]
            + [t.p, "paired-t-seeds" if t.paired else "welch-t-seeds", t.p_holm]
        )
    return rows


def effect_json(e: Effect) -> dict:
    n = json_number
    return {
        "kind": e.kind,
        "within": e.within,
        "a": e.a.key,
        "b": e.b.key,
        "images": e.images,
        "classes": {
            c: {
                "auroc_a": n(e.auroc_a[k]),
                "auroc_b": n(e.auroc_b[k]),
                "difference": n(e.diff[k]),
                "ci": [n(e.low[k]), n(e.high[k])],
                "p": n(e.p[k]),
                "p_holm": n(e.p_holm[k]),
            }
            for k, c in enumerate(CLASSES)
            if not np.isnan(e.diff[k])
        },
        "average": {
            "auroc_a": n(e.avg[0]),
            "auroc_b": n(e.avg[1]),
            "difference": n(e.avg[2]),
            "ci": [n(e.avg[3]), n(e.avg[4])],
            "p_bootstrap_se": n(e.avg_p),
            "p_holm": n(e.p_holm[-1]),
        },
        "over_seeds": None if (t := e.over_seeds) is None else {
            "test": "paired t" if t.paired else "welch t",
            "seeds": list(t.seeds),
            "avg_auroc_a": n(t.mean_a),
            "avg_auroc_b": n(t.mean_b),
            "difference": n(t.diff),
            "ci": [n(t.low), n(t.high)],
            "df": n(t.df),
            "p": n(t.p),
            "p_holm": n(t.p_holm),
        },
    }  # fmt: skip


def effects_section(
    arms: list[ArmResult], resample: Callable[[list[str]], Resampling]
) -> tuple[str, dict[str, list[list]], dict, dict[str, bytes]]:
    """The cross-arm table and the effect tables: markdown, CSV tables, report.json's part, figures."""
    table, arm_rows = cross_arm_table(arms)
    text = [
        "# Across Arms (mean ± std over seeds)",
        "An arm is an architecture with a variant of the study's recipe. Mean and sample standard deviation (n-1) "
        "over each arm's seeds on its test split, and the Avg AUROC of the arm's seed ensemble (the seeds' "
        "probabilities averaged).",
        table,
        "# Variant Effects",
        "Each difference is A − B between two arms' seed ensembles, on the test images both scored: two variants "
        "of one architecture, or two architectures under one variant. The 95% interval is the percentile interval "
        "of the difference over bootstrap resamples drawn once for both arms (paired). The p of a class is DeLong's "
        "paired test; the average's (over every class with both labels, as the Avg AUROC elsewhere in the report) "
        "is a Wald test with the bootstrap's standard error. Holm's adjustment runs over every p of these tables. "
        "Both treat each arm's trained models as fixed: they say whether the two ensembles differ on these test "
        "patients. Whether a new draw of seeds would differ too is the line **Across seeds** under each table: a "
        "t-test on the arms' own runs' Avg AUROC, paired by seed when both arms ran the same seeds, Holm-adjusted "
        "over the section's seed comparisons. With a handful of seeds it is the weaker test, and the one that "
        "speaks for the recipe rather than for these trained models.",
    ]
    compared = [a for a in arms if a.ensemble is not None]
    if compared:
        text[-1] += " " + delong_design(resample(compared[0].ensemble.test.names))
    skipped = [
        f"- {display_name(a.key)}: its runs' predictions files are missing (written by an older cxrstudy?); in the "
        "table above, in no effect."
        for a in arms
        if a.ensemble is None
    ]
    if len(compared) < 2:
        skipped.append("- Fewer than two arms have predictions: there is no effect to compute.")
    effects = []
    for kind, within, a, b in effect_pairs(compared):
        effect = measure_effect(kind, within, a, b, resample)
        if effect is None:
            skipped.append(f"- {a.key} and {b.key} share no scored test image: not compared.")
        else:
            effects.append(effect)
    family, seed_family = adjust(effects), adjust_seeds(effects)
    for e in effects:
        text.append(f"## {e.title} ({e.images:,} test images; ensembles of {e.seeds})")
        na, nb = len(e.a.ensemble.test.names), len(e.b.ensemble.test.names)
        if {na, nb} != {e.images}:
            text.append(
                f"- **The arms were tested on different images** ({e.name_a}: {na:,}, {e.name_b}: {nb:,}, "
                f"{e.images:,} in common: another split protocol or split seed?); compared on the images both scored."
            )
        text.append(effect_table(e))
        text.append(seed_line(e))
    text += skipped
    found, over_seeds = survivors(effects), seed_survivors(effects)
    if effects:
        verdict = f"these differences survive it: {'; '.join(found)}." if found else "no difference survives it."
        text.append(
            f"**Which differences hold.** Holm-Bonferroni over the tables' {family} p-values (family-wise error "
            f"{ALPHA:.0%}): {verdict} Intervals: {effects[0].resampling}."
        )
        if seed_family:
            held = f"these hold: {'; '.join(over_seeds)}." if over_seeds else "none holds."
            text.append(f"**Across seeds** (Holm over the section's {seed_family} seed comparisons): {held}")
        text.append("![Variant effects: Avg AUROC differences with their 95% intervals](figures/effects.png)")
    files = {"arms.csv": arm_rows, "effects.csv": [EFFECT_HEADER, *(r for e in effects for r in effect_rows(e))]}
    structured = {
        "effects": [effect_json(e) for e in effects],
        "holm_family": family,
        "survivors": found,
        "seed_holm_family": seed_family,
        "seed_survivors": over_seeds,
    }
    pngs = {}
    if effects:
        pngs["effects.png"] = figures.effects_figure(
            [(e.title, e.avg[2], e.avg[3], e.avg[4], e.diff[~np.isnan(e.diff)]) for e in effects]
        )
    return "\n\n".join(text), files, structured, pngs
