import os

import dask
import pytest

from tomochunk.parallel import client_context, malloc_env, worker_env


def _tf_threads():
    import os

    return os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_NUM_INTEROP_THREADS")


def test_embedded_cluster_gives_tensorflow_its_share_of_cores(monkeypatch):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    with client_context(n_workers=2) as client:
        seen = client.run(_tf_threads)
    assert len(seen) == 2
    assert set(seen.values()) == {(str(max(1, (os.cpu_count() or 1) // 2)), "1")}


def _freed_block_stays_resident():
    """Whether 256 MB freed by numpy are reused without page faults (the kernel's count): glibc
    kept them, instead of giving them back and faulting them in again (128-640 faults here)."""
    import resource

    import numpy as np

    a = np.ones(32 << 20)  # 256 MB: over glibc's default mmap threshold
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(32 << 20)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 16


@pytest.mark.skipif(not malloc_env(), reason="glibc malloc settings apply on Linux with glibc only")
def test_embedded_workers_keep_freed_memory_and_the_caller_keeps_its_environment(monkeypatch):
    want = malloc_env()
    for k in want:
        monkeypatch.delenv(k, raising=False)
    with client_context(n_workers=1) as client:
        (env,) = client.run(lambda: {k: os.environ.get(k) for k in want}).values()
        (kept,) = client.run(_freed_block_stays_resident).values()
        # and in a task, on a thread of the worker's pool (glibc's per-thread arenas mmap such blocks)
        in_task = all(client.submit(_freed_block_stays_resident, pure=False).result() for _ in range(2))
    assert env == want and kept and in_task
    assert not any(k in os.environ for k in want)  # the nanny's copy was undone
    assert not _freed_block_stays_resident()  # this process runs glibc's defaults: given back
    # dask's own setting wins: glibc's defaults in the workers
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_MAX_": 65536}):
        assert malloc_env() == {}
        with client_context(n_workers=1) as client:
            (kept,) = client.run(_freed_block_stays_resident).values()
    assert not kept


def test_worker_env_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    assert worker_env(2, cores=8) == {"TF_NUM_INTEROP_THREADS": "1"}
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    assert worker_env(16, cores=8)["TF_NUM_INTRAOP_THREADS"] == "1"  # never 0


# --- cluster construction (no batch system needed: job scripts are only built) ----------

import subprocess
import sys

import dask
import pytest

from tomochunk.errors import ValueProblem
from tomochunk.parallel import ClusterError, _connect, client_from_config, client_options, jobqueue_options


def test_run_config_cluster_section_maps_to_get_client_keywords():
    cfg = {"workers": 3, "cluster": {"kind": "SLURM", "jobs": 2, "cores": 4, "memory": "8GB", "gpus": 1,
                                     "gpu_jobs": 1, "job_extra": "--exclusive"}}
    assert client_options(cfg) == {"n_workers": 3, "cluster": "slurm", "jobs": 2, "cores": 4, "memory": "8GB",
                                   "gpus": 1, "gpu_jobs": 1, "job_extra_directives": ["--exclusive"]}
    assert client_options({"cluster": "pbs"}) == {"cluster": "pbs"}
    with pytest.raises(ValueProblem, match="unknown key 'memroy'"):
        client_options({"cluster": {"kind": "slurm", "memroy": "8GB"}})
    with pytest.raises(ValueProblem, match="cluster must be one of"):
        with client_from_config({"cluster": "kubernetes"}):
            pass


def test_jobqueue_script_has_gpus_resources_and_tensorflow_threads(monkeypatch):
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    # dask's jobqueue.yaml is honoured: its prologue and directives stay, ours are appended
    with dask.config.set({"jobqueue.slurm.job-script-prologue": ["source /opt/venv/bin/activate"],
                          "jobqueue.slurm.job-extra-directives": ["--exclusive"],
                          "jobqueue.slurm.queue": "gpu"}):
        opts = jobqueue_options("slurm", cores=4, memory="8GB", gpus=2, walltime="00:10:00")
        with dask_jobqueue.SLURMCluster(**opts) as cluster:
            script = cluster.job_script()
    assert "#SBATCH -p gpu" in script and "#SBATCH --exclusive" in script
    assert "#SBATCH --gres=gpu:2" in script and "--resources GPU=2" in script
    assert "source /opt/venv/bin/activate" in script
    assert "export TF_NUM_INTRAOP_THREADS=4" in script and "export TF_NUM_INTEROP_THREADS=1" in script
    assert "#SBATCH -t 00:10:00" in script
    # explicit keys override the config
    with dask.config.set({"jobqueue.pbs.job-script-prologue": ["export TF_NUM_INTRAOP_THREADS=7"]}):
        opts = jobqueue_options("pbs", cores=8, memory="8GB", processes=2, job_script_prologue=["module load cuda"])
    malloc = [f"export {k}={v}" for k, v in malloc_env().items()]
    assert opts["job_script_prologue"] == ["module load cuda", "export TF_NUM_INTRAOP_THREADS=4",
                                           "export TF_NUM_INTEROP_THREADS=1", *malloc]


def test_missing_cores_and_memory_is_one_line():
    pytest.importorskip("dask_jobqueue")
    from tomochunk.parallel import get_client

    with pytest.raises(ValueProblem, match="set cores and memory per job"):
        get_client(cluster="slurm", jobs=1)
    with pytest.raises(ValueProblem, match="cores apply to batch jobs"):
        get_client(cores=2)


def test_unreachable_scheduler_is_a_one_line_error():
    with pytest.raises(ClusterError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        _connect("tcp://127.0.0.1:9", 1)
    res = subprocess.run([sys.executable, "-m", "tomochunk.cli", "pick", "x.zarr", "-o", "x.xml",
                          "--scheduler", "nonsense:::"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "no Dask scheduler answers at nonsense:::" in res.stderr


def test_every_array_command_takes_the_cluster_options():
    from tomochunk.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command").choices
    tirf = next(a for a in sub["tirf"]._actions if a.dest == "tirf_command").choices
    parsers = {n: sub[n] for n in ("segment", "run", "segment-features", "pick", "train", "target",
                                   "export-meshes")} | {f"tirf {n}": p for n, p in tirf.items()}
    for name, p in parsers.items():
        for flag in ("--scheduler", "--cluster", "--jobs", "--cores", "--memory", "--walltime", "--queue",
                     "--gpus", "--job-extra"):
            assert flag in p._option_string_actions, (name, flag)
        assert {"--workers", "--dask-workers"} & set(p._option_string_actions), name


def test_pick_on_a_running_scheduler_equals_the_local_run(client, tmp_path):
    import tomochunk as tc
    from tomochunk.cli import main

    _, _, labels = tc.phantom_tomogram((32, 48, 48), classes=2, seed=1)
    tc.write_volume(labels, tmp_path / "labels.zarr", voxel_size=10.0, label=True, levels=1)
    common = ["pick", str(tmp_path / "labels.zarr"), "--method", "cc", "--min-size", "5"]
    assert main([*common, "-o", str(tmp_path / "local.xml")]) == 0
    assert main([*common, "-o", str(tmp_path / "remote.xml"), "--scheduler", client.scheduler.address]) == 0
    local, remote = (tc.read_objects(tmp_path / f"{n}.xml") for n in ("local", "remote"))
    assert len(local) > 0
    assert local.equals(remote)
