"""Maps that are one block run without a task graph and give what the blocked path gives (issue 24)."""

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from tomochunk.ops import _ccl
from tomochunk.ops.cluster import cluster
from tomochunk.ops.heatmap import decode_heatmap
from tomochunk.ops.label import label, regionprops
from tomochunk.ops.pick import pick
from tomochunk.ops.targets import spheres


@pytest.fixture(scope="module")
def maps():
    """Spheres of 2 classes, some touching (mean shift splits them), and a score map."""
    rng = np.random.default_rng(3)
    n = 40
    objs = pd.DataFrame({"class_label": rng.integers(1, 3, n), "x": rng.uniform(4, 60, n),
                         "y": rng.uniform(4, 60, n), "z": rng.uniform(4, 28, n)})
    lm = spheres(objs, (32, 64, 64), 4, chunks=64).compute()
    score = (lm > 0) * rng.uniform(0.5, 1.0, lm.shape).astype(np.float32)
    return lm, score.astype(np.float32)


def _both(monkeypatch, fn):
    fast = fn()
    monkeypatch.setattr(_ccl, "FAST_PATH", False)
    blocked = fn()
    monkeypatch.setattr(_ccl, "FAST_PATH", True)
    return fast, blocked


def test_label_fast_equals_blocked(maps, monkeypatch):
    lm, _ = maps
    (lf, nf), (lb, nb) = _both(monkeypatch, lambda: label(lm > 0, connectivity=2))
    assert nf == nb > 0
    np.testing.assert_array_equal(lf.compute(), lb.compute())


def test_regionprops_fast_equals_blocked(maps, monkeypatch):
    lm, score = maps
    lab = label(lm > 0)[0].compute()
    fast, blocked = _both(monkeypatch, lambda: regionprops(lab, intensity=score, classes=lm.astype(np.int64)))
    pd.testing.assert_frame_equal(fast, blocked)


@pytest.mark.parametrize("method", ["meanshift", "cc"])
def test_cluster_fast_equals_blocked_and_chunked(maps, monkeypatch, method):
    lm, _ = maps
    fast, blocked = _both(monkeypatch, lambda: cluster(lm, radius=3, method=method, classes=[1, 2]))
    assert len(fast) > 0
    pd.testing.assert_frame_equal(fast, blocked)
    chunked = cluster(da.from_array(lm, chunks=(16, 24, 40)), radius=3, method=method, classes=[1, 2])
    pd.testing.assert_frame_equal(fast, chunked)


@pytest.mark.parametrize("kw", [dict(mode="peaks", min_spacing=3, min_size=20), dict(mode="centroid", min_size=5),
                                dict(mode="nms", min_spacing=2, top_k=25)])
def test_pick_fast_equals_blocked_and_chunked(maps, monkeypatch, kw):
    _, score = maps
    fast, blocked = _both(monkeypatch, lambda: pick(score, threshold=0.6, **kw))
    assert len(fast) > 0
    pd.testing.assert_frame_equal(fast, blocked)
    chunked = pick(da.from_array(score, chunks=(16, 32, 24)), threshold=0.6, **kw)
    pd.testing.assert_frame_equal(fast, chunked)


def test_decode_heatmap_fast_equals_blocked(maps, monkeypatch):
    _, score = maps
    fast, blocked = _both(monkeypatch, lambda: decode_heatmap(score, threshold=0.6, smooth=1, top_k=10))
    pd.testing.assert_frame_equal(fast, blocked)


def test_one_block_maps_run_without_a_scheduler(maps, monkeypatch):
    lm, score = maps

    def no_graph(*a, **k):
        raise AssertionError("a one-block map went through the dask scheduler")

    monkeypatch.setattr(dask, "compute", no_graph)
    monkeypatch.setattr(da.Array, "compute", no_graph)
    assert len(cluster(lm, radius=3)) > 0
    assert label(lm > 0)[1] > 0
    assert len(regionprops(lm.astype(np.int64))) == 2
    for mode in ("peaks", "centroid", "nms"):
        assert len(pick(score, threshold=0.6, min_size=5, mode=mode)) > 0
