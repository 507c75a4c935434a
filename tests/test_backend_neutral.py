"""Backend neutrality of the networks (issue 21): no TensorFlow in tomochunk/nn, and JAX parity.

The grep runs everywhere. The JAX test runs the same weights under ``KERAS_BACKEND=jax`` in a
subprocess (the backend is chosen once per process) and compares with TensorFlow here. Training on
a backend other than TensorFlow is tested on torch, the one ``tomochunk train --backend auto``
picks on CPUs (``test_backend_train.py``: its model's scores under TensorFlow equal torch's); the
JAX training test it replaces took 54 s of the suite on 2 cores.

Under JAX on a CPU, XLA's optimising compile of each weight's random initialiser took ~2 s
(15 convolutions: 34 s per model built or loaded), so the JAX process compiles at
``--xla_backend_optimization_level=0`` (8 s per model): parity is what is checked, not speed.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NN = Path(__file__).resolve().parents[1] / "tomochunk" / "nn"
FORBIDDEN = re.compile(r"\bimport\s+tensorflow\b|\bfrom\s+tensorflow\b|\btf\.")


def test_no_tensorflow_in_nn():
    hits = [f"{p.relative_to(NN.parent)}:{i}: {line.strip()}"
            for p in sorted(NN.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if FORBIDDEN.search(line)]
    assert not hits, "tomochunk/nn must use keras / keras.ops only:\n" + "\n".join(hits)


def _has_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


needs_jax = pytest.mark.skipif(not _has_jax(), reason="jax is not installed (pip install tomochunk[test])")

_SEGMENT_JAX = """
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from tomochunk import segment
vol = np.load(sys.argv[1])
for name, model in (("keras", sys.argv[2]), ("h5", sys.argv[3])):
    for tiling in ("patches", "blocks"):
        kw = {"patch_size": 16, "crop": 4, "block_patches": 2} if tiling == "patches" else {"crop": 4, "block_shape": 24}
        s = segment(vol, model, tiling=tiling, **kw).data.compute(scheduler="sync")
        np.save(sys.argv[4] + f"/{name}_{tiling}.npy", s)
print("backend", keras.backend.backend())
"""


def _run_jax(script, *args, timeout=600):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@needs_jax
def test_jax_segmentation_matches_tensorflow(tmp_path):
    import keras

    from tomochunk import segment
    from tomochunk.nn.models import deepfinder_unet, save_model

    assert keras.backend.backend() == "tensorflow"
    keras.utils.set_random_seed(0)
    model = deepfinder_unet(3, filters=(4, 6, 8))
    kpath, hpath = tmp_path / "net.keras", tmp_path / "net_weights.h5"
    save_model(model, kpath)
    save_model(model, tmp_path / "net2.keras", legacy_h5=hpath)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(16, 28, 20)).astype(np.float32)
    vol[6:12, 10:20, 8:14] += 3.0
    np.save(tmp_path / "vol.npy", vol)
    out = _run_jax(_SEGMENT_JAX, tmp_path / "vol.npy", kpath, hpath, tmp_path)
    assert "backend jax" in out
    worst = 0.0
    for tiling in ("patches", "blocks"):
        kw = {"patch_size": 16, "crop": 4, "block_patches": 2} if tiling == "patches" else {"crop": 4, "block_shape": 24}
        tf_scores = segment(vol, str(kpath), tiling=tiling, **kw).data.compute(scheduler="sync")
        for name in ("keras", "h5"):
            jax_scores = np.load(tmp_path / f"{name}_{tiling}.npy")
            assert jax_scores.shape == tf_scores.shape
            worst = max(worst, float(np.abs(jax_scores - tf_scores).max()))
    print(f"JAX vs TensorFlow: max |delta| = {worst:.2e}")
    (tmp_path / "delta.json").write_text(json.dumps({"max_abs_delta": worst}))
    assert worst <= 1e-4
