"""copick projects from the command line, checked with copick itself (its own venv, ``make copick-venv``).

- ``pick ... --copick ROOT --user U --session S`` writes one picks file per object and run, which copick lists;
- ``segment``/``pick``/``run`` take a copick project config as their input set (one run per tomogram);
- ``segment`` writes the label map where copick lists segmentations, and copick reads it;
- we read the tomograms and segmentations that copick writes.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tomochunk.cli import main
from tomochunk.workflows.segment import write_segmentation

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TOMOCHUNK_COPICK_PYTHON") or ROOT / ".venv-copick" / "bin" / "python")
needs_copick = pytest.mark.skipif(not VENV.exists() and not os.environ.get("TOMOCHUNK_COPICK"),
                                  reason="no .venv-copick (make copick-venv)")
CLASSES = {1: "ribosome", 2: "proteasome"}
VS = 10.0
SHAPE = (16, 24, 32)
CUBES = {1: (2, 4, 6), 2: (9, 14, 20)}  # label: (z0, y0, x0) of a 4-voxel cube


def _copick(script, *args, timeout=300):
    r = subprocess.run([str(VENV), "-c", script, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _labels():
    lm = np.zeros(SHAPE, np.uint8)
    for label, (z0, y0, x0) in CUBES.items():
        lm[z0:z0 + 4, y0:y0 + 4, x0:x0 + 4] = label
    return lm


def _seg_store(path, lm):
    """A segmentation store as ``segment`` writes it, with class names (one-hot scores)."""
    scores = np.stack([(lm == c).astype(np.float32) for c in range(3)])
    write_segmentation(xr.DataArray(scores, dims=("c", "z", "y", "x"), attrs={"voxel_size": VS, "classes": CLASSES}),
                       path, chunks=16)
    return path


def _config(path, overlay, static=None):
    cfg = {"name": "t", "description": "", "version": "1.31.0", "config_type": "filesystem",
           "overlay_root": f"local://{overlay}", "overlay_fs_args": {"auto_mkdir": True},
           "pickable_objects": [{"name": "ribosome", "is_particle": True, "label": 1, "radius": 60},
                                {"name": "proteasome", "is_particle": True, "label": 2, "radius": 40}]}
    if static is not None:
        cfg.update(static_root=f"local://{static}", static_fs_args={"auto_mkdir": True})
    path.write_text(json.dumps(cfg))
    return path


LIST_PICKS = r"""
import json, sys, copick
root = copick.from_file(sys.argv[1])
out = {}
for run in root.runs:
    for p in run.picks:
        out[f"{run.name}/{p.pickable_object_name}/{p.user_id}/{p.session_id}"] = [
            [q.location.x, q.location.y, q.location.z] for q in p.points]
print(json.dumps(out))
"""


@needs_copick
def test_cli_pick_writes_copick_picks_per_object_and_run(tmp_path):
    lm = _labels()
    stores = [_seg_store(tmp_path / f"{run}.zarr", lm if run == "TS_01" else lm[:, :, ::-1])
              for run in ("TS_01", "TS_02")]
    proj = tmp_path / "proj"
    assert main(["pick", *map(str, stores), "--method", "cc", "--copick", str(proj), "--user", "me",
                 "--session", "1"]) == 0
    names = sorted(p.relative_to(proj).as_posix() for p in proj.rglob("*.json"))
    assert names == [f"ExperimentRuns/{r}/Picks/me_1_{o}.json" for r in ("TS_01", "TS_02")
                     for o in ("proteasome", "ribosome")]
    got = json.loads(_copick(LIST_PICKS, _config(tmp_path / "c.json", proj)))
    assert sorted(got) == [f"{r}/{o}/me/1" for r in ("TS_01", "TS_02") for o in ("proteasome", "ribosome")]
    for label, (z0, y0, x0) in CUBES.items():
        want = np.array([x0 + 1.5, y0 + 1.5, z0 + 1.5]) * VS
        np.testing.assert_allclose(got[f"TS_01/{CLASSES[label]}/me/1"], [want], atol=1e-9)
        mirrored = np.array([SHAPE[2] - 1 - (x0 + 1.5), y0 + 1.5, z0 + 1.5]) * VS
        np.testing.assert_allclose(got[f"TS_02/{CLASSES[label]}/me/1"], [mirrored], atol=1e-9)
    # an existing file is refused without --overwrite, before anything is written
    assert main(["pick", *map(str, stores), "--method", "cc", "--copick", str(proj), "--user", "me",
                 "--session", "1"]) == 2
    assert main(["pick", str(stores[0]), "--method", "cc"]) == 2  # neither -o nor --copick
