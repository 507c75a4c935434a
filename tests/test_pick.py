import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from tomochunk.errors import ShapeError, ValueProblem
from tomochunk.ops.pick import pick


@pytest.fixture
def smooth(rng):
    s = ndi.gaussian_filter(rng.random((36, 40, 38)), 2)
    return ((s - s.min()) / (s.max() - s.min())).astype(np.float32)


def _same(a, b):
    cols = ["class_label", "x", "y", "z", "score"]
    return len(a) == len(b) and np.allclose(a[cols].to_numpy(), b[cols].to_numpy())


@pytest.mark.parametrize("mode", ["peaks", "nms", "centroid"])
def test_distributed_equals_single_block_reference(client, smooth, mode):
    kw = dict(threshold=0.55, min_spacing=3, mode=mode, min_size=4)
    ref = pick(da.from_array(smooth, chunks=smooth.shape), **kw)
    out = pick(da.from_array(smooth, chunks=(12, 14, 13)), **kw)
    assert len(ref) > 5
    assert _same(ref, out)
    assert list(out.columns[:5]) == ["class_label", "x", "y", "z", "score"]


def test_peaks_spacing_size_margin_topk(smooth):
    df = pick(smooth, threshold=0.5, min_spacing=4, mode="peaks")
    p = df[["z", "y", "x"]].to_numpy()
    d = np.linalg.norm(p[:, None] - p[None], axis=2) + np.eye(len(p)) * 1e9
    assert d.min() > 4
    lab, _ = ndi.label(smooth >= 0.5)
    sizes = np.bincount(lab.ravel())
    big = pick(smooth, threshold=0.5, min_spacing=4, min_size=50)
    assert (sizes[lab[tuple(big[["z", "y", "x"]].to_numpy().astype(int).T)]] >= 50).all()
    assert len(big) < len(df)
    m = pick(smooth, threshold=0.5, min_spacing=4, margin=5)
    assert (m[["x", "y", "z"]].to_numpy() >= 5).all()
    top = pick(smooth, threshold=0.5, min_spacing=4, top_k=3, mode="nms")
    assert len(top) == 3 and top.score.is_monotonic_decreasing


def test_peaks_find_sphere_centres_and_plateaus():
    s = np.zeros((40, 40, 40), np.float32)
    z, y, x = np.ogrid[:40, :40, :40]
    centres = [(10, 10, 10), (10, 28, 25), (30, 20, 12)]
    for c in centres:
        s[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 16] = 1.0  # binary map: EDT plateaus only
    df = pick(da.from_array(s, chunks=20), threshold=0.5, min_spacing=6)
    got = sorted(map(tuple, df[["z", "y", "x"]].to_numpy().astype(int)))
    assert got == sorted(centres)


def test_multiclass_units_and_xarray():
    import xarray as xr

    s = np.zeros((3, 24, 24, 24), np.float32)
    s[1, 5:8, 5:8, 5:8] = 0.9
    s[2, 15:18, 15:18, 15:18] = 0.8
    s[0] = 1 - s[1:].sum(0)
    xa = xr.DataArray(da.from_array(s, chunks=(1, 12, 12, 12)), dims=("c", "z", "y", "x"),
                      attrs={"voxel_size": 10.0})
    df = pick(xa, threshold=0.5, min_spacing=30, units="angstrom")
    assert df.class_label.tolist() == [1, 2]
    assert df.attrs["voxel_size"] == 10.0
    assert df[["x", "y", "z"]].to_numpy().tolist() == [[6, 6, 6], [16, 16, 16]]
    assert pick(xa, classes=[2]).class_label.tolist() == [2]


def test_bad_input_and_empty():
    with pytest.raises(ShapeError):
        pick(np.zeros((4, 4)))
    with pytest.raises(ValueProblem):
        pick(np.zeros((4, 4, 4)), mode="blob")
    with pytest.raises(ValueProblem):
        pick(np.zeros((4, 4, 4)), units="angstrom")
    assert len(pick(np.zeros((8, 8, 8)))) == 0
    assert len(pick(np.zeros((8, 8, 8)), mode="centroid")) == 0


def test_cli_pick_many_inputs(tmp_path):
    import mrcfile
    import zarr

    from tomochunk.cli import main
    from tomochunk.io.objects import read_objects

    lm = np.zeros((20, 30, 30), np.uint8)
    lm[3:7, 3:7, 3:7] = 1
    lm[10:14, 20:24, 20:24] = 2
    for name in ("t1", "t2"):
        with mrcfile.new(tmp_path / f"{name}.mrc") as m:
            m.set_data(lm)
            m.voxel_size = 10
    assert main(["pick", str(tmp_path / "t1.mrc"), str(tmp_path / "t2.mrc"), "--method", "meanshift",
                 "--radius", "3", "-o", str(tmp_path / "o.xml")]) == 0
    df = read_objects(tmp_path / "o.xml")
    assert len(df) == 4 and sorted(df["class_label"]) == [1, 1, 2, 2]
    s = (lm == 1).astype(np.float32) * 0.9
    z = zarr.create_array(tmp_path / "s.zarr", shape=s.shape, dtype=s.dtype, chunks=(10, 15, 15))
    z[:] = s
    assert main(["pick", str(tmp_path / "s.zarr"), "--method", "peaks", "--min-spacing", "3",
                 "-o", str(tmp_path / "p.csv")]) == 0
    p = read_objects(tmp_path / "p.csv")
    assert len(p) == 1
    # a score map is not a label map: clear one-line error, exit status 2
    assert main(["pick", str(tmp_path / "s.zarr"), "--method", "cc", "-o", str(tmp_path / "q.csv")]) == 2


def test_squared_edt_matches_scipy():
    from scipy import ndimage as ndi

    from tomochunk.ops._peaks import squared_edt as _squared_edt

    rng = np.random.default_rng(0)
    mask = ndi.gaussian_filter(rng.standard_normal((30, 40, 50)), 2) > 0.05
    mask[0] = True  # foreground on a face: distances run to the nearest background inside only
    ref = ndi.distance_transform_edt(mask) ** 2
    np.testing.assert_array_equal(np.rint(_squared_edt(mask)), np.rint(ref))


def test_nms_on_flat_plateau_gives_one_pick_per_plateau():
    # an untrained network's flat map makes every voxel a candidate tie; a tie loses to any tied
    # candidate within reach with a lower global index, so a plateau keeps only its first voxel. The
    # dense tie rule must give what the pair rule gives, without listing (2r+1)^3 pairs per voxel.
    s = np.zeros((30, 34, 32), np.float32)
    s[2:28, 3:31, 1:31] = 0.7
    s[8, 9, 10] = 0.9
    kw = dict(threshold=0.5, min_spacing=4, mode="nms")
    for m in (s, da.from_array(s, chunks=(11, 13, 12))):
        got = sorted(map(tuple, pick(m, **kw)[["z", "y", "x", "score"]].to_numpy().round(3)))
        assert got == [(2, 3, 1, 0.7), (8, 9, 10, 0.9)]
