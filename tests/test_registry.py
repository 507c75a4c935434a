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


# --- archives are data (issue 19 item 1) ---------------------------------------------------

def _hostile_archive(path, meta):
    blob = json.dumps({"format": "tomochunk-model", "version": 1, "n_classes": 1, **meta}).encode()
    with tarfile.open(path, "w") as tar:
        import io

        ti = tarfile.TarInfo("metadata.json")
        ti.size = len(blob)
        tar.addfile(ti, io.BytesIO(blob))
        ti = tarfile.TarInfo("model.weights.h5")
        ti.size = 4
        tar.addfile(ti, io.BytesIO(b"\x89HDF"))
    return path


@pytest.mark.parametrize("arch", ["evil", "subprocess:run", "os:system"])
def test_archive_naming_a_command_never_runs_it(tmp_path, arch):
    marker = tmp_path / "PWNED"
    evil = _hostile_archive(tmp_path / "evil.tcm", {
        "architecture": arch, "origin": "subprocess:run",
        "input_shape": ["sh", "-c", f"touch {marker}"], "options": {"shell": False}})
    with pytest.raises(FormatError) as err:
        load_archive(evil)
    msg = str(err.value)
    assert "\n" not in msg and str(evil) in msg and "not built in" in msg
    assert not marker.exists()


def test_archive_naming_a_python_file_never_runs_it(tmp_path):
    marker = tmp_path / "PWNED"
    code = tmp_path / "payload.py"
    code.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef create(input_shape, n_classes=1):\n    pass\n")
    evil = _hostile_archive(tmp_path / "evil.tcm", {"architecture": "payload", "origin": str(code),
                                                    "input_shape": [32, 32, 1]})
    with pytest.raises(FormatError, match="not built in; pass the file that defines it explicitly"):
        load_archive(evil)
    assert not marker.exists()


def test_user_architecture_only_from_an_explicit_file(tmp_path, rng):
    import subprocess
    import sys

    code = tmp_path / "my_wide_net.py"
    code.write_text(
        "import keras\n"
        "TITLE = 'My wide net'\n"
        "def create(input_shape, n_classes=1, width=3):\n"
        "    inp = keras.Input(input_shape)\n"
        "    x = keras.layers.Conv2D(width, 3, padding='same', activation='relu')(inp)\n"
        "    return keras.Model(inp, keras.layers.Conv2D(n_classes, 1, activation='sigmoid')(x))\n")
    register_file(code)
    fm = new_model("my_wide_net", box_size=16, title="wide", width=2)
    path = save_archive(fm, tmp_path / "wide.tcm")
    assert json.loads(tarfile.open(path).extractfile("metadata.json").read())["origin"] == str(code.resolve())
    # a fresh process has not registered it: the archive alone is refused, the explicit file is used
    script = ("import sys\nfrom tomochunk.nn.archive import load_archive\nfrom tomochunk.errors import FormatError\n"
              "try:\n    load_archive(sys.argv[1])\nexcept FormatError as e:\n    print('refused', e)\n"
              "fm = load_archive(sys.argv[1], allow_code=sys.argv[2])\nprint('ok', fm.model.output_shape)\n")
    out = subprocess.run([sys.executable, "-c", script, str(path), str(code)], capture_output=True, text=True,
                         timeout=300)
    assert "refused" in out.stdout and "ok (None, 16, 16, 1)" in out.stdout, out.stderr[-2000:]


def test_cli_segment_features_refuses_code_named_in_archive(tmp_path, capsys):
    """``segment-features -m evil.tcm`` runs nothing that the archive names (``--allow-code FILE`` is the way in)."""
    from tomochunk.cli import main

    marker = tmp_path / "PWNED"
    evil = _hostile_archive(tmp_path / "evil.tcm", {"architecture": "subprocess:run", "origin": "subprocess:run",
                                                    "input_shape": ["touch", str(marker)]})
    tomo = tmp_path / "t.npy"
    np.save(tomo, np.zeros((4, 16, 16), np.float32))
    assert main(["segment-features", str(tomo), "-m", str(evil), "-o", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not built in" in err[0] and str(evil) in err[0]
    assert not marker.exists()


# --- Ais' template as it is (issue 22) -----------------------------------------------------

_AIS_TEMPLATE = '''
from tensorflow.keras.models import Model
from tensorflow.keras.layers import Input, Conv2D, MaxPooling2D, UpSampling2D
from tensorflow.keras.optimizers import Adam

title = "Ais test net"
include = True


def create(input_shape):
    inputs = Input(input_shape)
    x = Conv2D(4, (3, 3), activation="relu", padding="same")(inputs)
    x = MaxPooling2D((2, 2))(x)
    x = Conv2D(4, (3, 3), activation="relu", padding="same")(x)
    x = UpSampling2D((2, 2))(x)
    output = Conv2D(1, (1, 1), activation="sigmoid")(x)
    model = Model(inputs=[inputs], outputs=[output])
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="binary_crossentropy")
    return model
'''


def test_ais_template_as_it_is(tmp_path, rng):
    f = tmp_path / "ais_test_net.py"
    f.write_text(_AIS_TEMPLATE)
    arch = register_file(f)
    assert arch.title == "Ais test net"
    m = create_model("ais_test_net", (32, 32, 1))
    assert m.output_shape == (None, 32, 32, 1)
    with pytest.raises(ValueProblem, match="takes no options"):
        create_model("ais_test_net", (32, 32, 1), filters=3)
    with pytest.raises(ValueProblem, match="has 1 outputs, not n_classes=3"):
        create_model("ais_test_net", (32, 32, 1), 3)
    fm = new_model("ais_test_net", box_size=32, title="ais")
    back = load_archive(save_archive(fm, tmp_path / "ais.tcm"), allow_code=f)
    x = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(back.predict(x, verbose=0), fm.model.predict(x, verbose=0), atol=1e-6)
