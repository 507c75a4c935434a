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
    h = np.ceil(r) + 2  # template half-side
    assert (c - h[:, None] >= 0).all() and (c + h[:, None] <= np.array(SHAPE)).all()


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
    assert sorted(t) == [1, 2] and t[2].shape == (12, 12, 12)
    rod = t[1]
    for m in t.values():
        assert m.dtype == bool and len(set(m.shape)) == 1 and m.shape[0] % 2 == 0
        c = m.shape[0] // 2
        assert m[c, c, c] and not m[0].any() and not m[:, :, 0].any()
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


def test_rotation_matches_deepfinder_convention():
    """euler_matrix equals the matrix DeepFinder applies (scipy 'YZY' on (axis1, axis0, axis2) positions)."""
    from scipy.spatial.transform import Rotation

    p = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # (y, z, x) = p @ (x, y, z)
    for phi, psi, the in np.random.default_rng(0).uniform(0, 360, (5, 3)):
        m = Rotation.from_euler("YZY", [-phi, -the, -psi], degrees=True).as_matrix()
        np.testing.assert_allclose(p.T @ m.T @ p, euler_matrix(phi, psi, the), atol=1e-12)


def test_labels_rebuilt_by_targets(tomo):
    """tomochunk.targets.shapes(objects, shape, class_templates()) gives the phantom's label map."""
    from tomochunk.ops.targets import shapes

    vol, obj, lab = tomo
    rebuilt = shapes(obj, lab.shape, class_templates(5), chunks=32).compute()
    np.testing.assert_array_equal(rebuilt, lab)


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


# --- movie -------------------------------------------------------------------------------------

MSHAPE = (60, 64, 80)


@pytest.fixture(scope="module")
def movie():
    from tomochunk.phantom import phantom_movie

    return phantom_movie(MSHAPE, n_spots=6, n_events=3, seed=2, return_tracks=True)


def test_movie_outputs(movie):
    m, obj, lab, tracks = movie
    assert m.shape == MSHAPE and m.dtype == np.float32 and lab.dtype == np.uint8
    assert obj.attrs["classes"] == {1: "spot", 2: "exocytosis"}
    assert (obj.class_label == 2).sum() == 3 and (obj.class_label == 1).sum() == 6
    assert obj.obj_id.is_unique
    assert set(tracks.track_id) == set(obj.obj_id[obj.class_label == 1])
    assert set(np.unique(lab)) == {0, 1, 2}


def test_movie_events_present(movie):
    m, obj, lab, _ = movie
    clean = __import__("tomochunk.phantom", fromlist=["x"]).phantom_movie(MSHAPE, n_spots=6, n_events=3, seed=2,
                                                                         snr=None)[0]
    for _, ev in obj[obj.class_label == 2].iterrows():
        t, y, x = int(ev.z), int(round(ev.y)), int(round(ev.x))
        assert lab[t, y, x] == 2
        # brightens to a peak at t, then fades
        trace = clean[:, y, x]
        if t >= 3:
            assert trace[t] > trace[t - 3] + 1.5
        assert trace[t] > trace[min(t + 8, MSHAPE[0] - 1)] + 1.0
        # labelled voxels of this event match its size
        box = lab[max(t - 3, 0):t + 10, max(y - 8, 0):y + 9, max(x - 8, 0):x + 9]
        assert abs(int((box == 2).sum()) - ev["size"]) <= 0.1 * ev["size"]
    # spots: labelled 1 at each track position
    _, _, _, tracks = movie
    t = tracks.t.to_numpy()
    vals = lab[t, np.round(tracks.y).astype(int), np.round(tracks.x).astype(int)]
    assert np.isin(vals, [1, 2]).all()


def test_movie_deterministic_and_chunked(movie):
    from tomochunk.phantom import phantom_movie

    m, obj, lab, _ = movie
    again = phantom_movie(MSHAPE, n_spots=6, n_events=3, seed=2)
    np.testing.assert_array_equal(again[0], m)
    assert again[1].equals(obj)
    lazy = phantom_movie(MSHAPE, n_spots=6, n_events=3, seed=2, chunks=(16, 40, 48))
    np.testing.assert_array_equal(lazy[2].compute(), lab)
    np.testing.assert_allclose(lazy[0].compute(), m, atol=1e-4)
    other = phantom_movie(MSHAPE, n_spots=6, n_events=3, seed=3)
    assert not np.array_equal(other[0], m)


def test_movie_snr():
    from tomochunk.phantom import phantom_movie

    clean = phantom_movie((20, 64, 64), seed=1, snr=None)[0]
    noisy = phantom_movie((20, 64, 64), seed=1, snr=5.0)[0]
    assert abs((noisy - clean).std() - 0.2) < 0.01


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_phantom(tmp_path, capsys):
    pytest.importorskip("tomochunk.io.objects")
    from tomochunk.cli import main
    from tomochunk.io.objects import read_objects
    from tomochunk.io.volume import open_volume

    out = tmp_path / "tomo.zarr"
    truth = tmp_path / "truth.csv"
    rc = main(["phantom", str(out), "--shape", "32,64,64", "--classes", "sphere,rod:6", "--seed", "3",
               "--n-objects", "6", "--objects", str(truth), "--levels", "1"])
    assert rc == 0
    assert "tomo.zarr" in capsys.readouterr().out
    vol, obj, lab = phantom_tomogram((32, 64, 64), ["sphere", ("rod", 6)], n_objects=6, seed=3)
    v = open_volume(out)
    np.testing.assert_allclose(np.asarray(v), vol, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(open_volume(tmp_path / "truth" / "tomo_labels.zarr")), lab)
    back = read_objects(truth)
    np.testing.assert_allclose(back[["x", "y", "z"]].to_numpy(), obj[["x", "y", "z"]].to_numpy())
    np.testing.assert_array_equal(back.class_label.to_numpy(), obj.class_label.to_numpy())
    # refuses to overwrite; a movie as MRC
    assert main(["phantom", str(out), "--shape", "32,64,64", "--objects", str(truth)]) == 2
    assert main(["phantom", str(tmp_path / "m.mrc"), "--movie", "--shape", "20,48,48", "--n-events", "2",
                 "--chunks", "10,48,48"]) == 0
    assert (tmp_path / "truth" / "m_labels.mrc").exists() and (tmp_path / "truth" / "m_objects.csv").exists()


def test_membranes_are_unlabelled_clutter():
    vol, obj, lab = phantom_tomogram((64, 96, 96), classes=2, n_objects=8, membranes=1, snr=None,
                                     missing_wedge=None, background=0.0, seed=4)
    membrane = (vol < -0.4) & (lab == 0)
    assert membrane.sum() > 1000          # a dark vesicle shell, not in the label map
    assert (vol[lab > 0] < -0.4).mean() > 0.5
    assert len(obj) == 8
