"""`tomochunk run` killed with SIGKILL partway: nothing partial reads as whole, and the rerun finishes the job
(issue 19: "a test kills (SIGKILL) ... a `run` partway through")."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

import tomochunk as tc
from tomochunk import TomochunkError
from tomochunk.io.omezarr import check_complete, is_complete
from tomochunk.pipeline import run

FORMATS = ["xml", "csv"]


def _project(root):
    (root / "tomos").mkdir(parents=True)
    for i in range(2):
        vol, _, _ = tc.phantom_tomogram((32, 48, 48), seed=30 + i, tomo=f"t{i}")
        tc.write_volume(vol, root / "tomos" / f"t{i}.mrc", voxel_size=10.0)


def _config(root, outdir):
    # the shipped model, trained on these phantoms: decisive scores, so the labels (and the picks) of
    # two runs are the same and not argmax over float round-off, as with an untrained net
    cfg = {"inputs": ["tomos/*.mrc"], "outdir": outdir, "workers": 1,
           "segment": {"model": "phantom", "patch_size": 32, "crop": 4},
           "pick": {"method": "cc", "min_size": 1, "formats": FORMATS}}
    path = root / f"{outdir}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _command(config):
    return [sys.executable, "-m", "tomochunk.cli", "run", str(config)]


def _same_lists(a, b):
    assert len(a) == len(b)
    cols = ["class_label", "x", "y", "z"]
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=1e-6)


def _check_nothing_partial_reads_as_whole(out, ref):
    """Every store opens whole or is refused with one line; every list under its name is the whole list."""
    for store in sorted(out.glob("*.zarr")):
        for node in (store, store / "labels" / "classes", store / "labels" / "scores"):
            if not node.exists():
                continue
            try:
                check_complete(node)
                v = tc.open_volume(node)
            except TomochunkError as exc:
                assert "\n" not in str(exc) and str(node) in str(exc), exc
                assert not is_complete(node) or "damaged" in str(exc)
                continue
            assert is_complete(node)
            v.values  # every chunk decodes
    for fmt in FORMATS:
        for p in sorted(out.glob(f"*.{fmt}")):
            _same_lists(tc.read_objects(p), ref[p.name])  # complete, never a cut list


def test_sigkill_during_run_then_rerun_gives_the_full_result(tmp_path):
    _project(tmp_path)
    # the uninterrupted run, for reference, on the same embedded cluster (one worker: the same blocks)
    run(_config(tmp_path, "ref"))
    ref = {p.name: tc.read_objects(p) for fmt in FORMATS for p in (tmp_path / "ref").glob(f"*.{fmt}")}
    assert len(ref) == 2 * len(FORMATS)

    config, out = _config(tmp_path, "out"), tmp_path / "out"
    here = str(Path(tc.__file__).resolve().parents[1])  # this checkout's tomochunk, in the subprocess too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    # a session of its own: the kill can take the embedded cluster's worker processes with it
    proc = subprocess.Popen(_command(config), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        # partway: the first tomogram is done, the second one's label arrays are created and its
        # segmentation is being computed
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "t1.zarr" / "labels" / "classes").exists():
                break
            time.sleep(0.005)
        running = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        try:  # then its worker processes, which the kill orphans (the group is still ours: not yet reaped)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()[-2000:]
        proc.stderr.close()
    assert running, f"run ended before it could be killed: {err}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "t1.xml").exists()  # the kill did land partway
    _check_nothing_partial_reads_as_whole(out, ref)

    # the same command again finishes the job: the lists of an uninterrupted run, no leftovers
    done = subprocess.run(_command(config), cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    for name, objs in ref.items():
        _same_lists(tc.read_objects(out / name), objs)
    for i in range(2):
        for node in (out / f"t{i}.zarr", out / f"t{i}.zarr" / "labels" / "classes"):
            check_complete(node)
        np.testing.assert_array_equal(tc.open_volume(out / f"t{i}.zarr" / "labels" / "classes").values,
                                      tc.open_volume(tmp_path / "ref" / f"t{i}.zarr" / "labels" / "classes").values)
    left = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if ".tmp" in f or f.endswith(".partial")]
    assert left == []
