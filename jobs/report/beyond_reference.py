"""The report after the reference's sections: what none of the peers give for a seed study.

Per architecture (``jobs.report.seeds``): per-class mean +/- std over seeds, the seed ensemble, bootstrap
95% intervals (by patient unless the options say image: :class:`StudyBootstrap`), the best seed chosen on
validation; its calibration (``jobs.report.calibration``). Across scorers (``jobs.report.comparison``): paired
DeLong tests between the architectures' ensembles, external baselines, and the pairs a user asked
for. Figures (``jobs.report.figures``) under ``report/figures/``. Everything is computed from the runs'
stored per-image predictions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from jobs.errors import CxrStudyError, DamagedArtifact
from jobs.report import comparison, effects, figures, seeds
from jobs.report.baselines import BaselineScore, score_predictions
from jobs.report.calibration import calibration_section
from jobs.report.options import ReportOptions, stored_baselines
from jobs.report.reference import SeedRun
from jobs.report.tables import display_name
from jobs.scoring.bootstrap import Resampling, resampling
from jobs.scoring.metrics import nanmean
from jobs.scoring.predictions import Predictions, read_prediction_csv
from jobs.store import Store


def beyond_reference(
    study_id: str,
    store: Store,
    inputs: list[tuple[str, list[seeds.RunPredictions]]],
    options: ReportOptions,
    structured: dict,
    log: Callable[[str], None],
    arms: dict[str, tuple[str, str, list[SeedRun]]] | None = None,
) -> tuple[str, dict[str, list[list]], dict[str, bytes]]:
    """The report after the reference's sections: per architecture (or arm) the seed spread, bootstrap
    intervals, the seed ensemble and the validation-chosen seed; DeLong tests between the architectures,
    or, in a study with variants (``arms``: each arm with a finished run, its architecture, variant and
    seeds' test metrics), the cross-arm table and the variant effects; baselines; figures.
    Returns the markdown, CSV tables (name -> rows) and PNG figures (name -> bytes); fills ``structured``."""
    started = time.monotonic()
    text = [
        "# Beyond the Reference: Uncertainty, Seed Ensembles and Significance",
        "The sections above reproduce the reference's tables. These say how much of the differences between "
        "seeds and architectures is noise.",
    ]
    files: dict[str, list[list]] = {}
    bootstrap = StudyBootstrap(inputs, options.bootstrap_unit, options.resamples)
    if note := bootstrap.fallback_note():
        text.append(note)
    pngs: dict[str, bytes] = {}
    results, scorers = per_architecture(inputs, bootstrap, text, files, structured, pngs)
    structured["bootstrap"] = bootstrap.structured(results)
    log(
        f"aggregate: {sum(len(r) for _, r in inputs)} runs' bootstrap intervals ({options.resamples:,} resamples "
        f"by {bootstrap.unit}) and ensembles in {time.monotonic() - started:.1f}s"
    )
    ensembles = [r.ensemble for _, r in results]
    if arms:
        ensemble_of = {key: r.ensemble for key, r in results}
        arm_results = [effects.ArmResult(key, a, v, done, ensemble_of.get(key)) for key, (a, v, done) in arms.items()]
        section, tables, structured["variants"], effect_pngs = effects.effects_section(arm_results, bootstrap)
        text.append(section)
        files.update(tables)
        pngs.update(effect_pngs)
    elif len(ensembles) > 1:
        section, rows = comparison.ensembles_section(ensembles, bootstrap)
        text.append(section)
        files["delong.csv"] = rows

    reference = inputs[0][1][0]  # the study's test (and validation) images and labels
    baselines, notes = score_baselines(study_id, store, reference)
    for b in baselines:
        scorers[b.name] = comparison.Scorer(b.name, Predictions(b.names, b.probs, b.labels))
    if baselines:
        seed_auroc = {r.ensemble.name: r.test_auroc for _, r in results}
        section, extra, info = comparison.baseline_section(baselines, ensembles, seed_auroc, bootstrap)
        text.append(section)
        files.update(extra)
        structured["baselines"] = info
    text += notes
    if options.compare:
        section, rows = comparison.requested_section(options.compare, scorers, bootstrap)
        text.append(section)
        files["compare_delong.csv"] = rows

    pngs.update(figures_of(results, baselines))
    text += [
        "## Figures",
        "![Seed ensembles' ROC curves per class](figures/roc_curves.png)",
        "![Avg AUROC of each seed with its bootstrap 95% interval](figures/avg_auroc_seeds.png)",
    ]
    log(f"aggregate: report beyond the reference in {time.monotonic() - started:.1f}s")
    return "\n\n".join(text), files, pngs


class StudyBootstrap:
    """The study's bootstrap resamples of any set of its test images, by the unit the options ask for.

    The patient of each test image comes from the runs' predictions files. Runs written before those
    files had the column give none, and the patient unit then falls back to images (the report says so).
    The same set of images always gets the same resamples, so every run and ensemble is paired.
    """

    def __init__(self, inputs: list[tuple[str, list[seeds.RunPredictions]]], unit: str, resamples: int):
        self.asked, self.resamples = unit, resamples
        self.patient_of = study_patients(inputs)
        self.unit = unit if self.patient_of is not None else "image"
        self._cache: dict[tuple[str, ...], Resampling] = {}

    def __call__(self, names: list[str]) -> Resampling:
        key = tuple(names)
        if key not in self._cache:
            self._cache[key] = resampling(names, self.patient_of, self.unit, self.resamples)
        return self._cache[key]

    def fallback_note(self) -> str | None:
        if self.asked == self.unit:
            return None
        return (
            "- **The intervals resample images, not patients**: the runs' predictions files do not record each "
            "image's patient (they were written by an older cxrstudy). Films of one patient are correlated, so "
            "these intervals are too narrow. `cxrstudy resume` after deleting the runs' result.json writes them "
            "again with patients."
        )

    def structured(self, results: list[tuple[str, seeds.ArchitectureAnalysis]]) -> dict:
        first = self(results[0][1].ensemble.test.names) if results else None
        return {
            "unit": self.unit,
            "unit_asked": self.asked,
            "resamples": self.resamples,
            "test_images": first.images if first else None,
            "test_patients": first.patients if first else None,
        }


def study_patients(inputs: list[tuple[str, list[seeds.RunPredictions]]]) -> dict[str, int] | None:
    """Each test image's patient, from the runs' predictions; None when any run's file lacks them. Runs
    that give one image two patients were not made from one dataset: a :class:`DamagedArtifact`."""
    patient_of: dict[str, int] = {}
    for arch, runs in inputs:
        for r in runs:
            if r.test.patients is None:
                return None
            for name, patient in zip(r.test.names, r.test.patients.tolist()):
                if patient_of.setdefault(name, patient) != patient:
                    raise DamagedArtifact(
                        f"the runs' test predictions give {name} two patients ({patient_of[name]} and {patient}, "
                        f"the latter in {arch} seed {r.seed}): they were not made from one prepared dataset; "
                        "delete the odd run's result.json and `cxrstudy resume` runs it again"
                    )
    return patient_of


def per_architecture(
    inputs: list[tuple[str, list[seeds.RunPredictions]]],
    bootstrap: StudyBootstrap,
    text: list[str],
    files: dict[str, list[list]],
    structured: dict,
    pngs: dict[str, bytes],
) -> tuple[list[tuple[str, seeds.ArchitectureAnalysis]], dict[str, comparison.Scorer]]:
    """Each architecture's seed analysis and calibration, appended to ``text``, ``files``, ``structured``
    and ``pngs``; the analyses and the scorers ``--compare`` may name (each architecture's ensemble and
    each run)."""
    results, scorers = [], {}
    for arch, runs in inputs:
        result = seeds.architecture_analysis(display_name(arch), runs, bootstrap(runs[0].test.names))
        results.append((arch, result))
        text.append(result.text)
        text.append(f"![{display_name(arch)}: per-class AUROC across seeds](figures/{arch}_seed_spread.png)")
        files.update({f"{arch}_{name}": rows for name, rows in result.files.items()})
        structured["architectures"][arch].update(result.structured)
        calibration = calibration_section(display_name(arch), arch, runs, result.ensemble)
        text.append(calibration.text)
        files[f"{arch}_calibration.csv"] = calibration.rows
        structured["architectures"][arch]["calibration"] = calibration.structured
        pngs[f"{arch}_reliability.png"] = calibration.png
        scorers[arch] = comparison.Scorer(display_name(arch), result.ensemble.test)
        scorers.update(
            {f"{arch}:{r.seed}": comparison.Scorer(f"{display_name(arch)} seed {r.seed}", r.test) for r in runs}
        )
    return results, scorers


def score_baselines(
    study_id: str, store: Store, reference: seeds.RunPredictions
) -> tuple[list[BaselineScore], list[str]]:
    """Score each baseline kept with the study on the study's test images; a file that no longer
    parses is reported, not fatal."""
    scores, notes = [], []
    for name, key in stored_baselines(store, study_id).items():
        try:
            names, probs = read_prediction_csv(store.get_bytes(key), store.url(key))
            scores.append(
                score_predictions(
                    name,
                    names,
                    probs,
                    reference.test.names,
                    reference.test.labels,
                    val=(reference.val.names, reference.val.labels),
                )
            )
        except CxrStudyError as exc:
            notes.append(f"- Baseline {name} was not scored: {exc}")
    return scores, notes


def figures_of(
    results: list[tuple[str, seeds.ArchitectureAnalysis]], baselines: list[BaselineScore]
) -> dict[str, bytes]:
    """The report's PNGs: each architecture's seed spread, the ROC curves, the Avg AUROC spread."""
    pngs = {
        f"{arch}_seed_spread.png": figures.seed_spread_figure(r.ensemble.name, r.seeds, r.test_auroc, r.ensemble.auroc)
        for arch, r in results
    }
    curves = [(f"{r.ensemble.name} ensemble", r.ensemble.test.labels, r.ensemble.test.probs) for _, r in results]
    curves += [(b.name, b.labels, b.probs) for b in baselines]
    pngs["roc_curves.png"] = figures.roc_figure(curves)
    pngs["avg_auroc_seeds.png"] = figures.avg_auroc_figure(
        [
            (r.ensemble.name, r.seeds, r.avg_auroc, r.avg_ci[:, 0], r.avg_ci[:, 1], nanmean(r.ensemble.auroc))
            for _, r in results
        ]
    )
    return pngs
