import numpy as np
import pytest

from tomochunk.errors import ValueProblem
from tomochunk.phantom import (SHAPES, class_templates, euler_matrix, missing_wedge_filter, phantom_tomogram,
                               rotate_template)

SHAPE = (64, 96, 96)


@pytest.fixture(scope="module")
def tomo():
    return phantom_tomogram(SHAPE, classes=5, n_objects=25, seed=7)


def _wedge_region(shape, tilt):
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    miss = np.abs(kz) > np.tan(np.radians(tilt)) * kx + 1e-6
    return np.broadcast_to(miss, (shape[0], shape[1], shape[2] // 2 + 1))


def test_outputs_and_object_list(tomo):
    vol, obj, lab = tomo
    assert vol.shape == SHAPE and vol.dtype == np.float32 and lab.dtype == np.uint8
    assert list(obj.columns) == ["tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "size", "obj_id"]
    assert obj.attrs["voxel_size"] == 10.0
    assert obj.attrs["classes"] == {1: "sphere", 2: "ellipsoid", 3: "shell", 4: "rod", 5: "dumbbell"}
    assert len(obj) > 20 and set(obj.class_label) == {1, 2, 3, 4, 5}
    assert obj.obj_id.is_unique
    assert np.isfinite(vol).all()
    # roughly balanced classes
    counts = obj.class_label.value_counts()
    assert counts.max() - counts.min() <= 1


def test_deterministic():
    a = phantom_tomogram((32, 48, 48), classes=3, seed=3)
    b = phantom_tomogram((32, 48, 48), classes=3, seed=3)
    c = phantom_tomogram((32, 48, 48), classes=3, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    assert a[1].equals(b[1])
    assert not np.array_equal(a[0], c[0])


def test_objects_inside_and_not_overlapping(tomo):
    from scipy.spatial.distance import cdist

    vol, obj, lab = tomo
    size = np.array([s for _, s in SHAPES.values()])[:5]
    r = size[obj.class_label.to_numpy() - 1]
    c = obj[["z", "y", "x"]].to_numpy()
    d = cdist(c, c)
    np.fill_diagonal(d, np.inf)
    assert (d >= r[:, None] + r[None, :] + 1).all()
    h = np.ceil(r) + 1
    assert (c - h[:, None] >= 0).all() and (c + h[:, None] < np.array(SHAPE)).all()


def test_labels_agree_with_objects(tomo):
    from scipy import ndimage

    vol, obj, lab = tomo
    zyx = obj[["z", "y", "x"]].to_numpy().astype(int)
    centre = lab[tuple(zyx.T)]
    solid = obj.class_label.isin([1, 2, 4, 5]).to_numpy()  # shells have a hollow centre
    np.testing.assert_array_equal(centre[solid], obj.class_label.to_numpy()[solid])
    # every labelled component belongs to exactly one object, of that object's class
    comp, n = ndimage.label(lab > 0)
    assert n == len(obj)
    for (z, y, x), k, s in zip(zyx, obj.class_label, obj["size"]):
        box = lab[max(z - 10, 0):z + 11, max(y - 10, 0):y + 11, max(x - 10, 0):x + 11]
        assert abs(int((box == k).sum()) - s) <= 0.15 * s + 5


def test_snr_and_contrast():
    shape = (48, 64, 64)
    clean, obj, lab = phantom_tomogram(shape, snr=None, missing_wedge=None, seed=2)
    noisy, _, _ = phantom_tomogram(shape, snr=0.5, missing_wedge=None, seed=2)
    ratio = clean.var() / (noisy - clean).var()
    assert 0.35 < ratio < 0.7
    # negative contrast: particles darker than background
    assert clean[lab > 0].mean() < clean[lab == 0].mean() - 0.5


def test_missing_wedge_zeroes_the_wedge(tomo):
    vol = tomo[0]
    f = np.abs(np.fft.rfftn(vol))
    miss = _wedge_region(vol.shape, 60)
    assert f[miss].max() < 1e-4 * f[~miss].max()
    # without the wedge the region holds energy
    v2, _, _ = phantom_tomogram(SHAPE, classes=5, n_objects=25, seed=7, missing_wedge=None)
    f2 = np.abs(np.fft.rfftn(v2))
    assert f2[miss].mean() > 0.1 * f2[~miss].mean()
    w = missing_wedge_filter(v2, 45)
    assert np.abs(np.fft.rfftn(w))[_wedge_region(SHAPE, 45)].max() < 1e-3


def test_templates_and_rotation():
    t = class_templates(["rod", ("sphere", 4)])
    assert sorted(t) == [1, 2] and t[2].shape == (11, 11, 11)
    rod = t[1]
    for m in t.values():
        assert m.dtype == bool and all(s % 2 == 1 for s in m.shape)
        c = m.shape[0] // 2
        assert m[c, c, c]
    # the rod lies along z; the=90 turns z onto -y (R @ (0,0,1) = (0,-1,0))
    r = euler_matrix(0, 0, 90)
    np.testing.assert_allclose(r @ [0, 0, 1], [0, -1, 0], atol=1e-12)
    flat = rotate_template(rod, 0, 0, 90)
    c = rod.shape[0] // 2
    zs, ys, xs = np.nonzero(flat)
    assert np.ptp(ys) > 2 * np.ptp(zs)
    assert abs(int(flat.sum()) - int(rod.sum())) < 0.1 * rod.sum()
    # phi then the then psi: composition R = Rz(psi) Rx(the) Rz(phi)
    np.testing.assert_allclose(euler_matrix(30, 40, 50), euler_matrix(0, 40, 0) @ euler_matrix(0, 0, 50)
                               @ euler_matrix(30, 0, 0), atol=1e-12)
    np.testing.assert_array_equal(rotate_template(rod, 0, 0, 0), rod)


def test_bad_arguments():
    with pytest.raises(ValueProblem):
        phantom_tomogram((16, 16, 16), classes=["cube"])
    with pytest.raises(ValueProblem):
        phantom_tomogram((16, 16, 16), classes=99)
    with pytest.raises(ValueProblem):
        phantom_tomogram((16, 16), classes=2)
    with pytest.raises(ValueProblem):
        phantom_tomogram((16, 16, 16), snr=0)


def test_crowded_volume_places_fewer():
    vol, obj, lab = phantom_tomogram((24, 24, 24), classes=["sphere"], n_objects=500, seed=0)
    assert 0 < len(obj) < 500


def test_chunked_matches_eager_and_is_chunk_independent():
    import dask.array as da

    shape = (40, 72, 64)
    eager = phantom_tomogram(shape, classes=4, seed=5, missing_wedge=None)
    lazy = phantom_tomogram(shape, classes=4, seed=5, missing_wedge=None, chunks=(16, 32, 24))
    assert isinstance(lazy[0], da.Array) and isinstance(lazy[2], da.Array)
    assert lazy[1].equals(eager[1])
    np.testing.assert_array_equal(lazy[2].compute(), eager[2])
    np.testing.assert_allclose(lazy[0].compute(), eager[0], atol=1e-5)
    # with the wedge: labels exact, volume deterministic and close to the eager one
    w1 = phantom_tomogram(shape, classes=4, seed=5, chunks=(20, 36, 32))
    w2 = phantom_tomogram(shape, classes=4, seed=5, chunks=(20, 36, 32))
    np.testing.assert_array_equal(w1[0].compute(), w2[0].compute())
    we = phantom_tomogram(shape, classes=4, seed=5)
    np.testing.assert_array_equal(w1[2].compute(), we[2])
    assert np.corrcoef(w1[0].compute().ravel(), we[0].ravel())[0, 1] > 0.9


def test_chunked_with_distributed_client(client):
    vol, obj, lab = phantom_tomogram((32, 64, 64), classes=3, seed=1, chunks=32)
    eager_lab = phantom_tomogram((32, 64, 64), classes=3, seed=1)[2]
    v, l = client.compute([vol, lab], sync=True)
    np.testing.assert_array_equal(l, eager_lab)
    assert v.shape == (32, 64, 64)
