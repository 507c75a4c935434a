#!/usr/bin/env python3
"""The same model and weights give the same predictions under tensorflow and jax (and torch).

Saves a DeepFinder U-Net (random non-trivial weights) as ``.keras`` and as a
legacy ``.h5``, predicts a random patch with the tensorflow backend here,
then loads both files with ``tomochunk.load_model`` in a Python whose
``KERAS_BACKEND`` is jax (a venv with jax + keras + h5py, JAX_PYTHON,
default /work/venvs/jax/bin/python; also torch if TORCH_PYTHON is set) and
compares. Pass: max |Δ| <= 1e-4.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/compare_backends.py
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCRIPT = r"""
import sys, numpy as np, keras
from tomochunk.nn.models import load_model
x = np.load(sys.argv[2])
for name in sys.argv[3:]:
    m = load_model(sys.argv[1] + "/" + name)
    np.save(sys.argv[1] + "/y_" + keras.backend.backend() + "_" + name + ".npy",
            np.asarray(m.predict(x, verbose=0)))
"""


def main():
    from tomochunk.nn.models import deepfinder_unet, save_model

    repo = Path(__file__).resolve().parents[1]
    pythons = {"jax": os.environ.get("JAX_PYTHON", "/work/venvs/jax/bin/python")}
    if os.environ.get("TORCH_PYTHON"):
        pythons["torch"] = os.environ["TORCH_PYTHON"]
    model = deepfinder_unet(4)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()])
    x = rng.normal(size=(2, 32, 32, 32, 1)).astype("float32")
    y = model.predict(x, verbose=0)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / "m.keras", legacy_h5=Path(tmp) / "m.h5")
        np.save(Path(tmp) / "x.npy", x)
        for backend, py in pythons.items():
            if not Path(py).exists():
                print(f"{backend}: no interpreter at {py}, skipped")
                continue
            env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(repo))
            subprocess.run([py, "-c", SCRIPT, tmp, str(Path(tmp) / "x.npy"), "m.keras", "m.h5"],
                           check=True, env=env, stderr=subprocess.DEVNULL)
            for name in ("m.keras", "m.h5"):
                d = float(np.abs(np.load(Path(tmp) / f"y_{backend}_{name}.npy") - y).max())
                worst = max(worst, d)
                print(f"tensorflow vs {backend:5s} {name:8s} max|Δ| = {d:.2e}")
    print(f"{'PASS' if worst <= 1e-4 else 'FAIL'} (max |Δ| {worst:.2e} <= 1e-4)")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
