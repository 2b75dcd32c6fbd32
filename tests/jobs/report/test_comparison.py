"""DeLong comparisons between any two scorers, external baselines in the report, report options."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jobs.data.labels import CLASSES
from jobs.errors import ConfigError
from jobs.report import comparison, options
from jobs.report import seeds as analysis
from jobs.report.baselines import score_predictions
from jobs.scoring.bootstrap import resampling
from jobs.scoring.delong import delong_test
from jobs.scoring.predictions import Predictions
from jobs.store import LocalStore
from tests.jobs.report.test_seeds import runs_of


def test_ensembles_section_compares_the_ensembles_class_by_class():
    a = analysis.ensemble("A", runs_of([1, 2], shift=0.6))
    b = analysis.ensemble("B", runs_of([3, 4]))
    text, rows = comparison.ensembles_section([a, b])
    assert rows[0] == comparison.DELONG_HEADER and len(rows) == 1 + 14
    assert "### A vs B (240 test images)" in text and "Holm" in text
    for (_, _, c, n, auc_a, auc_b, p, p_holm), k in zip(rows[1:], range(14)):
        assert c == CLASSES[k] and n == 240
        assert (auc_a, auc_b, p) == delong_test(a.test.labels[:, k], a.test.probs[:, k], b.test.probs[:, k])
        assert p_holm >= p
    assert "significant for" in text  # A is much better


def test_with_the_patient_bootstrap_the_delong_tests_cluster_by_patient():
    a = analysis.ensemble("A", runs_of([1, 2], shift=0.3))
    b = analysis.ensemble("B", runs_of([3, 4]))
    patient_of = {name: i // 4 for i, name in enumerate(a.test.names)}  # 60 patients of 4 films each

    def by_patient(names):
        return resampling(names, patient_of, "patient", 50)

    text, rows = comparison.ensembles_section([a, b], by_patient)
    clusters = [patient_of[n] for n in a.test.names]
    assert "clustered by patient (Obuchowski 1997)" in text
    for (_, _, c, _, auc_a, auc_b, p, _), k in zip(rows[1:], range(14)):
        y = a.test.labels[:, k]
        assert c == CLASSES[k]
        assert (auc_a, auc_b, p) == delong_test(y, a.test.probs[:, k], b.test.probs[:, k], clusters)
        assert p != delong_test(y, a.test.probs[:, k], b.test.probs[:, k])[2]
    by_image_text, image_rows = comparison.ensembles_section([a, b], lambda names: resampling(names, None, "image", 50))
    assert "take each test image as independent" in by_image_text
    assert [r[6] for r in image_rows[1:]] == [r[6] for r in comparison.ensembles_section([a, b])[1][1:]]


def test_scorers_are_compared_on_the_images_both_scored():
    run = runs_of([1])[0].test
    rng = np.random.default_rng(5)
    keep = sorted(rng.choice(240, 150, replace=False))  # a baseline that scored 150 of the 240 images
    other = Predictions([run.names[i] for i in keep][::-1], rng.random((150, 14)), run.labels[keep][::-1])
    a, b = comparison.on_common_images(run, other)
    assert a.names == b.names == [run.names[i] for i in keep]
    np.testing.assert_array_equal(b.probs, other.probs[::-1])
    _, rows = comparison.delong_table(comparison.Scorer("run", run), comparison.Scorer("other", other))
    k = CLASSES.index(rows[1][2])
    assert rows[1][3] == 150
    assert tuple(rows[1][4:7]) == delong_test(run.labels[keep, k], run.probs[keep, k], other.probs[::-1][:, k])


def test_requested_comparisons_name_what_is_missing():
    runs = runs_of([1, 2])
    scorers = {"a:1": comparison.Scorer("A seed 1", runs[0].test), "a:2": comparison.Scorer("A seed 2", runs[1].test)}
    text, rows = comparison.requested_section([["a:1", "a:2"], ["a:1", "b"]], scorers)
    assert "### A seed 1 vs A seed 2" in text and len(rows) == 1 + 14
    assert "- a:1 vs b: no finished run or baseline named b; not compared." in text


def test_baselines_sit_beside_the_ensembles_with_their_own_counts():
    runs = runs_of([12, 22])
    ens = analysis.ensemble("DenseNet-121", runs)
    test, val = runs[0].test, runs[0].val
    rng = np.random.default_rng(1)
    names = test.names[:200] + ["elsewhere.png"]
    probs = np.vstack([test.labels[:200] * 0.3 + rng.random((200, 14)), rng.random((1, 14))])
    base = score_predictions("chexnet", names, probs, test.names, test.labels, val=(val.names, val.labels))
    seed_auroc = {"DenseNet-121": np.array([analysis.auroc_per_class(r.test.labels, r.test.probs) for r in runs])}
    text, files, info = comparison.baseline_section(
        [base], [ens], seed_auroc, lambda n: resampling(n, None, "image", 200)
    )
    assert "| chexnet (200 images)" in text
    assert "scored on 200 of 240 test images (40 missing from the file; 1 row in neither" in text
    rows = {(r[0], r[1]): r for r in files["baselines.csv"][1:]}
    for k, c in enumerate(CLASSES):
        assert rows[("chexnet", c)][5] == pytest.approx(roc_auc_score(test.labels[:200, k], probs[:200, k]), abs=1e-12)
    lo, hi = info["chexnet"]["avg_auroc_ci"]
    assert lo < info["chexnet"]["avg_auroc"] < hi
    delong = files["baselines_delong.csv"]
    assert {r[3] for r in delong[1:]} == {200} and {(r[0], r[1]) for r in delong[1:]} == {("chexnet", "DenseNet-121")}


def test_options_and_baselines_are_kept_with_the_study(tmp_path):
    store = LocalStore(tmp_path)
    assert options.load_options(store, "s-1") == options.ReportOptions(1000, [])
    options.save_options(store, "s-1", options.ReportOptions(500, [["densenet121", "chexnet"]]))
    assert options.load_options(store, "s-1") == options.ReportOptions(500, [["densenet121", "chexnet"]])
    header = "Image Index," + ",".join(f"prob_{c}" for c in CLASSES)
    good = (header + "\nx.png," + ",".join(["0.5"] * 14) + "\n").encode()
    options.keep_baseline(store, "s-1", "chexnet", good)
    assert options.stored_baselines(store, "s-1") == {"chexnet": "studies/s-1/baselines/chexnet.csv"}
    assert store.get_bytes("studies/s-1/baselines/chexnet.csv") == good
    with pytest.raises(ConfigError, match="letters, digits"):
        options.keep_baseline(store, "s-1", "no/slash", good)
    assert list(options.stored_baselines(store, "s-1")) == ["chexnet"]
