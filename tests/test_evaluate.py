"""Detection scoring: Hungarian matching, DeepFinder's Evaluator semantics, CZII F-beta."""

import numpy as np
import pandas as pd
import pytest

from tomochunk import ValueProblem, evaluate, plot_threshold_curve
from tomochunk.io.objects import validate_objects


def _dummy(n_tomos=5, n_obj=100, n_classes=1, seed=0):
    """Like DeepFinder's test data: integer positions in a 200x500x500 volume."""
    rng = np.random.default_rng(seed)
    n = n_tomos * n_obj
    df = pd.DataFrame({"tomo": np.repeat([f"tomo{i}" for i in range(n_tomos)], n_obj),
                       "class_label": rng.integers(1, n_classes + 1, n),
                       "x": rng.integers(0, 500, n), "y": rng.integers(0, 500, n), "z": rng.integers(0, 200, n),
                       "size": rng.integers(1, 100, n)})
    return validate_objects(df)


# ----------------------------------------------------------------------------- DeepFinder's own test cases
def test_deepfinder_identity():
    truth = _dummy(n_tomos=5, n_obj=100, n_classes=3)
    res = evaluate(truth, truth, max_dist=0, method="deepfinder")
    for c in (1, 2, 3):
        assert res.loc[c, "f1"] == 1.0 and res.loc[c, "precision"] == 1.0 and res.loc[c, "recall"] == 1.0
    t0 = truth[truth.tomo == "tomo0"]
    r0 = evaluate(t0, t0, max_dist=0, method="deepfinder").loc["all"]
    assert (r0["tp"], r0["fp"], r0["fn"]) == (len(t0), 0, 0)


def test_deepfinder_recall_delete_10_predictions():
    truth = _dummy(n_tomos=1, n_obj=100)
    pred = truth.iloc[10:]
    res = evaluate(pred, truth, max_dist=0, method="deepfinder")
    assert res.loc[1, "recall"] == 0.9 and res.loc[1, "precision"] == 1.0
    assert tuple(res.loc[1, ["tp", "fp", "fn"]]) == (90, 0, 10)


def test_deepfinder_precision_delete_10_truths():
    pred = _dummy(n_tomos=1, n_obj=100)
    truth = pred.iloc[10:]
    res = evaluate(pred, truth, max_dist=0, method="deepfinder")
    assert res.loc[1, "recall"] == 1.0 and res.loc[1, "precision"] == 0.9
    assert tuple(res.loc[1, ["tp", "fp", "fn"]]) == (90, 10, 0)


def test_all_methods_agree_on_simple_cases():
    truth = _dummy(n_tomos=3, n_obj=60, n_classes=2, seed=4)
    rng = np.random.default_rng(1)
    pred = truth.copy()
    pred[["x", "y", "z"]] += rng.uniform(-1, 1, (len(pred), 3))  # jitter < max_dist, far below spacing
    pred = pd.concat([pred.iloc[5:], truth.iloc[:3].assign(x=lambda d: d.x + 1000)], ignore_index=True)
    a = evaluate(pred, truth, max_dist=2, method="hungarian")
    b = evaluate(pred, truth, max_dist=2, method="deepfinder")
    pd.testing.assert_frame_equal(a, b)
    assert tuple(a.loc["all", ["tp", "fp", "fn"]]) == (len(truth) - 5, 3, 5)


# ----------------------------------------------------------------------------- DeepFinder semantics in detail
def _objs(xs, labels=None, tomo=None):
    d = {"x": np.asarray(xs, float), "y": 0.0, "z": 0.0}
    if labels is not None:
        d["class_label"] = labels
    if tomo is not None:
        d["tomo"] = tomo
    return validate_objects(pd.DataFrame(d))


def test_deepfinder_ambiguous_neighbours():
    # truth at 0 has two predictions within 2: it is missed and both are false positives
    r = evaluate(_objs([-1, 1]), _objs([0]), max_dist=2, method="deepfinder").loc[1]
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 1)
    # one prediction is the only neighbour of two truths: both count as found
    r = evaluate(_objs([0]), _objs([-1, 1]), max_dist=2, method="deepfinder").loc[1]
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    # Hungarian is one-to-one instead
    r = evaluate(_objs([0]), _objs([-1, 1]), max_dist=2).loc[1]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)


def test_deepfinder_class_confusion():
    res = evaluate(_objs([0, 10], [2, 2]), _objs([0, 10], [1, 2]), max_dist=1, method="deepfinder")
    assert tuple(res.loc[1, ["tp", "fp", "fn"]]) == (0, 0, 1)
    assert tuple(res.loc[2, ["tp", "fp", "fn"]]) == (1, 1, 0)
    assert np.isnan(res.loc[1, "precision"])  # 0 / 0, as pycm reports it
    # Hungarian matches within a class only
    res = evaluate(_objs([0, 10], [2, 2]), _objs([0, 10], [1, 2]), max_dist=1)
    assert tuple(res.loc[2, ["tp", "fp", "fn"]]) == (1, 1, 0)


def test_no_predictions_and_tomograms_only_in_one_list():
    truth = _objs([0, 5, 9], tomo=["a", "a", "b"])
    pred = _objs([0, 50], tomo=["a", "c"])
    for m in ("hungarian", "deepfinder"):
        r = evaluate(pred, truth, max_dist=1, method=m).loc["all"]
        assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 2), m
        r = evaluate(pred.iloc[:0], truth, max_dist=1, method=m).loc["all"]
        assert (r["tp"], r["fp"], r["fn"], r["recall"]) == (0, 0, 3, 0.0)
        assert np.isnan(r["precision"])
    # objects only match inside their own tomogram; lists sharing none are refused (issue 25)
    with pytest.raises(ValueProblem, match="share no tomogram"):
        evaluate(_objs([0], tomo=["b"]), _objs([0], tomo=["a"]), max_dist=1)


# ----------------------------------------------------------------------------- Hungarian
def test_hungarian_beats_greedy():
    # greedy nearest-first pairs truth 2 with prediction 1.1 and loses a match
    r = evaluate(_objs([1.1, 3.05]), _objs([0, 2]), max_dist=1.2).loc["all"]
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)


def test_hungarian_is_maximum_matching():
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(7)
    for _ in range(5):
        t = rng.uniform(0, 30, (60, 3))
        p = rng.uniform(0, 30, (70, 3))
        truth = validate_objects(pd.DataFrame(t, columns=["x", "y", "z"]))
        pred = validate_objects(pd.DataFrame(p, columns=["x", "y", "z"]))
        tp = evaluate(pred, truth, max_dist=3.0).loc["all", "tp"]
        m = maximum_bipartite_matching(csr_matrix(cdist(t, p) <= 3.0), perm_type="column")
        assert tp == int((m >= 0).sum())


def test_angstrom_units_across_binning():
    truth = _objs([10.0, 40.0])
    truth.attrs["voxel_size"] = 10.0
    pred = _objs([5.1, 20.0])  # same positions, picked at bin 2
    pred.attrs["voxel_size"] = 20.0
    with pytest.raises(ValueProblem, match="voxel size"):
        evaluate(pred, truth, max_dist=1)
    r = evaluate(pred, truth, max_dist=5, unit="angstrom").loc["all"]
    assert r["tp"] == 2


# ----------------------------------------------------------------------------- CZII
def test_czii_counts_and_fbeta():
    truth = _objs([0, 10, 20, 100], [1, 1, 1, 2])
    truth.attrs["classes"] = {1: "apo-ferritin", 2: "ribosome"}
    # class 1: two predictions on truth 0 (one tp, one fp), one on truth 10, one far away
    pred = _objs([0.5, -0.5, 10.4, 50, 103], [1, 1, 1, 1, 2])
    res = evaluate(pred, truth, method="czii", radii={"apo-ferritin": 2.0, 2: 8.0},
                   weights={"apo-ferritin": 1, "ribosome": 2})
    r1 = res.loc[1]
    assert (r1["tp"], r1["fp"], r1["fn"]) == (2, 2, 1)
    p, rc = 0.5, 2 / 3
    assert r1["fbeta"] == pytest.approx(17 * p * rc / (16 * p + rc))
    r2 = res.loc[2]  # 3 > 0.5 * 8 would miss; radius 8 -> threshold 4 -> hit
    assert (r2["tp"], r2["fp"], r2["fn"], r2["fbeta"]) == (1, 0, 0, 1.0)
    assert res.loc["all", "fbeta"] == pytest.approx((r1["fbeta"] * 1 + 1.0 * 2) / 3)
    assert res.loc[1, "name"] == "apo-ferritin"
    with pytest.raises(ValueProblem, match="radii"):
        evaluate(pred, truth, method="czii", radii={1: 2.0})


def test_czii_empty_class_scores_zero():
    res = evaluate(_objs([0], [1]), _objs([0], [2]), method="czii", radii={1: 2, 2: 2})
    assert res.loc[1, "fbeta"] == 0 and res.loc[1, "precision"] == 0 and res.loc[2, "recall"] == 0


def test_bad_arguments():
    with pytest.raises(ValueProblem, match="max_dist"):
        evaluate(_objs([0]), _objs([0]))
    with pytest.raises(ValueProblem, match="method"):
        evaluate(_objs([0]), _objs([0]), max_dist=1, method="nope")


# ----------------------------------------------------------------------------- threshold curve
def test_plot_threshold_curve(tmp_path):
    truth = _dummy(n_tomos=2, n_obj=40, n_classes=2, seed=3)
    rng = np.random.default_rng(0)
    good = truth.assign(score=rng.uniform(0.5, 1.0, len(truth)))
    bad = truth.assign(x=truth.x + 300, score=rng.uniform(0.0, 0.5, len(truth)))
    pred = pd.concat([good, bad], ignore_index=True).drop(columns="size")
    path = tmp_path / "curve.png"
    table = plot_threshold_curve(pred, truth, max_dist=2, path=path, thresholds=[0.0, 0.25, 0.5, 0.75])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table["threshold"].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert table.loc[0, "precision"] == 0.5 and table.loc[2, "f1"] == 1.0
    assert table["recall"].is_monotonic_decreasing
    # DeepFinder style: threshold the cluster size when there is no score; one class only
    t2 = plot_threshold_curve(truth, truth, max_dist=0, path=tmp_path / "b.png", method="deepfinder",
                              class_label=2)
    assert len(t2) > 5 and t2["precision"].dropna().eq(1.0).all() and t2["recall"].iloc[0] == 1.0
