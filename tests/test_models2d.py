"""Slice-wise inference (tiling, resampling, 2.5D halo, distributed) and training from sparse tiles."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from tomochunk.nn.archive import FeatureModel, ModelInfo, load_archive, new_model, save_archive
from tomochunk.nn.registry import available_models, get_architecture, register_file
from tomochunk.nn.slices import (augment_tiles, predict_block, sample_tiles, segment_slices,
                                 train_slices)


_TAP = """
import numpy as np
import keras
TITLE = "test: sigmoid of one input channel"
def create(input_shape, n_classes=1, tap=0):
    inp = keras.Input(input_shape)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="tap")(inp)
    m = keras.Model(inp, out)
    w = np.zeros((1, 1, input_shape[-1], 1), np.float32)
    w[0, 0, tap, 0] = 1.0
    m.get_layer("tap").set_weights([w, np.zeros(1, np.float32)])
    return m
"""


@pytest.fixture(scope="module", autouse=True)
def tap_arch(tmp_path_factory):
    """A one-file architecture, registered here from its file: workers rebuild it from that file
    (never from what an archive names)."""
    f = tmp_path_factory.mktemp("arch") / "tap_test.py"
    f.write_text(_TAP)
    if "tap_test" not in available_models():
        register_file(f)


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _tap_model(channels=1, tap=0, box=32, pixel_size=None):
    from tomochunk.nn.registry import create_model

    shape = (box, box, channels)
    m = create_model("tap_test", shape, tap=tap)
    return FeatureModel(m, ModelInfo(title="tap", architecture="tap_test",
                                     origin=get_architecture("tap_test").origin, options={"tap": tap},
                                     input_shape=shape, box_size=box, pixel_size=pixel_size, overlap=0.25,
                                     normalize="none"))


def test_tiling_is_seamless(rng):
    vol = rng.normal(size=(3, 50, 77)).astype(np.float32)
    out = predict_block(vol, _tap_model(), batch_size=5)
    assert out.shape == (1, 3, 50, 77)
    np.testing.assert_allclose(out[0], _sig(vol), atol=1e-5)


def test_resampling_to_model_pixel_size():
    zz, yy, xx = np.mgrid[0:2, 0:64, 0:96].astype(np.float32)
    vol = np.sin(xx / 9.0) + np.cos(yy / 7.0)               # smooth, so resampling is near-lossless
    out = predict_block(vol, _tap_model(pixel_size=20.0), pixel_size=10.0)
    assert out.shape == (1, 2, 64, 96)
    np.testing.assert_allclose(out[0, :, 2:-2, 2:-2], _sig(vol)[:, 2:-2, 2:-2], atol=0.02)


def test_25d_halo_distributed_matches_local(client, tmp_path, rng):
    import dask.array as da

    vol = rng.normal(size=(11, 40, 40)).astype(np.float32)
    fm = _tap_model(channels=3, tap=0)                     # output[z] = sigmoid(vol[z - 1])
    assert fm.info.context == 1
    path = save_archive(fm, tmp_path / "tap.tcm")
    local = predict_block(vol, fm, trim=0)
    np.testing.assert_allclose(local[0, 1:], _sig(vol[:-1]), atol=1e-5)
    np.testing.assert_allclose(local[0, 0], _sig(vol[0]), atol=1e-5)    # mirrored at the end
    lazy = segment_slices(da.from_array(vol, chunks=(4, 40, 40)), path, slab=4)
    assert lazy.dims == ("c", "z", "y", "x") and list(lazy.c.values) == ["tap"]
    assert lazy.data.numblocks[1] == 3
    got = client.compute(lazy.data).result()
    np.testing.assert_allclose(got, local, atol=1e-5)


def test_sample_and_augment(rng):
    vol = rng.normal(size=(4, 64, 64)).astype(np.float32)
    mask = np.zeros(vol.shape, np.uint8)
    mask[:, 20:30, 20:30] = 1
    tiles, masks = sample_tiles(vol, mask, box=32, n=10, slices=[1, 2], context=1, rng=1)
    assert tiles.shape == (10, 32, 32, 3) and masks.shape == (10, 32, 32, 1)
    x, y = augment_tiles(tiles, masks, n_copies=3, excess_negative=0.5, rng=0)
    n_pos = int((masks.reshape(10, -1).max(1) > 0).sum())
    assert len(x) == 3 * n_pos + (round(3 * n_pos * 1.5) if n_pos < 10 else 0)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), 0, atol=1e-4)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_train_from_tiles_and_predict(tmp_path, rng):
    # feature: bright disks on noise
    n, box = 24, 32
    yy, xx = np.mgrid[0:box, 0:box]
    tiles, masks = [], []
    for i in range(n):
        cy, cx = rng.integers(8, 24, size=2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        tiles.append(rng.normal(size=(box, box)) + 2.5 * m)
        masks.append(m)
    negatives = rng.normal(size=(8, box, box))
    fm = new_model("unet2d", box_size=box, title="disk", filters=(8, 8, 16), seed=0)
    hist = train_slices(fm, np.array(tiles), np.array(masks), negatives=negatives, n_copies=2, epochs=6,
                        batch_size=8, learning_rate=3e-3, pixel_size=10.0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    save_archive(fm, tmp_path / "disk.tcm")
    fm2 = load_archive(tmp_path / "disk.tcm")
    assert fm2.info.pixel_size == 10.0
    vol = rng.normal(size=(1, 48, 48)).astype(np.float32)
    vol[0, 10:20, 10:20] += 2.5
    p = predict_block(vol, fm2, pixel_size=10.0)[0, 0]
    assert p[12:18, 12:18].mean() > p[30:, 30:].mean() + 0.2


def test_compete_maps_emit_absorb():
    from tomochunk.nn.features import compete_maps

    p = np.array([[0.9, 0.2, 0.6, 0.7], [0.7, 0.1, 0.8, 0.6], [0.0, 0.0, 0.0, 0.65]])
    assert compete_maps(p, [0.5, 0.5, 0.5]).tolist() == [1, 0, 2, 1]
    # model 0 absorbs, model 1 emits: model 0 loses where model 1 is higher, model 2 keeps its own
    got = compete_maps(p, [0.5, 0.5, 0.5], emit=[False, True, False], absorb=[True, False, True])
    assert got.tolist() == [1, 0, 2, 1]
    p2 = np.array([[0.9, 0.6], [0.95, 0.1]])
    assert compete_maps(p2, [0.5, 0.99], emit=[0, 1], absorb=[1, 0]).tolist() == [0, 1]


def test_segment_features_many_models_many_tomograms(client, tmp_path, rng):
    from tomochunk import open_volume, write_volume
    from tomochunk.nn.features import compete_maps, segment_features

    models = []
    for title, gain, bias, thr, emit, absorb in (("bright", 3.0, -3.0, 0.5, False, False),
                                                 ("dark", -3.0, -3.0, 0.5, False, True),
                                                 ("mid", 1.0, 0.0, 0.6, True, False)):
        fm = _tap_model(box=32)
        w = np.full((1, 1, 1, 1), gain, np.float32)
        fm.model.get_layer("tap").set_weights([w, np.array([bias], np.float32)])
        fm.info.title, fm.info.threshold, fm.info.emit, fm.info.absorb = title, thr, emit, absorb
        models.append(save_archive(fm, tmp_path / f"{title}.tcm"))
    tomos = []
    for i in range(4):
        v = rng.normal(scale=1.5, size=(6, 40, 40 + 8 * i)).astype(np.float32)
        tomos.append(write_volume(v, tmp_path / f"t{i}.mrc", voxel_size=10.0))
    out = tmp_path / "labels"
    # "mid" may not come within 10 Å (1 voxel) of "bright"
    inter = [{"child": "mid", "parent": "bright", "mode": "avoid", "radius": 10.0}]
    status = segment_features(tomos, models, out, interactions=inter, client=client, slab=3)
    assert set(status.values()) == {"done"}
    for t in tomos:
        v = open_volume(t).values
        p = _sig(np.stack([3 * v - 3, -3 * v - 3, v]))
        p[1][p[2] > p[1]] = 0                                   # mid emits, dark absorbs
        p[2][ndi.distance_transform_edt(p[0] < 0.5) <= 1.0] = 0  # mid avoids bright
        expect = compete_maps(p, [0.5, 0.5, 0.6])
        lab = open_volume(out / f"{t.stem}.zarr")
        np.testing.assert_array_equal(lab.values, expect)
        assert {int(k): n for k, n in lab.attrs["classes"].items()} == {1: "bright", 2: "dark", 3: "mid"}
        assert set(np.unique(lab.values)) == {0, 1, 2, 3}
    before = (out / "t0.zarr" / "0" / "0" / "0" / "0").stat().st_mtime_ns
    assert set(segment_features(tomos, models, out, client=client).values()) == {"skipped"}
    from tomochunk.cli import main

    argv = ["segment-features", *map(str, tomos), "-m", *map(str, models), "-o", str(out),
            "--scheduler", client.scheduler.address]
    assert main(argv) == 0
    assert (out / "t0.zarr" / "0" / "0" / "0" / "0").stat().st_mtime_ns == before


def test_compete_maps_object_weight():
    from tomochunk.errors import ValueProblem
    from tomochunk.nn.features import compete_maps

    p = np.zeros((2, 5, 9, 9), np.float32)
    p[0, 2, 4, :] = 0.9
    p[0, 2, 4, 3:6] = 0.6          # a filament, less confident where a particle model fires on it
    p[1, 2, 4, 3:6] = 0.65
    p[1, 2, 0:2, 0:2] = 0.9        # a real particle, with weak cross-talk from the filament model
    p[0, 2, 0:2, 0:2] = 0.55
    voxel = compete_maps(p, [0.5, 0.5])
    obj = compete_maps(p, [0.5, 0.5], object_weight=0.5)
    assert (voxel[2, 4, 3:6] == 2).all() and (obj[2, 4, 3:6] == 1).all()
    assert (voxel[2, 0:2, 0:2] == 2).all() and (obj[2, 0:2, 0:2] == 2).all()
    assert (obj[p.max(0) < 0.5] == 0).all() and (obj == voxel)[p.max(0) < 0.5].all()
    with pytest.raises(ValueProblem, match="object_weight"):
        compete_maps(p, [0.5, 0.5], object_weight=1.5)


def test_segment_features_object_weight_matches_in_memory(client, tmp_path, rng):
    from tomochunk import open_volume, write_volume
    from tomochunk.nn.features import compete_maps, segment_features

    models = []
    for title, gain, bias in (("bright", 3.0, -3.0), ("mid", 1.0, 0.0)):
        fm = _tap_model(box=32)
        fm.model.get_layer("tap").set_weights([np.full((1, 1, 1, 1), gain, np.float32),
                                               np.array([bias], np.float32)])
        fm.info.title = title
        models.append(save_archive(fm, tmp_path / f"{title}.tcm"))
    v = ndi.gaussian_filter(rng.normal(scale=4.0, size=(6, 40, 40)), 1.5).astype(np.float32)
    t = write_volume(v, tmp_path / "t.mrc", voxel_size=10.0)
    segment_features([t], models, tmp_path / "out", client=client, slab=2, object_weight=0.5, object_halo=6)
    v = open_volume(t).values
    expect = compete_maps(_sig(np.stack([3 * v - 3, v])), [0.5, 0.5], object_weight=0.5)
    assert (expect != compete_maps(_sig(np.stack([3 * v - 3, v])), [0.5, 0.5])).any()
    np.testing.assert_array_equal(open_volume(tmp_path / "out" / "t.zarr").values, expect)


_PLAN_SLICES = """
import sys
import numpy as np
from tomochunk.nn.slices import segment_slices
p = segment_slices(np.zeros((4, 32, 32), np.float32), sys.argv[1], pixel_size=10.0)
assert p.shape == (1, 4, 32, 32), p.shape
print(sorted(m for m in ("keras", "tensorflow", "torch", "jax") if m in sys.modules))
"""


def test_planning_slices_imports_no_keras(tmp_path):
    """A client plans slice-wise inference from the archive's record: no Keras, no TensorFlow."""
    import subprocess
    import sys

    save_archive(new_model("unet2d", box_size=32, title="membrane", pixel_size=10.0), tmp_path / "m.tcm")
    out = subprocess.run([sys.executable, "-c", _PLAN_SLICES, str(tmp_path / "m.tcm")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "[]", out.stdout
