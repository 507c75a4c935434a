#!/usr/bin/env python3
"""Legacy DeepFinder weight files give the same predictions in tomochunk (Keras 3).

DeepFinder (cryoet-deepfinder, tf.keras 2.13) runs in its own venv
(default /work/venvs/df, override with DF_PYTHON): it builds its network,
writes a weights-only file (``save_weights``) and a full-model file
(``save``) to a temporary folder and predicts a random patch. tomochunk's
``load_model`` then reads both files and predicts the same patch. The
reverse direction is checked too: a weights file written by
``tomochunk.save_model(..., legacy_h5=...)`` is loaded by DeepFinder's
network with ``load_weights``.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/compare_deepfinder_weights.py
Pass: every max |Δ| <= 1e-4.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DF_PYTHON = os.environ.get("DF_PYTHON", "/work/venvs/df/bin/python")
DIM, NCL = 32, 4

DF_SCRIPT = r"""
import sys, numpy as np
from deepfinder import models
out = sys.argv[1]
net = models.my_model(%(dim)d, %(ncl)d)
rng = np.random.default_rng(0)
# He-scaled kernels and small biases: the softmax stays far from 0 and 1, where it would hide differences
net.set_weights([(rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])), w.shape) if w.ndim > 1
                  else rng.normal(0, 0.05, w.shape)).astype("float32") for w in net.get_weights()])
net.save_weights(out + "/net_weights_FINAL.h5")
net.save(out + "/net_full.h5")
x = rng.normal(size=(2, %(dim)d, %(dim)d, %(dim)d, 1)).astype("float32")
np.save(out + "/x.npy", x)
np.save(out + "/y_df.npy", net.predict(x, verbose=0))
if len(sys.argv) > 2:      # reverse: load a tomochunk-written legacy file
    net2 = models.my_model(%(dim)d, %(ncl)d)
    net2.load_weights(sys.argv[2])
    np.save(out + "/y_df_from_ours.npy", net2.predict(x, verbose=0))
""" % {"dim": DIM, "ncl": NCL}


def run_df(tmp, *extra):
    subprocess.run([DF_PYTHON, "-c", DF_SCRIPT, str(tmp), *map(str, extra)], check=True,
                   stderr=subprocess.DEVNULL)


def main():
    from tomochunk.nn.models import load_model, save_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_df(tmp)
        x, y_df = np.load(tmp / "x.npy"), np.load(tmp / "y_df.npy")
        print(f"DeepFinder's probabilities: {np.mean((y_df > 0.01) & (y_df < 0.99)):.0%} of them "
              "in (0.01, 0.99)")
        worst = 0.0
        for name in ("net_weights_FINAL.h5", "net_full.h5"):
            model = load_model(tmp / name)
            d = float(np.abs(model.predict(x, verbose=0) - y_df).max())
            worst = max(worst, d)
            print(f"{name:22s} DeepFinder -> tomochunk  max|Δ| = {d:.2e}")
        # reverse direction: our legacy file read by DeepFinder
        save_model(model, tmp / "ours.keras", legacy_h5=tmp / "ours_weights.h5")
        run_df(tmp, tmp / "ours_weights.h5")
        d = float(np.abs(np.load(tmp / "y_df_from_ours.npy") - y_df).max())
        worst = max(worst, d)
        print(f"{'ours_weights.h5':22s} tomochunk -> DeepFinder  max|Δ| = {d:.2e}")
        import keras
        print(f"keras {keras.__version__} backend {keras.backend.backend()}; "
              f"{'PASS' if worst <= 1e-4 else 'FAIL'} (max |Δ| {worst:.2e} <= 1e-4)")
        return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
