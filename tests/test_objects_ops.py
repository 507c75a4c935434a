"""Object-list operations."""

import numpy as np
import pandas as pd
import pytest

from tomochunk import (ValueProblem, filter_objects, merge_objects, nms_objects, remove_classes,
                       scale_coordinates, select_classes, split_by_tomogram)
from tomochunk.io.objects import validate_objects


def _df(n=20, seed=0, tomo=None):
    rng = np.random.default_rng(seed)
    d = {"class_label": rng.integers(1, 4, n), "x": rng.uniform(0, 50, n), "y": rng.uniform(0, 50, n),
         "z": rng.uniform(0, 50, n), "score": rng.uniform(0, 1, n), "size": rng.integers(1, 100, n)}
    if tomo is not None:
        d = {"tomo": [tomo] * n, **d}
    return validate_objects(pd.DataFrame(d), voxel_size=4.0, classes={1: "ribo", 2: "prot", 3: "mem"})


def test_select_and_remove_classes():
    df = _df()
    s = select_classes(df, [1, "mem"])
    assert set(s["class_label"]) == {1, 3} and s.attrs == df.attrs
    r = remove_classes(df, "ribo")
    assert set(r["class_label"]) == {2, 3}
    assert len(s) + len(select_classes(df, 2)) == len(df)
    assert len(r) + len(select_classes(df, 1)) == len(df)
    with pytest.raises(ValueProblem, match="unknown class name"):
        select_classes(df, "nope")


def test_scale_coordinates_updates_voxel_size():
    df = _df()
    b = scale_coordinates(df, 0.5)
    np.testing.assert_array_equal(b[["x", "y", "z"]], df[["x", "y", "z"]] * 0.5)
    assert b.attrs["voxel_size"] == 8.0 and df.attrs["voxel_size"] == 4.0
    # physical positions (Å) are unchanged
    np.testing.assert_allclose(b["x"] * 8.0, df["x"] * 4.0)
    with pytest.raises(ValueProblem):
        scale_coordinates(df, 0)


def test_filter_objects():
    df = _df()
    f = filter_objects(df, min_score=0.3, max_score=0.8, min_size=10)
    assert ((f["score"] >= 0.3) & (f["score"] <= 0.8) & (f["size"] >= 10)).all()
    expect = ((df["score"] >= 0.3) & (df["score"] <= 0.8) & (df["size"] >= 10)).sum()
    assert len(f) == expect
    assert len(filter_objects(df)) == len(df)
    with pytest.raises(ValueProblem, match="no 'score'"):
        filter_objects(df.drop(columns="score"), min_score=0.5)


def test_merge_and_split():
    a, b = _df(5, seed=1, tomo="a"), _df(7, seed=2, tomo="b")
    m = merge_objects(a, b)
    assert len(m) == 12 and m.attrs["voxel_size"] == 4.0 and m.attrs["classes"][1] == "ribo"
    assert len(merge_objects([a, b])) == 12
    parts = split_by_tomogram(m)
    assert list(parts) == ["a", "b"]
    pd.testing.assert_frame_equal(parts["a"], a)
    pd.testing.assert_frame_equal(parts["b"], b)
    assert list(split_by_tomogram(_df(3))) == [None]
    c = scale_coordinates(b, 0.5)
    with pytest.raises(ValueProblem, match="voxel sizes"):
        merge_objects(a, c)
    d = b.copy()
    d.attrs = {**b.attrs, "classes": {1: "other"}}
    with pytest.raises(ValueProblem, match="class 1"):
        merge_objects(a, d)


def test_nms_keeps_best_and_respects_distance():
    df = validate_objects(pd.DataFrame({
        "class_label": [1, 1, 1, 2, 1],
        "x": [0.0, 2.0, 5.0, 1.0, 9.0], "y": 0.0, "z": 0.0,
        "score": [0.5, 0.9, 0.8, 0.1, 0.2]}))
    out = nms_objects(df, 3.0)
    # 0.9 at x=2 suppresses x=0 (d=2); x=5 is exactly 3 away: kept; class 2 is separate; x=9 is 4 from x=5
    assert out["x"].tolist() == [2.0, 5.0, 1.0, 9.0]
    out = nms_objects(df, 3.0, by_class=False)
    assert out["x"].tolist() == [2.0, 5.0, 9.0]
    assert len(nms_objects(df, 0)) == len(df)


def test_nms_matches_brute_force_and_tomograms():
    rng = np.random.default_rng(3)
    n = 400
    df = validate_objects(pd.DataFrame({"tomo": rng.integers(0, 2, n), "class_label": 1,
                                        "x": rng.uniform(0, 60, n), "y": rng.uniform(0, 60, n),
                                        "z": rng.uniform(0, 20, n), "score": rng.uniform(0, 1, n)}))
    out = nms_objects(df, 6.0)
    for t, g in out.groupby("tomo"):
        p = g[["x", "y", "z"]].to_numpy()
        d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 1e9
        assert d.min() >= 6.0
    # brute-force greedy reference
    keep = np.zeros(n, bool)
    p = df[["x", "y", "z"]].to_numpy()
    for i in np.argsort(-df["score"].to_numpy(), kind="stable"):
        same = (df["tomo"].to_numpy() == df["tomo"].iloc[i]) & keep
        if not same.any() or np.linalg.norm(p[same] - p[i], axis=1).min() >= 6.0:
            keep[i] = True
    pd.testing.assert_frame_equal(out, df[keep].reset_index(drop=True))
