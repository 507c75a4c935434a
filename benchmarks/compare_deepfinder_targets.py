#!/usr/bin/env python3
"""tomochunk.targets is voxel-identical to DeepFinder's TargetBuilder.

DeepFinder (cryoet-deepfinder, own venv: DF_PYTHON, default /work/venvs/df)
builds sphere and shape targets for a random object list (objects partly
outside the volume, an initial 'membrane' slab, with and without Euler
angles); tomochunk builds the same lazily in odd-sized chunks. Prints the
number of differing voxels (must be 0) and the timings of both.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/compare_deepfinder_targets.py
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

DF_PYTHON = os.environ.get("DF_PYTHON", "/work/venvs/df/bin/python")
SHAPE = (100, 160, 160)
N = 300
RADII = [3, 6, 4]

DF_SCRIPT = r"""
import sys, time, numpy as np
from deepfinder.training import TargetBuilder
d = np.load(sys.argv[1])
objl = []
for i in range(len(d["lab"])):
    o = dict(label=int(d["lab"][i]), x=float(d["x"][i]), y=float(d["y"][i]), z=float(d["z"][i]),
             phi=None, psi=None, the=None, tomo_idx=0)
    if d["ang"].size:
        o.update(phi=float(d["ang"][i, 0]), psi=float(d["ang"][i, 1]), the=float(d["ang"][i, 2]))
    objl.append(o)
tb = TargetBuilder()
tb.display = lambda *a, **k: None
t = time.perf_counter(); sph = tb.generate_with_spheres(objl, d["init"].copy(), [int(r) for r in d["radii"]])
t1 = time.perf_counter(); shp = tb.generate_with_shapes(objl, d["init"].copy(), list(d["refs"]))
t2 = time.perf_counter()
np.savez(sys.argv[2], spheres=sph, shapes=shp, t=[t1 - t, t2 - t1])
"""


def main():
    from tomochunk.targets import shapes, spheres

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"class_label": rng.integers(1, 4, N),
                       "x": rng.uniform(-3, SHAPE[2] + 3, N), "y": rng.uniform(-3, SHAPE[1] + 3, N),
                       "z": rng.uniform(-3, SHAPE[0] + 3, N)})
    init = np.zeros(SHAPE, np.int8)
    init[40:43] = 4
    rod = np.zeros((13, 13, 13), np.int8)
    rod[6, 6, 1:12] = 1
    rod[3:10, 6, 5:8] = 1
    refs = np.stack([rod, np.pad(np.ones((7, 7, 7), np.int8), 3), rod.transpose(2, 1, 0)])
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for with_angles in (False, True):
            objs = df.copy()
            ang = np.empty((0, 3))
            if with_angles:
                ang = np.c_[rng.uniform(0, 360, N), rng.uniform(0, 360, N), rng.uniform(0, 180, N)]
                objs["phi"], objs["psi"], objs["the"] = ang.T
            src, res = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(src, lab=df.class_label, x=df.x, y=df.y, z=df.z, ang=ang, init=init,
                     radii=RADII, refs=refs)
            subprocess.run([DF_PYTHON, "-c", DF_SCRIPT, str(src), str(res)], check=True,
                           stderr=subprocess.DEVNULL)
            ref = np.load(res)
            t0 = time.perf_counter()
            sph = spheres(objs, SHAPE, RADII, initial=init.astype(np.uint8), chunks=(37, 64, 50)).compute()
            t1 = time.perf_counter()
            shp = shapes(objs, SHAPE, list(refs), initial=init.astype(np.uint8), chunks=(37, 64, 50)).compute()
            t2 = time.perf_counter()
            d1 = int((sph != ref["spheres"]).sum())
            d2 = int((shp != ref["shapes"]).sum())
            ok &= d1 == 0 and d2 == 0
            print(f"angles={with_angles!s:5s} spheres: {d1} voxels differ "
                  f"(DeepFinder {ref['t'][0]:.2f} s, tomochunk {t1 - t0:.2f} s); "
                  f"shapes: {d2} voxels differ (DeepFinder {ref['t'][1]:.2f} s, tomochunk {t2 - t1:.2f} s)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
