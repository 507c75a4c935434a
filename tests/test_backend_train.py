"""``tomochunk train --backend``: a training on the torch backend, its model checked under TensorFlow.

The CLI runs in a child process (Keras picks its backend once per process). The model it saves
must give, under this process's TensorFlow, the scores that torch gave it in the child: the
second backend is the outside reference for both the training's output and the ``.keras`` file.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tomochunk.errors import ValueProblem
from tomochunk.nn._backend import choose_backend, use_backend

pytest.importorskip("torch")

CHILD = r"""
import json, sys
import numpy as np
from tomochunk.cli import main
rc = main(sys.argv[2:])
import keras
from tomochunk.nn.models import load_model
x = np.load(sys.argv[1] + "/x.npy")
m = load_model(sys.argv[1] + "/run/model_best.keras")
np.save(sys.argv[1] + "/child_scores.npy", keras.ops.convert_to_numpy(m(x)))
print(json.dumps({"rc": rc, "backend": keras.config.backend()}))
"""


def test_cli_train_on_torch_segments_under_tensorflow(tmp_path, sphere_phantom):
    import keras

    from tomochunk.io.objects import write_objects
    from tomochunk.io.volume import write_volume

    vol, lab, objs = sphere_phantom(1, (32, 32, 32), 10)
    write_volume(vol, tmp_path / "a.mrc", voxel_size=10)
    write_volume(lab.astype(np.uint8), tmp_path / "a_lab.mrc", voxel_size=10, label=True)
    write_objects(objs, tmp_path / "o.csv")
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 16, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    argv = ["train", "--volumes", str(tmp_path / "a.mrc"), "--targets", str(tmp_path / "a_lab.mrc"),
            "--train", str(tmp_path / "o.csv"), "--valid", str(tmp_path / "o.csv"), "--n-classes", "3",
            "--patch", "16", "--batch", "2", "--epochs", "2", "--steps", "2", "--valid-steps", "1",
            "--filters", "4,4,8", "--backend", "torch", "--precision", "float32", "--no-bootstrap",
            "--shift", "3", "-o", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    p = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), *argv], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["rc"] in (0, None) and out["backend"] == "torch"
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert hist["steps"].tolist() == [2, 2]
    from tomochunk.nn.models import load_model

    model = load_model(tmp_path / "run" / "model_best.keras")
    ours = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(ours, np.load(tmp_path / "child_scores.npy"), atol=1e-5)


def test_backend_cannot_change_once_keras_runs():
    import keras

    other = "torch" if keras.config.backend() != "torch" else "tensorflow"
    with pytest.raises(ValueProblem, match="already runs"):
        use_backend(other)
    assert choose_backend("auto") == keras.config.backend()   # auto never asks for the impossible


def test_choose_backend_rules(tmp_path):
    bf16 = tmp_path / "cpuinfo"
    bf16.write_text("flags\t: fpu avx2 avx512_bf16\n")
    none = dict(running=None, env={}, gpu=False, installed={"torch", "tensorflow"})
    assert choose_backend("auto", cpuinfo="/no/such/file", **none) == "torch"
    assert choose_backend("auto", cpuinfo=bf16, **none) == "tensorflow"        # native bfloat16: measured on TF
    assert choose_backend("auto", "float32", cpuinfo=bf16, **none) == "torch"
    assert choose_backend("auto", **{**none, "gpu": True}) == "tensorflow"
    assert choose_backend("auto", **{**none, "installed": {"tensorflow"}}) == "tensorflow"
    assert choose_backend("auto", **{**none, "env": {"KERAS_BACKEND": "jax"}}) == "jax"
    with pytest.raises(ValueProblem, match="backend must be"):
        choose_backend("mxnet")
