"""SLURM integration: tomochunk on two batch jobs of one worker each (one with GPU=1) equals a LocalCluster.

Needs the one-node SLURM of ``.ci/slurm-up`` (two fake GPUs). In CI (``CI`` or
``TOMOCHUNK_SLURM`` set, as ``.ci/run`` does) these tests fail when SLURM is not
there; elsewhere they are skipped. The node has 2 cores: each job takes 1.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import yaml

import tomochunk as tc
from tomochunk.ops.pick import pick_inputs
from tomochunk.parallel import client_context, close_client, get_client
from tomochunk.pipeline import run, shipped_model

REQUIRED = bool(os.environ.get("TOMOCHUNK_SLURM") or os.environ.get("CI"))
RUN_DIR = os.environ.get("TOMOCHUNK_SLURM_DIR", "/tmp/tomochunk-slurm")
SHAPE = (48, 96, 96)
SEGMENT = {"patch_size": 48, "crop": 8}
PICK = {"method": "meanshift", "radius": 5, "min_size": 20}
JOBS = {"cluster": "slurm", "jobs": 2, "gpus": 1, "gpu_jobs": 1, "cores": 1, "memory": "3GB",
        "walltime": "00:20:00", "wait": 120}

pytestmark = pytest.mark.timeout(300)


def _slurm_problem():
    """Why SLURM cannot be used here, or None."""
    if importlib.util.find_spec("dask_jobqueue") is None:
        return "dask-jobqueue is not installed (pip install 'tomochunk[slurm]')"
    conf = os.environ.get("SLURM_CONF") or os.path.join(RUN_DIR, "slurm.conf")
    if not os.path.exists(conf):
        return f"no SLURM config at {conf}: run .ci/slurm-up"
    os.environ["SLURM_CONF"] = conf  # sbatch/scancel (run by dask-jobqueue) and scontrol read it
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T %G"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s"
    fields = out.stdout.split()
    if out.returncode or len(fields) < 2:
        return f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}"
    if fields[0].rstrip("*~#") not in ("idle", "mixed", "allocated"):
        return f"the node is {fields[0]}"
    if "gpu:2" not in fields[1]:
        return f"the node has GRES {fields[1]}, not gpu:2"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem:
        (pytest.fail if REQUIRED else pytest.skip)(f"SLURM is not available: {problem}")


@pytest.fixture(scope="module")
def data(slurm, tmp_path_factory):
    """A phantom store, and the LocalCluster's segmentation, picks and `run` outputs of it."""
    root = tmp_path_factory.mktemp("slurm")
    vol, _, _ = tc.phantom_tomogram(SHAPE, classes=4, seed=3, snr=2.0)
    tc.write_volume(vol, root / "phantom.mrc", voxel_size=10.0)
    tc.convert(root / "phantom.mrc", root / "source.zarr", levels=1)
    with client_context(n_workers=2, memory_limit="3GB") as client:
        ref = _segment_and_pick(client, _copy(root, "local"))
        ref_run = run(_run_config(root, "run_local", workers=2), client=client)
    return root, ref, ref_run


def _copy(root, name):
    shutil.copytree(root / "source.zarr", root / f"{name}.zarr")
    return root / f"{name}.zarr"


def _segment_and_pick(client, store):
    scores = tc.segment(tc.open_volume(store), shipped_model("phantom"), client=client, **SEGMENT)
    tc.write_segmentation(scores, store, client=client)
    picks = pick_inputs(store, **PICK)
    return (np.asarray(tc.open_volume(store / "labels" / "scores").data),
            np.asarray(tc.open_volume(store / "labels" / "classes").data), picks)


def _same(got, ref):
    assert np.array_equal(got[0], ref[0]), "scores differ"
    assert np.array_equal(got[1], ref[1]), "labels differ"
    assert len(ref[2]) > 0
    drop = lambda df: df.drop(columns=["tomo"], errors="ignore").reset_index(drop=True)  # noqa: E731 (store names)
    pd.testing.assert_frame_equal(drop(got[2]), drop(ref[2]))


def _run_config(root, outdir, **where):
    cfg = {"inputs": ["phantom.mrc"], "outdir": outdir, "segment": {"model": "phantom", **SEGMENT},
           "pick": {**PICK, "formats": ["xml"]}, **where}
    return cfg | {"_base": root}


def _where(scheduler):
    """A scheduler plugin that records which worker ran each task, and which tasks needed a GPU."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Where(SchedulerPlugin):
        name = "tomochunk-where"

        def __init__(self):
            self.scheduler, self.ran, self.gpu = scheduler, [], []

        transition = _record

    return Where()


def _record(self, key, start, finish, *args, **kwargs):
    if start != "processing" or finish != "memory":
        return
    ts = self.scheduler.tasks.get(key)
    worker = kwargs.get("worker") or next((ws.address for ws in (ts.who_has or ())), None)
    self.ran.append(worker)
    if ts is not None and "GPU" in (ts.resource_restrictions or {}):
        self.gpu.append(worker)


class TestOnTwoJobs:
    """Two SLURM jobs (one with --gres=gpu:1 and GPU=1) for the tests of this class only: the node
    has 2 cores, and `tomochunk run` below starts jobs of its own."""

    @pytest.fixture(scope="class")
    def jobs(self, data):
        import dask

        root = data[0]
        # a lost worker leaves the cluster after 2 s, not 15, so adapt resubmits its job sooner
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "2s"}):
            client, owned = get_client(**JOBS, log_directory=str(root / "jobs"))
            cluster = client._tomochunk_cluster
            where = _where(cluster.scheduler)
            cluster.scheduler.add_plugin(where)
            yield client, cluster, where
            close_client(client, owned)

    @staticmethod
    def _gpu_workers(client):
        return {a for a, w in client.scheduler_info()["workers"].items() if w.get("resources", {}).get("GPU")}

    def test_segment_and_pick_equal_local_and_network_tasks_only_on_the_gpu_job(self, data, jobs):
        root, ref, _ = data
        client, cluster, where = jobs
        info = client.scheduler_info()["workers"]
        assert len(info) == 2 and len(self._gpu_workers(client)) == 1
        job_ids = {w.job_id for w in cluster.workers.values()}
        assert len(job_ids) == 2  # two SLURM jobs
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:1" in script and "TF_NUM_INTRAOP_THREADS=1" in script
        threads = client.run(lambda: (os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("SLURM_JOB_ID")))
        assert {t[0] for t in threads.values()} == {"1"} and {t[1] for t in threads.values()} == job_ids

        _same(_segment_and_pick(client, _copy(root, "slurm")), ref)
        gpu = self._gpu_workers(client)
        assert where.gpu and set(where.gpu) == gpu, "network tasks ran off the GPU job"
        assert set(where.ran) - gpu, "the CPU job ran nothing"

    def test_a_killed_job_is_resubmitted_and_the_output_is_the_same(self, data, jobs):
        root, ref, _ = data
        client, cluster, where = jobs
        (name,) = [n for n, s in cluster.worker_spec.items() if s.get("_tomochunk") == "gpu"]
        old = cluster.workers[name].job_id
        before = len(where.gpu)
        result = {}
        work = threading.Thread(target=lambda: result.update(out=_segment_and_pick(client, _copy(root, "killed"))))
        work.start()
        deadline = time.monotonic() + 120
        while len(where.gpu) == before and time.monotonic() < deadline:  # mid-run: a network task is done
            time.sleep(0.05)
        assert len(where.gpu) > before, "no network task finished"
        pids = subprocess.run(["scontrol", "listpids", old], capture_output=True, text=True, timeout=10)
        pids = [int(line.split()[0]) for line in pids.stdout.splitlines()[1:] if line.split()[0].isdigit()]
        assert pids, "scontrol listpids found no process of the GPU job"
        for pid in pids:  # a crash, not a cancel: no SIGTERM first
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        work.join(timeout=240)
        assert not work.is_alive(), "the run did not finish after the job was killed"
        _same(result["out"], ref)
        client.wait_for_workers(2, timeout=120)
        new = cluster.workers[name].job_id
        assert new != old, "adapt did not resubmit the killed job"
        state = subprocess.run(["squeue", "-h", "-j", new, "-o", "%T"], capture_output=True, text=True, timeout=10)
        assert state.stdout.strip() == "RUNNING"
        (gpu_now,) = self._gpu_workers(client)
        # mid-run: network tasks ran on the killed job's worker and on its resubmitted one
        assert gpu_now in where.gpu[before:] and len(set(where.gpu[before:])) == 2, where.gpu[before:]


def test_run_with_cluster_slurm_in_its_config_equals_local(data):
    root, _, ref_run = data
    cluster = {k: v for k, v in JOBS.items() if k != "cluster"} | {"kind": "slurm",
                                                                 "log_directory": str(root / "run_jobs")}
    cfg = {k: v for k, v in _run_config(root, "run_slurm").items() if k != "_base"} | {"cluster": cluster}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "tomochunk.cli", "run", str(root / "run.yaml")],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(os.listdir(root / "run_jobs")), "no SLURM job ran"  # dask-worker-<id>.err/out
    for part in ("scores", "classes"):
        got = tc.open_volume(root / "run_slurm" / "phantom.zarr" / "labels" / part).data
        want = tc.open_volume(root / "run_local" / "phantom.zarr" / "labels" / part).data
        assert np.array_equal(np.asarray(got), np.asarray(want)), part
    got, want = (tc.read_objects(root / d / "phantom.xml") for d in ("run_slurm", "run_local"))
    assert len(want) == ref_run["picks"].iloc[0] > 0
    pd.testing.assert_frame_equal(got, want)


def test_cli_segment_and_pick_on_slurm_jobs_equal_local(data):
    """The README's command lines: `segment` and `pick` with --cluster slurm."""
    root, ref, _ = data
    model = str(shipped_model("phantom"))
    jobs = ["--cluster", "slurm", "--jobs", "2", "--cores", "1", "--memory", "3GB", "--walltime", "00:20:00"]
    cli = [sys.executable, "-m", "tomochunk.cli"]
    seg = subprocess.run([*cli, "segment", str(root / "phantom.mrc"), "-m", model, "-o", str(root / "cli"),
                          "--patch", "48", "--crop", "8", "--dtype", "float16", *jobs, "--gpus", "1",
                          "--gpu-jobs", "1"], capture_output=True, text=True, timeout=240, cwd=root)
    assert seg.returncode == 0, seg.stderr[-3000:]
    store = root / "cli" / "phantom.zarr"
    pick = subprocess.run([*cli, "pick", str(store), "--method", "meanshift", "--radius", "5", "--min-size", "20",
                           "-o", str(root / "cli_picks.xml"), *jobs], capture_output=True, text=True, timeout=240,
                          cwd=root)
    assert pick.returncode == 0, pick.stderr[-3000:]
    got = [np.asarray(tc.open_volume(store / "labels" / p).data) for p in ("scores", "classes")]
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    picks = tc.read_objects(root / "cli_picks.xml")
    want = ref[2]
    assert len(picks) == len(want)
    np.testing.assert_array_equal(picks[["class_label", "x", "y", "z"]].to_numpy(float),
                                  want[["class_label", "x", "y", "z"]].to_numpy(float))
