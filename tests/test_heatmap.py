"""Heatmap targets and distributed heatmap decoding against single-process references."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from tomochunk.errors import ValueProblem
from tomochunk.ops.heatmap import decode_heatmap, heatmap_targets


def _objects(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    zyx = rng.uniform(0, np.asarray(shape) - 1, size=(n, 3))
    return pd.DataFrame({"class_label": rng.integers(1, 3, n), "x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0]})


def _reference_heat(objs, shape, sigma, radius):
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    out = np.zeros(shape, np.float64)
    for _, o in objs.iterrows():
        d2 = (z - o.z) ** 2 + (y - o.y) ** 2 + (x - o.x) ** 2
        out = np.maximum(out, np.where(d2 <= radius * radius, np.exp(-d2 / (2 * sigma * sigma)), 0))
    return out


def test_heatmap_targets_match_reference_and_do_not_depend_on_chunks():
    shape = (20, 24, 28)
    objs = _objects(12, shape)
    h1, l1 = heatmap_targets(objs, shape, sigma=1.5, soft=0.2, hard=0.6, chunks=7)
    h2, l2 = heatmap_targets(objs, shape, sigma=1.5, soft=0.2, hard=0.6, chunks=(20, 24, 28))
    h1, l1, h2, l2 = (a.compute() for a in (h1, l1, h2, l2))
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(l1, l2)
    ref = _reference_heat(objs, shape, 1.5, 5)  # support: max(3 sigma, sigma sqrt(2 ln 5)) -> 5
    np.testing.assert_allclose(h1, ref, atol=1e-6)
    assert l1.dtype == np.uint8 and set(np.unique(l1)) <= {0, 1, 2}
    np.testing.assert_array_equal(l1 == 1, ref >= 0.6)
    np.testing.assert_array_equal(l1 == 2, (ref >= 0.2) & (ref < 0.6))


def test_heatmap_targets_classes_and_errors():
    shape = (16, 16, 16)
    objs = pd.DataFrame({"class_label": [1, 2], "x": [4.0, 12.0], "y": [4.0, 12.0], "z": [4.0, 12.0]})
    h, lab = heatmap_targets(objs, shape, sigma=1.0, classes=2)
    lab = lab.compute()
    assert lab[12, 12, 12] == 1 and lab[4, 4, 4] == 0
    with pytest.raises(ValueProblem):
        heatmap_targets(objs, shape, soft=0.6, hard=0.5)
    with pytest.raises(ValueProblem):
        heatmap_targets(objs.drop(columns="x"), shape)


def _reference_decode(h, threshold, r, z_range, border, top_k, smooth=0):
    """Whole-array NMS with scipy: local maxima of a (2r+1)^3 box, then cut-offs and top-K."""
    if smooth:
        h = ndi.gaussian_filter(h, smooth, mode="nearest").astype(np.float32)
    key = np.where(h >= threshold, h.astype(np.float64), -np.inf)
    mx = ndi.maximum_filter(key, size=2 * r + 1, mode="constant", cval=-np.inf)
    zyx = np.argwhere((key == mx) & (h >= threshold))
    s = h[tuple(zyx.T)]
    ok = np.all((zyx >= border) & (zyx <= np.asarray(h.shape) - 1 - border), axis=1)
    ok &= (zyx[:, 0] >= z_range[0]) & (zyx[:, 0] <= z_range[1])
    zyx, s = zyx[ok], s[ok]
    order = np.argsort(-s, kind="stable")[:top_k]
    return {tuple(p) for p in zyx[order]}, np.sort(s[order])[::-1]


@pytest.mark.parametrize("top_k, smooth", [(None, 0), (8, 1.5)])
def test_decode_matches_single_process_reference_when_split_into_blocks(client, top_k, smooth):
    rng = np.random.default_rng(3)
    h = ndi.gaussian_filter(rng.normal(size=(40, 48, 52)), 1.5).astype(np.float32)
    h = (h - h.min()) / (h.max() - h.min())
    thr, r, z_range, border = 0.45, 3, (5, 33), 2
    ref_set, ref_scores = _reference_decode(h, thr, r, z_range, border, top_k or 10 ** 6, smooth)
    assert len(_reference_decode(h, thr, r, z_range, border, 10 ** 6, smooth)[0]) > 8
    dh = da.from_array(h, chunks=(20, 24, 26))  # 8 blocks, picks near the seams
    df = decode_heatmap(dh, threshold=thr, min_distance=r, z_range=z_range, border=border, top_k=top_k,
                        smooth=smooth)
    got = {(int(z), int(y), int(x)) for z, y, x in df[["z", "y", "x"]].to_numpy()}
    assert got == ref_set
    np.testing.assert_allclose(df["score"].to_numpy(), ref_scores, rtol=1e-6)
    assert list(df.columns[:5]) == ["class_label", "x", "y", "z", "score"]
    assert (np.diff(df["score"].to_numpy()) <= 0).all()
    assert df["obj_id"].tolist() == list(range(1, len(df) + 1))


def test_decode_multichannel_border_tuple_and_errors():
    h = np.zeros((3, 16, 16, 16), np.float32)
    h[1, 8, 8, 8] = 0.9
    h[2, 8, 8, 1] = 0.8  # near the x face
    h[2, 9, 3, 9] = 0.7
    df = decode_heatmap(h, threshold=0.5, border=(0, 0, 2), voxel_size=12.0)
    assert sorted(df["class_label"].tolist()) == [1, 2]
    assert df.attrs["voxel_size"] == 12.0
    assert decode_heatmap(h, threshold=0.5, top_k=0).empty
    with pytest.raises(ValueProblem):
        decode_heatmap(h, z_range=(5, 1))
    with pytest.raises(ValueProblem):
        decode_heatmap(h, border=-1)
    # a saturated plateau: without smoothing the NMS keeps its corner, with it the centre
    p = np.zeros((24, 24, 24), np.float32)
    p[8:15, 8:15, 8:15] = 1.0
    assert decode_heatmap(p, min_distance=5)[["z", "y", "x"]].values.tolist() == [[8.0, 8.0, 8.0]]
    assert decode_heatmap(p, min_distance=5, smooth=2)[["z", "y", "x"]].values.tolist() == [[11.0, 11.0, 11.0]]


def test_cli_pick_heatmap(tmp_path):
    from tomochunk.cli import main
    from tomochunk.io.objects import read_objects
    from tomochunk.io.volume import write_volume

    h = np.zeros((24, 24, 24), np.float32)
    h[5, 10, 10] = 0.9
    h[15, 10, 10] = 0.8
    h[20, 12, 12] = 0.95
    write_volume(h, tmp_path / "heat.zarr", voxel_size=10.0, chunks=12)
    out = tmp_path / "picks.csv"
    rc = main(["pick", str(tmp_path / "heat.zarr"), "--method", "heatmap", "--threshold", "0.5",
               "--z-range", "0,18", "--top-k", "1", "--smooth", "0", "-o", str(out)])
    assert rc == 0
    df = read_objects(out)
    assert df[["x", "y", "z"]].to_numpy().tolist() == [[10.0, 10.0, 5.0]]
