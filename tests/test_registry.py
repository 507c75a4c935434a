"""Model registry and model archives (ours and Ais .scnm)."""

import json
import tarfile

import numpy as np
import pytest

from tomochunk.errors import FormatError, ValueProblem
from tomochunk.nn.archive import load_archive, new_model, read_archive_info, save_archive
from tomochunk.nn.registry import available_models, create_model, register, register_file


def test_builtins_and_errors():
    names = available_models()
    for n in ("eman2", "vggnet", "unet2d", "unet25d"):
        assert n in names
    with pytest.raises(ValueProblem, match="unknown model 'nope'; available"):
        create_model("nope")
    with pytest.raises(ValueProblem, match="multiple of 16"):
        create_model("unet2d", (60, 60, 1))


def test_one_file_architecture(tmp_path):
    f = tmp_path / "tiny_net.py"
    f.write_text(
        "import keras\n"
        "TITLE = 'Tiny net'\n"
        "def create(input_shape, n_classes=1, width=4):\n"
        "    inp = keras.Input(input_shape)\n"
        "    x = keras.layers.Conv2D(width, 3, padding='same', activation='relu')(inp)\n"
        "    out = keras.layers.Conv2D(n_classes, 1, activation='sigmoid')(x)\n"
        "    return keras.Model(inp, out)\n")
    register_file(f)
    assert available_models()["tiny_net"] == "Tiny net"
    m = create_model("tiny_net", (32, 32, 1), width=2)
    assert m.output_shape == (None, 32, 32, 1)
    with pytest.raises(ValueProblem, match="already registered"):
        register("tiny_net", lambda s, n: None)


def test_archive_roundtrip(tmp_path, rng):
    fm = new_model("unet2d", box_size=32, title="membrane", pixel_size=12.5, threshold=0.4, emit=True,
                   filters=(4, 8, 8))
    x = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
    ref = fm.model.predict(x, verbose=0)
    p = save_archive(fm, tmp_path / "membrane.tcm")
    info = read_archive_info(p)
    assert (info.title, info.pixel_size, info.box_size, info.threshold, info.emit, info.absorb) == \
        ("membrane", 12.5, 32, 0.4, True, False)
    assert info.classes == {1: "membrane"}
    back = load_archive(p)
    np.testing.assert_allclose(back.model.predict(x, verbose=0), ref, atol=1e-6)
    assert back.info.options == {"filters": [4, 8, 8]}


def test_ais_scnm_loads_and_predicts(tmp_path, rng):
    """A .scnm as Ais writes it: an uncompressed tar of a whole Keras .h5 model and a metadata JSON."""
    model = create_model("vggnet", (32, 32, 1), filters=(4, 8, 8))
    h5 = tmp_path / "actin_weights.h5"
    model.save(h5)
    meta = {"title": "actin", "colour": [1.0, 0.5, 0.0], "apix": 14.08, "compiled": True, "box_size": 32,
            "model_enum": 1, "epochs": 25, "batch_size": 32, "active": True, "blend": False, "show": True,
            "alpha": 0.75, "threshold": 0.6, "overlap": 0.2, "active_tab": 0,
            "n_parameters": model.count_params(), "n_copies": 4, "info": "", "info_short": "",
            "excess_negative": 30, "emit": False, "absorb": True, "loss": 0.1}
    js = tmp_path / "actin_metadata.json"
    js.write_text(json.dumps(meta))
    scnm = tmp_path / "actin.scnm"
    with tarfile.open(scnm, "w") as tar:
        tar.add(h5, arcname=h5.name)
        tar.add(js, arcname=js.name)
    fm = load_archive(scnm)
    assert (fm.info.title, fm.info.pixel_size, fm.info.box_size, fm.info.threshold, fm.info.absorb) == \
        ("actin", 14.08, 32, 0.6, True)
    x = rng.normal(size=(3, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(fm.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_bad_archives(tmp_path):
    bad = tmp_path / "x.tcm"
    bad.write_text("hello")
    with pytest.raises(FormatError, match="not a tar file"):
        load_archive(bad)
    empty = tmp_path / "e.scnm"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(FormatError, match="not a model archive"):
        load_archive(empty)


def test_deepfinder_by_name(tmp_path):
    m = create_model("deepfinder", (16, 16, 16, 1), 3, filters="small")
    assert m.output_shape == (None, 16, 16, 16, 3)
    fm = new_model("deepfinder", box_size=16, n_classes=3, title="ribosome", filters="small")
    back = load_archive(save_archive(fm, tmp_path / "df.tcm"))
    assert back.model.output_shape == (None, 16, 16, 16, 3)
