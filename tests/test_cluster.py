import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from tomochunk.errors import ShapeError, ValueProblem
from tomochunk.ops.cluster import cluster


def _spheres(shape, centres, classes, radius):
    lm = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for (cz, cy, cx), c in zip(centres, classes):
        lm[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2] = c
    return lm


def _f1(true_zyx, pred_zyx, dist):
    if len(true_zyx) == 0 or len(pred_zyx) == 0:
        return 0.0
    d = np.linalg.norm(np.asarray(true_zyx, float)[:, None] - np.asarray(pred_zyx, float)[None], axis=2)
    r, c = linear_sum_assignment(d)
    tp = int(np.sum(d[r, c] <= dist))
    return 2 * tp / (len(true_zyx) + len(pred_zyx))


def test_deepfinder_clustering_case(client):
    # DeepFinder's own test: 6 objects of 2 classes, spheres of radius 3 in 50x100x100 -> F1 = 1
    centres = [(10, 20, 20), (25, 50, 70), (40, 80, 30), (12, 75, 80), (30, 15, 85), (38, 45, 50)]
    classes = [1, 2, 1, 2, 1, 2]
    lm = _spheres((50, 100, 100), centres, classes, 3)
    df = cluster(da.from_array(lm, chunks=(25, 50, 50)), radius=3)
    assert list(df.columns) == ["class_label", "x", "y", "z", "size", "obj_id"]
    for c in (1, 2):
        true = [p for p, k in zip(centres, classes) if k == c]
        pred = df[df.class_label == c][["z", "y", "x"]].to_numpy()
        assert _f1(true, pred, dist=2) == 1.0
    assert (df["size"] == (lm > 0).sum() // 6).all()


def test_touching_objects_are_split_and_blocks_do_not_split_objects(client):
    # two touching spheres across a block boundary: meanshift -> 2, cc -> 1
    centres = [(16, 16, 12), (16, 16, 20)]
    lm = _spheres((32, 32, 32), centres, [1, 2], 4)
    lmd = da.from_array(lm, chunks=16)
    ms = cluster(lmd, radius=4)
    cc = cluster(lmd, radius=4, method="cc")
    assert len(cc) == 1 and len(ms) == 2
    assert _f1(centres, ms[["z", "y", "x"]].to_numpy(), dist=1.5) == 1.0
    assert sorted(ms.class_label) == [1, 2]
    assert ms["size"].sum() == (lm > 0).sum()


def test_matches_sklearn_meanshift_on_isolated_objects(rng):
    from sklearn.cluster import MeanShift

    centres = [(8, 8, 8), (8, 24, 24), (24, 8, 24), (24, 24, 8)]
    lm = _spheres((32, 32, 32), centres, [1, 1, 2, 2], 3)
    ms = MeanShift(bandwidth=3, bin_seeding=True).fit(np.argwhere(lm > 0))
    df = cluster(da.from_array(lm, chunks=12), radius=3)
    assert len(df) == len(ms.cluster_centers_)
    ref = np.sort(ms.cluster_centers_, axis=0)
    np.testing.assert_allclose(np.sort(df[["z", "y", "x"]].to_numpy(), axis=0), ref, atol=0.5)


def test_classes_and_min_size():
    lm = _spheres((20, 20, 20), [(5, 5, 5), (14, 14, 14)], [1, 3], 2)
    lm[0, 19, 19] = 1  # a one-voxel speck
    assert len(cluster(lm, radius=2)) == 3
    assert len(cluster(lm, radius=2, min_size=5)) == 2
    df = cluster(lm, radius=2, classes=[3])
    assert df.class_label.tolist() == [3]


def test_bad_input_and_empty_map():
    with pytest.raises(ShapeError):
        cluster(np.zeros((5, 5, 5), np.float32), radius=3)
    with pytest.raises(ValueProblem):
        cluster(np.zeros((5, 5, 5), np.uint8), radius=0)
    with pytest.raises(ValueProblem):
        cluster(np.zeros((5, 5, 5), np.uint8), radius=-1)
    df = cluster(np.zeros((5, 5, 5), np.uint8), radius=3)
    assert len(df) == 0 and list(df.columns) == ["class_label", "x", "y", "z", "size", "obj_id"]


def test_numpy_meanshift_equals_sklearn(rng):
    from sklearn.cluster import MeanShift

    from tomochunk.ops.cluster import _meanshift

    z, y, x = np.ogrid[:24, :24, :24]
    for _ in range(8):
        m = np.zeros((24, 24, 24), bool)
        for _ in range(rng.integers(1, 4)):
            c, r = rng.integers(6, 18, 3), rng.uniform(2.5, 4.5)
            m |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        pts = np.argwhere(m)
        bw = float(rng.choice([2, 3, 4]))
        ms = MeanShift(bandwidth=bw, bin_seeding=True).fit(pts)
        centres, labels = _meanshift(pts, bw)
        np.testing.assert_allclose(np.sort(centres, axis=0), np.sort(ms.cluster_centers_, axis=0), atol=1e-9)
        assert len(np.unique(labels)) == len(ms.cluster_centers_)


def test_sq_dist_is_bit_identical_to_the_broadcast_sum():
    from tomochunk.ops.cluster import _sq_dist

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 7, (40, 3)), rng.normal(0, 7, (300, 3)).round()
    assert np.array_equal(_sq_dist(a, b), ((a[:, None, :] - b[None]) ** 2).sum(-1))
