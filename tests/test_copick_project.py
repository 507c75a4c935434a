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


MAKE_PROJECT = r"""
import json, sys
import numpy as np
import copick
cfg, vol = sys.argv[1], np.load(sys.argv[2])
root = copick.from_file(cfg)
for i, name in enumerate(("TS_01", "TS_02")):
    run = root.new_run(name)
    vs = run.new_voxel_spacing(voxel_size=10.0)
    vs.new_tomogram(tomo_type="wbp").from_numpy(vol if i == 0 else vol[:, ::-1].copy())
# a segmentation written by copick itself: we read it, and pick it
run = root.get_run("TS_01")
seg = run.new_segmentation(voxel_size=10.0, name="cpseg", session_id="2", is_multilabel=True, user_id="cp")
lab = np.zeros(vol.shape, np.uint8)
lab[2:6, 4:8, 6:10] = 2
seg.from_numpy(lab)
print(json.dumps({"seg": seg.path}))
"""

READ_SEGMENTATIONS = r"""
import json, sys
import numpy as np
import copick
root = copick.from_file(sys.argv[1])
out = {}
for run in root.runs:
    for s in run.get_segmentations(user_id="tomochunk", session_id="0", is_multilabel=True, name="segmentation",
                                   voxel_size=10.0):
        a = s.numpy()
        np.save(f"{sys.argv[2]}/{run.name}.npy", a)
        out[run.name] = {"shape": list(a.shape), "dtype": str(a.dtype), "vs": s.voxel_size,
                         "type": s.segmentation_type, "path": s.path}
    out[run.name + "/picks"] = sorted(f"{p.user_id}_{p.session_id}_{p.pickable_object_name}:{len(p.points)}"
                                      for p in run.picks)
print(json.dumps(out))
"""


def _cli(*argv):
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tomochunk.cli", *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=600)


@needs_copick
def test_segment_and_pick_a_copick_project(tmp_path):
    import zarr

    from tomochunk.io.volume import open_volume
    from tomochunk.phantom import phantom_tomogram

    vol, _, _ = phantom_tomogram((32, 48, 48), 2, snr=2.0, voxel_size=10.0, seed=1)
    np.save(tmp_path / "vol.npy", np.asarray(vol, np.float32))
    proj = tmp_path / "proj"
    cfg = _config(tmp_path / "copick.json", proj)
    made = json.loads(_copick(MAKE_PROJECT, cfg, tmp_path / "vol.npy"))
    # we read copick's tomograms and its segmentation
    t = open_volume(proj / "ExperimentRuns" / "TS_01" / "VoxelSpacing10.000" / "wbp.zarr")
    assert t.shape == (32, 48, 48) and t.attrs["voxel_size"] == 10.0
    np.testing.assert_allclose(np.asarray(t), np.asarray(vol, np.float32))
    cs = open_volume(made["seg"])
    assert cs.attrs["voxel_size"] == 10.0 and int(np.asarray(cs)[3, 5, 7]) == 2 and int(np.asarray(cs).sum()) == 128
    # segment takes the project as its input set: one run per tomogram
    r = _cli("segment", cfg, "-m", "phantom", "-o", tmp_path / "scores", "--patch", "32", "--crop", "4",
             "--tiling", "blocks", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "scores").glob("*.zarr")) == ["TS_01.zarr", "TS_02.zarr"]
    # copick lists and reads the label maps, at the run level where it looks for segmentations
    got = json.loads(_copick(READ_SEGMENTATIONS, cfg, tmp_path))
    for run in ("TS_01", "TS_02"):
        assert got[run]["shape"] == [32, 48, 48] and got[run]["vs"] == 10.0 and got[run]["type"] == "multilabel"
        assert got[run]["path"].endswith(f"ExperimentRuns/{run}/Segmentations/"
                                         "10.000_tomochunk_0_segmentation-multilabel.zarr")
        ours = np.asarray(zarr.open_array(str(tmp_path / "scores" / f"{run}.zarr" / "labels" / "classes" / "0")))
        np.testing.assert_array_equal(np.load(tmp_path / f"{run}.npy"), ours)
        assert ours.max() > 0
    # a rerun finds everything done
    r = _cli("segment", cfg, "-m", "phantom", "-o", tmp_path / "scores", "--patch", "32", "--crop", "4",
             "--tiling", "blocks", "--workers", "1")
    assert r.returncode == 0 and r.stdout.count("skipped") == 2, r.stdout + r.stderr
    # pick takes the project too: each run's segmentation (ours: --seg-user), picks back into the project
    r = _cli("pick", cfg, "--method", "cc", "--min-size", "20", "--seg-user", "tomochunk", "--user", "me",
             "--session", "1")
    assert r.returncode == 0, r.stderr
    got = json.loads(_copick(READ_SEGMENTATIONS, cfg, tmp_path))
    assert got["TS_01/picks"] and all(p.startswith("me_1_") for p in got["TS_01/picks"]), got
    # copick's own segmentation: picked as the pickable object of its label (proteasome = 2)
    r = _cli("pick", cfg, "--method", "cc", "--seg-user", "cp", "-o", tmp_path / "cp.csv")
    assert r.returncode == 0, r.stderr
    import pandas as pd

    cp = pd.read_csv(tmp_path / "cp.csv")
    assert cp[["tomo_idx", "class_label", "x", "y", "z"]].values.tolist() in (
        [["TS_01", 2, 7.5, 5.5, 3.5]], [[0, 2, 7.5, 5.5, 3.5]])


def test_ambiguous_copick_projects_name_the_config(tmp_path, capsys):
    from tomochunk.io.volume import write_volume

    proj = tmp_path / "proj"
    cfg = _config(tmp_path / "copick.json", proj)
    for vs in ("10.000", "20.000"):
        write_volume(np.zeros((8, 8, 8), np.float32), proj / "ExperimentRuns" / "TS_01" / f"VoxelSpacing{vs}" /
                     "wbp.zarr", voxel_size=float(vs), levels=1)
    for more, argv, words in (([], ["--voxel-spacing", "30"], ["10.000, 20.000", "no voxel spacing 30"]),
                              ([], [], [str(cfg), "--voxel-spacing"]),
                              ([str(tmp_path / "x.mrc")], [], ["whole input set"])):
        assert main(["segment", str(cfg), *more, "-m", "phantom", "-o", str(tmp_path / "s"), *argv]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and len(err.strip().splitlines()) == 1, err
    assert main(["pick", str(cfg), "--method", "peaks"]) == 2
    assert "label maps" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


@needs_copick
def test_run_takes_a_copick_project(tmp_path, client):
    import starfile
    import yaml

    from tomochunk.phantom import phantom_tomogram
    from tomochunk.workflows.pipeline import run

    vol, _, _ = phantom_tomogram((32, 48, 48), 2, snr=2.0, voxel_size=10.0, seed=2)
    np.save(tmp_path / "vol.npy", np.asarray(vol, np.float32))
    cfg = _config(tmp_path / "copick.json", tmp_path / "proj")
    _copick(MAKE_PROJECT, cfg, tmp_path / "vol.npy")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "inputs": "copick.json", "outdir": "out", "copick": {"voxel_spacing": 10, "user": "tomochunk", "session": "0"},
        "segment": {"model": "phantom", "patch_size": 32, "crop": 4},
        "pick": {"method": "cc", "min_size": 20, "formats": ["star"]}}))
    table = run(tmp_path / "run.yaml", client=client)
    assert sorted(Path(s).name for s in table["store"]) == ["TS_01.zarr", "TS_02.zarr"]
    got = json.loads(_copick(READ_SEGMENTATIONS, cfg, tmp_path))
    for run_name in ("TS_01", "TS_02"):
        assert got[run_name]["type"] == "multilabel" and got[run_name]["shape"] == [32, 48, 48]
        picks = [p for p in got[f"{run_name}/picks"] if p.startswith("tomochunk_0_")]
        n = int(table.loc[table["store"].str.endswith(f"{run_name}.zarr"), "picks"].iloc[0])
        assert sum(int(p.rsplit(":", 1)[1]) for p in picks) == n > 0
        t = starfile.read(tmp_path / "out" / f"{run_name}.star")
        assert "rlnCenteredCoordinateXAngst" in t.columns and set(t["rlnTomoName"]) == {run_name}


def test_copick_segmentation_store_is_zarr2_ngff04_image(tmp_path):
    """The layout copick's write_ome_zarr_3d gives (a Zarr 2 NGFF 0.4 image at the store root, "/" chunk keys)."""
    pytest.importorskip("ome_zarr_models")
    import zarr
    from ome_zarr_models.v04.image import Image

    from tomochunk.io.copick_project import open_project, project_inputs, write_copick_segmentation
    from tomochunk.io.volume import write_volume

    lab = _labels()
    p = write_copick_segmentation(lab, tmp_path / "10.000_me_1_seg-multilabel.zarr", voxel_size=VS, lut=[0, 2, 1],
                                  chunks=8, classes={2: "ribosome", 1: "proteasome"})
    Image.from_zarr(zarr.open_group(str(p), mode="r"))
    meta = json.loads((p / "0" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["dimension_separator"] == "/" and meta["dtype"] == "|u1"
    ms = json.loads((p / ".zattrs").read_text())["multiscales"][0]
    assert ms["version"] == "0.4" and ms["datasets"][0]["path"] == "0"
    assert ms["datasets"][0]["coordinateTransformations"][0] == {"type": "scale", "scale": [VS] * 3}
    got = np.asarray(zarr.open_array(str(p / "0"), mode="r"))
    np.testing.assert_array_equal(got, np.array([0, 2, 1], np.uint8)[lab])
    # project_inputs: files are not a project; a project needs no option when it has one spacing and type
    assert project_inputs([str(tmp_path / "a.mrc")]) == (None, None)
    cfg = _config(tmp_path / "c.json", tmp_path / "proj", static=tmp_path / "static")
    write_volume(np.zeros((8, 8, 8), np.float32), tmp_path / "static" / "ExperimentRuns" / "TS_9" /
                 "VoxelSpacing10.000" / "denoised.zarr", voxel_size=10.0, levels=1)
    project, tomos = project_inputs([str(cfg)])
    assert [(t.run, t.voxel_spacing, t.tomo_type) for t in tomos] == [("TS_9", 10.0, "denoised")]
    # written to the overlay root, never to the static one
    assert project.segmentation_path("TS_9", 10.0, "u", "s", "n") == \
        (tmp_path / "proj" / "ExperimentRuns" / "TS_9" / "Segmentations" / "10.000_u_s_n-multilabel.zarr").absolute()
    assert open_project(cfg).objects == {1: "ribosome", 2: "proteasome"}
