"""DeepFinder U-Net: build, .keras and legacy .h5 round trips, errors (backend neutrality: test_backend_neutral)."""

import h5py
import numpy as np
import pytest

import tomochunk
from tomochunk.errors import FormatError, MissingError, ValueProblem
from tomochunk.nn.models import check_patch_shape, deepfinder_unet, load_model, model_info, save_model


@pytest.fixture(scope="module")
def model():
    m = deepfinder_unet(3, filters="small")
    rng = np.random.default_rng(0)
    # non-trivial weights so that a wrong layer order shows in the predictions
    m.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in m.get_weights()])
    return m


@pytest.fixture(scope="module")
def patch():
    return np.random.default_rng(1).normal(size=(1, 16, 16, 16, 1)).astype("float32")


def test_architecture(model, patch):
    convs = [l for l in model.layers if l.weights]
    assert len(convs) == 15
    assert [tuple(l.kernel.shape) for l in convs][8] == (2, 2, 2, 16, 16)
    y = model.predict(patch, verbose=0)
    assert y.shape == (1, 16, 16, 16, 3)
    np.testing.assert_allclose(y.sum(-1), 1, atol=1e-5)
    full = deepfinder_unet(5)
    assert full.count_params() > 500_000 and model_info(full)["filters"] == (32, 48, 64)
    assert tomochunk.deepfinder_unet is deepfinder_unet


def test_anisotropic():
    m = deepfinder_unet(2, anisotropic=True, filters=(4, 4, 4))
    assert model_info(m)["multiple"] == (1, 4, 4)
    assert m.predict(np.zeros((1, 5, 8, 8, 1), "float32"), verbose=0).shape == (1, 5, 8, 8, 2)


def test_patch_size_checks():
    assert check_patch_shape(16) == (16, 16, 16)
    assert check_patch_shape((3, 8, 8), anisotropic=True) == (3, 8, 8)
    with pytest.raises(ValueProblem, match="multiple of 4"):
        check_patch_shape(18)
    with pytest.raises(ValueProblem, match="multiple of 4"):
        deepfinder_unet(3, 22)


def test_keras_round_trip(model, patch, tmp_path):
    y = model.predict(patch, verbose=0)
    out = save_model(model, tmp_path / "m.keras", legacy_h5=tmp_path / "net_weights_FINAL.h5")
    np.testing.assert_array_equal(load_model(out).predict(patch, verbose=0), y)
    legacy = load_model(tmp_path / "net_weights_FINAL.h5")
    np.testing.assert_allclose(legacy.predict(patch, verbose=0), y, atol=1e-6)
    with h5py.File(tmp_path / "net_weights_FINAL.h5") as f:   # tf.keras 2 save_weights layout
        assert [getattr(n, "decode", lambda: n)() for n in f.attrs["layer_names"]][:2] == ["conv3d", "conv3d_1"]
        assert "conv3d/kernel:0" in f["conv3d"]


def test_keras3_legacy_h5_full_model(model, patch, tmp_path):
    # Keras 3 still writes the legacy full-model HDF5 layout (model_weights group).
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "full.h5")
    with h5py.File(tmp_path / "full.h5") as f:
        assert "model_weights" in f
    np.testing.assert_allclose(load_model(tmp_path / "full.h5").predict(patch, verbose=0),
                               model.predict(patch, verbose=0), atol=1e-6)


def test_bad_files(tmp_path):
    import keras

    with pytest.raises(MissingError):
        load_model(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match="junk.h5"):
        load_model(tmp_path / "junk.h5")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    save_model(other, tmp_path / "other.h5")
    with pytest.raises(FormatError, match="other.h5.*another architecture"):
        load_model(tmp_path / "other.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["dataset"] = np.zeros(3)
    with pytest.raises(FormatError, match="empty.h5"):
        load_model(tmp_path / "empty.h5")


def test_bfloat16_policy_same_weights(model, patch):
    from tomochunk.nn.models import with_dtype

    fast = with_dtype(model, "mixed_bfloat16")
    assert fast.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert str(fast.layers[-1].dtype_policy.name) == "float32"      # softmax stays float32
    for a, b in zip(fast.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    y = fast.predict(patch, verbose=0)
    assert y.dtype == np.float32
    # saturated random weights: bfloat16 flips a few voxels, most agree
    assert np.mean(np.abs(y - model.predict(patch, verbose=0))) < 0.05
    back = with_dtype(fast)
    np.testing.assert_array_equal(back.predict(patch, verbose=0), model.predict(patch, verbose=0))


def _deepfinder_layout(n_classes, f, pool=(2, 2, 2)):
    """DeepFinder's own layer sequence (UpSampling3D, then a 2x2x2 Conv3D), as tf.keras 2 built it."""
    import keras
    from keras import layers

    def conv(x, n, k, act="relu"):
        return layers.Conv3D(n, k, padding="same", activation=act)(x)

    inp = keras.Input((None, None, None, 1))
    high = conv(conv(inp, f[0], 3), f[0], 3)
    mid = conv(conv(layers.MaxPooling3D(pool)(high), f[1], 3), f[1], 3)
    x = layers.MaxPooling3D(pool)(mid)
    for _ in range(4):
        x = conv(x, f[2], 3)
    x = conv(layers.UpSampling3D(pool)(x), f[2], 2)
    x = conv(conv(layers.Concatenate()([x, mid]), f[1], 3), f[1], 3)
    x = conv(layers.UpSampling3D(pool)(x), f[1], 2)
    x = conv(conv(layers.Concatenate()([x, high]), f[0], 3), f[0], 3)
    return keras.Model(inp, conv(x, n_classes, 1, "softmax"))


@pytest.mark.parametrize("pool", [(2, 2, 2), (1, 2, 2)])
def test_up_conv_equals_upsampling_then_conv(pool):
    """UpConv3D is DeepFinder's UpSampling3D + 2x2x2 Conv3D: same weights, same outputs."""
    from keras import layers

    from tomochunk.nn.layers import UpConv3D

    x = np.random.default_rng(2).normal(size=(2, 3, 4, 6, 5)).astype("float32")
    ref = layers.Conv3D(7, 2, padding="same", activation="relu")
    want = np.asarray(ref(layers.UpSampling3D(pool)(x)))
    fused = UpConv3D(7, up=pool, activation="relu")
    fused.build(x.shape)
    fused.set_weights(ref.get_weights())
    got = np.asarray(fused(x))
    assert got.shape == want.shape == (2, 3 * pool[0], 8, 12, 7)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueProblem, match="1 or 2"):
        UpConv3D(7, up=(3, 2, 2))


@pytest.mark.parametrize("aniso", [False, True])
def test_deepfinder_layout_file_loads_fused(aniso, patch, tmp_path):
    """A .keras file with DeepFinder's up-sampling layers (older tomochunk) loads as the fused U-Net."""
    old = _deepfinder_layout(3, (4, 6, 8), (1, 2, 2) if aniso else (2, 2, 2))
    rng = np.random.default_rng(3)
    # He-scaled: with the fixture's larger weights, float re-association shows as 1e-4 in the softmax
    old.set_weights([rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])) if w.ndim > 1 else 0.05,
                                w.shape).astype("float32") for w in old.get_weights()])
    old.save(tmp_path / "old.keras")
    new = load_model(tmp_path / "old.keras")
    kinds = [layer.__class__.__name__ for layer in new.layers]
    assert "UpSampling3D" not in kinds and kinds.count("UpConv3D") == 2
    assert model_info(new)["anisotropic"] is aniso
    np.testing.assert_allclose(new.predict(patch, verbose=0), old.predict(patch, verbose=0), atol=1e-5)
    save_model(new, tmp_path / "new.keras")    # the fused layer round-trips through .keras
    again = load_model(tmp_path / "new.keras")
    np.testing.assert_array_equal(again.predict(patch, verbose=0), new.predict(patch, verbose=0))


def test_up_conv_with_free_input_size(model):
    """Blocks of any size go through the fused up-sampling (TensorFlow traces them with None sizes)."""
    import keras

    free = keras.Model(model.inputs, model.outputs)
    for shape in [(1, 8, 12, 16, 1), (1, 12, 8, 20, 1)]:
        x = np.random.default_rng(5).normal(size=shape).astype("float32")
        assert free.predict(x, verbose=0).shape == shape[:4] + (3,)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_spec_read_from_the_file_equals_the_loaded_model(anisotropic, tmp_path):
    """What the client plans with (classes, memory per voxel, movie or tomogram, input size) is read
    from the file without Keras, and equals what the loaded model says."""
    from tomochunk.nn._memory import block_bytes_per_voxel, bytes_per_voxel
    from tomochunk.nn._model import model_kind, n_classes
    from tomochunk.nn.models import read_spec

    m = deepfinder_unet(4, filters=(8, 12, 16), anisotropic=anisotropic)
    save_model(m, tmp_path / "m.keras", legacy_h5=tmp_path / "m.h5")
    save_model(deepfinder_unet(3, 32, filters="small"), tmp_path / "fixed.keras")
    for name in ("m.keras", "m.h5", "fixed.keras"):
        spec, model = read_spec(tmp_path / name), load_model(tmp_path / name)
        for f in (lambda x: n_classes(x, 32), bytes_per_voxel, lambda x: block_bytes_per_voxel(x, "bfloat16"),
                  model_kind, lambda x: tuple(x.input_shape)):
            assert f(spec) == f(model), name
    (tmp_path / "junk.keras").write_bytes(b"PK not a zip")
    assert read_spec(tmp_path / "junk.keras") is None     # load_model then says what is wrong
    with pytest.raises(FormatError, match="junk.keras"):
        load_model(tmp_path / "junk.keras")


_PLAN_ONLY = """
import sys
import numpy as np
from tomochunk import segment
for tiling in ("blocks", "patches"):
    s = segment(np.zeros((16, 32, 32), np.float32), sys.argv[1], tiling=tiling, patch_size=16, crop=2)
assert s.shape == (3, 16, 32, 32), s.shape
print(sorted(m for m in ("keras", "tensorflow", "torch", "jax") if m in sys.modules))
"""


def test_planning_a_segmentation_imports_no_keras(model, tmp_path):
    """The client of a cluster builds the graph from the file's spec: no Keras, no TensorFlow."""
    import subprocess
    import sys

    save_model(model, tmp_path / "m.keras")
    out = subprocess.run([sys.executable, "-c", _PLAN_ONLY, str(tmp_path / "m.keras")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "[]", out.stdout
