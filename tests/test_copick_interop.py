"""copick itself reads the picks (and the STAR angles) we write, and we read the picks copick writes.

copick pins zarr<3, so it lives in its own virtual environment, made by ``make copick-venv``
(``.venv-copick`` at the repository root). The test runs a small script there through a subprocess;
it skips only when that environment is absent.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tomochunk import read_objects, write_objects
from tomochunk._geometry import euler_to_matrix
from tomochunk.io.objects import validate_objects, write_copick

VENV = Path(__file__).resolve().parents[1] / ".venv-copick" / "bin" / "python"
# CI (.ci/run) builds the venv and sets TOMOCHUNK_COPICK=1: there a missing venv fails instead of skipping
pytestmark = pytest.mark.skipif(not VENV.exists() and not os.environ.get("TOMOCHUNK_COPICK"),
                                reason="no .venv-copick (make copick-venv)")

SCRIPT = r"""
import json, sys
import numpy as np
import copick, starfile
from copick.models import CopickLocation, CopickPoint
from copick.util.relion import relion_rows_to_poses

cfg, star, out = sys.argv[1:4]
root = copick.from_file(cfg)
seen = {}
for run in root.runs:
    for picks in run.picks:
        pts = picks.points
        seen[f"{run.name}/{picks.pickable_object_name}"] = {
            "user": picks.user_id, "session": picks.session_id, "trust": picks.trust_orientation,
            "run_name": picks.meta.run_name,
            "loc": [[p.location.x, p.location.y, p.location.z] for p in pts],
            "t": [p.transformation.tolist() for p in pts], "score": [p.score for p in pts],
            "id": [p.instance_id for p in pts]}
# RELION's angles of our STAR file, as copick's own RELION importer turns them into matrices
rot, shift = relion_rows_to_poses(starfile.read(star))
# picks written by copick, with a rotation and a shift in their transformation
run = root.new_run("TS_cp")
run.new_voxel_spacing(voxel_size=10.0)
picks = run.new_picks(object_name="proteasome", session_id="2", user_id="cp")
t = np.eye(4)
t[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
t[:3, 3] = [20.0, 0.0, -10.0]
picks.points = [CopickPoint(location=CopickLocation(x=100.0, y=200.0, z=300.0), transformation_=t.tolist(),
                            score=0.5, instance_id=3)]
picks.store()
json.dump({"seen": seen, "relion_rot": rot.tolist(), "path": picks.path}, open(out, "w"))
"""


def _objects(n=6, seed=3):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"tomo": ["TS_01"] * 3 + ["TS_02"] * 3, "class_label": [1, 2, 1, 1, 2, 2],
                       "x": rng.uniform(0, 60, n), "y": rng.uniform(0, 60, n), "z": rng.uniform(0, 30, n),
                       "phi": rng.uniform(-180, 180, n), "psi": rng.uniform(-180, 180, n),
                       "the": rng.uniform(1, 179, n), "score": rng.uniform(0, 1, n), "obj_id": np.arange(1, n + 1)})
    return validate_objects(df, voxel_size=10.0, classes={1: "ribosome", 2: "proteasome"})


def test_copick_reads_ours_and_we_read_copicks(tmp_path):
    proj = tmp_path / "proj"
    df = _objects()
    paths = write_copick(df, proj, "tomochunk", "1")
    assert len(paths) == 4
    df2 = df.copy()
    df2.attrs["shape"] = (32, 64, 64)
    write_objects(df2, tmp_path / "p.star")
    cfg = tmp_path / "copick.json"
    cfg.write_text(json.dumps({
        "name": "t", "description": "", "version": "1.31.0", "config_type": "filesystem",
        "overlay_root": f"local://{proj}", "overlay_fs_args": {"auto_mkdir": True},
        "pickable_objects": [{"name": "ribosome", "is_particle": True, "label": 1, "radius": 100},
                             {"name": "proteasome", "is_particle": True, "label": 2, "radius": 80}]}))
    out = tmp_path / "out.json"
    r = subprocess.run([str(VENV), "-c", SCRIPT, str(cfg), str(tmp_path / "p.star"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    # copick reads ours: one file per run and object, string run names, our matrices and Å locations
    assert sorted(got["seen"]) == ["TS_01/proteasome", "TS_01/ribosome", "TS_02/proteasome", "TS_02/ribosome"]
    for (run, label), part in df.groupby(["tomo", "class_label"]):
        s = got["seen"][f"{run}/{df.attrs['classes'][label]}"]
        assert s["user"] == "tomochunk" and s["session"] == "1" and s["trust"] is True and s["run_name"] == run
        np.testing.assert_allclose(s["loc"], part[["x", "y", "z"]].to_numpy() * 10.0, atol=1e-9)
        t = np.array(s["t"])
        np.testing.assert_allclose(t[:, :3, :3], euler_to_matrix(part["phi"], part["psi"], part["the"]), atol=1e-9)
        np.testing.assert_allclose(s["score"], part["score"])
        assert s["id"] == part["obj_id"].tolist()
    # copick's RELION importer gives our matrices back from the STAR angles we write
    np.testing.assert_allclose(got["relion_rot"], euler_to_matrix(df["phi"], df["psi"], df["the"]), atol=1e-6)
    # we read copick's: run name from the file (and layout), shift added to the location, the rotation
    back = read_objects(got["path"], classes={2: "proteasome"})
    assert back["tomo"].tolist() == ["TS_cp"] and back["class_label"].tolist() == [2]
    np.testing.assert_allclose(back[["x", "y", "z"]].to_numpy(), [[12, 20, 29]], atol=1e-9)  # Å / 10
    assert back.attrs["voxel_size"] == 10.0  # from the run's VoxelSpacing10.000 folder
    np.testing.assert_allclose(euler_to_matrix(back["phi"], back["psi"], back["the"])[0],
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-9)
    assert back["score"].tolist() == [0.5] and back["obj_id"].tolist() == [3]
    assert back.attrs["copick"] == {"user_id": "cp", "session_id": "2"}


def test_copick_without_angles_does_not_trust_orientation(tmp_path):
    df = _objects().drop(columns=["phi", "psi", "the"])
    p = write_copick(df, tmp_path, "u", "s")[0]
    d = json.loads(p.read_text())
    assert d["trust_orientation"] is False and isinstance(d["run_name"], str)
    # copick's own model accepts the file
    r = subprocess.run([str(VENV), "-c", "import json,sys; from copick.models import CopickPicksFile as F; "
                        "f = F(**json.load(open(sys.argv[1]))); print(f.trust_orientation, f.run_name)", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "TS_01"]
    if sys.platform != "win32":
        assert "phi" not in read_objects(p).columns
