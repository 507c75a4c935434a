"""One way to get a Dask client: an address, an existing client, an embedded LocalCluster, or batch jobs.

Batch jobs go through dask-jobqueue (``pip install tomochunk[slurm]``): SLURM, PBS, LSF
and SGE, configured the way Dask users already do (dask's ``jobqueue.yaml``), with
explicit keys overriding it. The job count is held by ``adapt`` so that a lost job is
resubmitted, GPU jobs ask the batch system for GPUs and advertise a ``GPU`` resource
(tomochunk's network tasks need it), and every worker gets TensorFlow's thread
settings (:func:`worker_env`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import dask

from ._log import get_logger
from .errors import TomochunkError, ValueProblem

log = get_logger(__name__)

#: ``cluster=`` kinds: the embedded LocalCluster, and the dask-jobqueue classes.
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster"}
CLUSTER_KINDS = ("local", *JOBQUEUE_CLASSES)

# The batch directive that asks for G GPUs per job. Sites differ (PBS ``select``
# chunks, SGE complex names), so these are the common spellings; ``job_extra_directives``
# adds a site's own.
_GPU_DIRECTIVES = {"slurm": "--gres=gpu:{n}", "pbs": "-l ngpus={n}", "lsf": '-gpu "num={n}"', "sge": "-l gpu={n}"}

#: Keys of a ``cluster:`` mapping (run config), as :func:`get_client` keywords.
CLUSTER_KEYS = ("kind", "jobs", "cores", "memory", "processes", "walltime", "queue", "account", "gpus",
                "gpu_jobs", "job_extra_directives", "worker_extra_args", "job_script_prologue", "interface",
                "log_directory", "local_directory", "python", "wait")


class ClusterError(TomochunkError, ConnectionError):
    """No scheduler at the given address, or the batch jobs' workers never came up."""


def get_client(client=None, *, scheduler: str | None = None, n_workers: int | None = None,
               threads_per_worker: int = 1, memory_limit: str | None = "auto", processes: bool = True,
               cluster: str | None = None, jobs: int | None = None, gpus: int | None = None,
               gpu_jobs: int | None = None, wait: float = 600, connect_timeout: float = 5, **jobqueue):
    """Return ``(client, owned)``: a Dask client and whether the caller must close it.

    Parameters
    ----------
    client : distributed.Client, optional
        Used as is when given.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``). An unreachable address
        raises :class:`ClusterError` after ``connect_timeout`` seconds.
    n_workers : int, optional
        Worker processes of the embedded LocalCluster (default: the number of cores).
    cluster : {"local", "slurm", "pbs", "lsf", "sge"}, optional
        ``"local"`` (the default) is the embedded LocalCluster; the others submit ``jobs``
        batch jobs through dask-jobqueue's ``SLURMCluster``, ``PBSCluster``, ... and wait
        for their workers (up to ``wait`` seconds).
    jobs : int, optional
        Batch jobs to keep running (default 1). The count is held by
        ``adapt(minimum_jobs=jobs, maximum_jobs=jobs)``: a job that dies is resubmitted.
    gpus : int, optional
        GPUs per job: the batch directive (``--gres=gpu:G`` on SLURM) and the worker
        resource ``GPU=G``, which tomochunk's network tasks require. With
        ``cluster="local"``, the embedded workers advertise ``GPU=G``.
    gpu_jobs : int, optional
        How many of the ``jobs`` get the GPUs (default: all); the others are CPU jobs
        for reading, writing and picking.
    **jobqueue
        Any dask-jobqueue keyword: ``cores``, ``memory``, ``processes`` (default 1, one
        TensorFlow per job), ``walltime``, ``queue``, ``account``,
        ``job_extra_directives``, ``worker_extra_args``, ``job_script_prologue``,
        ``log_directory``, ... Keys not given come from dask's config
        (``jobqueue.<kind>.*``, i.e. ``~/.config/dask/jobqueue.yaml``). The list keys are
        appended to the config's lists, as are the GPU directive, the ``GPU`` resource and
        the TensorFlow thread variables (:func:`worker_env`).

    Examples
    --------
    >>> client, owned = get_client(n_workers=1, processes=False)
    >>> len(client.scheduler_info()["workers"]), owned
    (1, True)
    >>> close_client(client, owned)
    >>> get_client(cluster="cloud")
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: cluster must be one of local, slurm, pbs, lsf, sge, not 'cloud'
    """
    if client is not None:
        return client, False
    kind = (cluster or "local").lower()
    if kind not in CLUSTER_KINDS:
        raise ValueProblem(f"cluster must be one of {', '.join(CLUSTER_KINDS)}, not {cluster!r}")
    if scheduler:
        if kind != "local":
            raise ValueProblem(f"a scheduler address and cluster={kind!r} exclude each other: pick one")
        return _connect(scheduler, connect_timeout), True
    if kind != "local":
        return _jobqueue_client(kind, jobs=jobs or 1, gpus=gpus, gpu_jobs=gpu_jobs, wait=wait, **jobqueue)
    batch_only = sorted(set(jobqueue) | {k for k, v in (("jobs", jobs), ("gpu_jobs", gpu_jobs)) if v})
    if batch_only:
        raise ValueProblem(f"{', '.join(batch_only)} apply to batch jobs: pass cluster='slurm' (or pbs, lsf, sge)")
    from distributed import Client, LocalCluster

    n = n_workers or max(1, min(os.cpu_count() or 1, 8))
    kw = {"env": worker_env(n)} if processes else {}
    if gpus:
        kw["resources"] = {"GPU": gpus}
    with _pre_spawn(malloc_env() if processes else {}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                               memory_limit=memory_limit, dashboard_address=":0", **kw)
    c = Client(cluster)
    c._tomochunk_cluster = cluster  # closed together with the client
    log.info("started LocalCluster with %d workers, dashboard %s", n, c.dashboard_link)
    return c, True


def _connect(address: str, timeout: float):
    """A client of the scheduler at ``address``, or a one-line :class:`ClusterError`."""
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a malformed address
        raise ClusterError(f"no Dask scheduler answers at {address} within {timeout:g} s "
                           f"({type(exc).__name__}); is it running, and is the address right?") from None


def _merged(kind: str, key: str, given, extra: list) -> list:
    """A list option: the given one, else dask's ``jobqueue.<kind>.<key>``, plus ``extra``."""
    base = given if given is not None else dask.config.get(f"jobqueue.{kind}.{key.replace('_', '-')}", None)
    return [*list(base or []), *[e for e in extra if e not in (base or [])]]


def jobqueue_options(kind: str, *, gpus: int | None = None, **options) -> dict:
    """The dask-jobqueue keywords tomochunk passes for one job: config, explicit keys and our additions.

    ``processes`` defaults to 1; the GPU directive and the ``GPU`` worker resource are
    appended when ``gpus`` is given, and the TensorFlow thread variables are exported
    in the job script (each worker gets ``cores / processes`` intra-op threads), unless
    the prologue sets them already.

    Examples
    --------
    >>> o = jobqueue_options("slurm", cores=4, memory="8GB", gpus=1)
    >>> o["job_extra_directives"], o["worker_extra_args"]
    (['--gres=gpu:1'], ['--resources', 'GPU=1'])
    >>> [line for line in o["job_script_prologue"] if "INTRA" in line]
    ['export TF_NUM_INTRAOP_THREADS=4']
    """
    opts = {k: v for k, v in options.items() if v is not None}
    cfg = lambda key: dask.config.get(f"jobqueue.{kind}.{key}", None)  # noqa: E731
    processes = opts.setdefault("processes", cfg("processes") or 1)
    cores = opts.get("cores", cfg("cores"))
    directive = [_GPU_DIRECTIVES[kind].format(n=gpus)] if gpus else []
    opts["job_extra_directives"] = _merged(kind, "job_extra_directives", opts.get("job_extra_directives"),
                                           directive)
    args = list(opts.get("worker_extra_args") or cfg("worker-extra-args") or [])
    if gpus and "--resources" not in args:
        args += ["--resources", f"GPU={gpus}"]
    opts["worker_extra_args"] = args
    prologue = list(opts.get("job_script_prologue") or cfg("job-script-prologue") or [])
    env = {**(worker_env(int(processes), cores=int(cores)) if cores else {}), **malloc_env()}
    prologue += [f"export {k}={v}" for k, v in env.items() if not any(k in line for line in prologue)]
    opts["job_script_prologue"] = prologue
    opts.setdefault("scheduler_options", {"dashboard_address": ":0", **(cfg("scheduler-options") or {})})
    return opts


def _jobqueue_client(kind: str, *, jobs: int, gpus, gpu_jobs, wait: float, **options):
    """Start ``jobs`` batch jobs (``gpu_jobs`` of them with ``gpus``) and a client of their scheduler."""
    try:
        jq = importlib.import_module("dask_jobqueue")
    except ImportError:
        raise ValueProblem(f"cluster={kind!r} needs dask-jobqueue: pip install 'tomochunk[slurm]'") from None
    from distributed import Client

    base = getattr(jq, JOBQUEUE_CLASSES[kind])
    gpu_jobs = jobs if gpu_jobs is None or not gpus else min(int(gpu_jobs), jobs)
    gpu_opts = jobqueue_options(kind, gpus=gpus, **options)
    cpu_opts = jobqueue_options(kind, **options)
    sched = gpu_opts.pop("scheduler_options")
    cpu_opts.pop("scheduler_options")
    cls = _mixed_class(base) if gpus and gpu_jobs < jobs else base
    try:
        cluster = cls(scheduler_options=sched, **gpu_opts)
    except ValueError as exc:
        if "cores and memory" in str(exc):
            raise ValueProblem(f"cluster {kind}: set cores and memory per job (--cores/--memory, the run config's "
                               f"cluster keys, or jobqueue.{kind}.cores/memory in dask's jobqueue.yaml)") from None
        raise ValueProblem(f"cluster {kind}: {' '.join(str(exc).split())}") from None
    if cls is not base:
        cluster._tomochunk_specs = (gpu_jobs, {"cls": cluster.job_cls, "options": cluster._job_kwargs},
                                    {"cls": cluster.job_cls, "options": {**cluster._job_kwargs, **cpu_opts}})
    # adapt, not scale: Adaptive reconciles the plan with the running jobs, so a job that
    # dies (walltime, node failure, kill -9) is submitted again; scale() never does.
    cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
    client = Client(cluster)
    client._tomochunk_cluster = cluster
    n = jobs * int(gpu_opts["processes"])
    log.info("submitted %d %s jobs (%d with %s GPUs); waiting for %d workers", jobs, kind, gpu_jobs if gpus else 0,
             gpus or 0, n)
    try:
        client.wait_for_workers(n, timeout=wait)
    except TimeoutError:
        got = len(client.scheduler_info()["workers"])
        close_client(client, True)
        raise ClusterError(f"{kind}: {got} of {n} workers started within {wait:g} s; check the queue "
                           f"(squeue/qstat) and the job logs") from None
    return client, True


def _mixed_class(base):
    """``base`` whose new jobs are GPU jobs until ``gpu_jobs`` exist, then CPU jobs.

    A resubmitted job keeps its name and so its kind (SpecCluster restarts the lost
    spec), which keeps the GPU count through failures."""

    def new_worker_spec(self):
        (name, _), = base.new_worker_spec(self).items()
        n_gpu, gpu, cpu = self._tomochunk_specs
        have = sum(1 for s in self.worker_spec.values() if s.get("_tomochunk") == "gpu")
        spec = dict(gpu if have < n_gpu else cpu, _tomochunk="gpu" if have < n_gpu else "cpu")
        if int(spec["options"].get("processes", 1)) > 1:
            spec["group"] = [f"-{i}" for i in range(int(spec["options"]["processes"]))]
        return {name: spec}

    return type(f"Mixed{base.__name__}", (base,), {"new_worker_spec": new_worker_spec})


def worker_env(n_workers: int, cores: int | None = None) -> dict:
    """Environment for ``n_workers`` worker processes sharing ``cores``: TensorFlow's thread pools.

    Distributed already limits OpenMP/MKL/OpenBLAS to one thread per worker
    (``distributed.nanny.pre-spawn-environ``); TensorFlow reads its own variables and
    otherwise gives every worker an intra-op and an inter-op pool as large as the
    machine. On 2 cores with 2 workers those 8 threads made bfloat16 inference 1.5x
    slower than one thread per worker. Variables already set are left as they are.
    For workers started by hand (SLURM, Kubernetes), set the same variables there.

    Examples
    --------
    >>> worker_env(2, cores=8)["TF_NUM_INTRAOP_THREADS"]
    '4'
    """
    cores = cores or os.cpu_count() or 1
    want = {"TF_NUM_INTRAOP_THREADS": str(max(1, cores // max(1, n_workers))), "TF_NUM_INTEROP_THREADS": "1"}
    return {k: v for k, v in want.items() if k not in os.environ}


#: glibc's malloc, told to keep what a worker frees (:func:`malloc_env`): no ``mmap`` per large
#: block, no trimming of the heap's top below 64 GiB, and one arena for all threads.
_MALLOC_RETAIN = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30), "MALLOC_ARENA_MAX": "1"}


def malloc_env() -> dict:
    """glibc ``malloc`` settings for worker processes: keep freed memory for the next block.

    A network window allocates a few GB of activations and frees them when it ends.
    glibc serves every allocation over 32 MB with its own ``mmap`` and gives it back to
    the kernel on ``free`` (and distributed sets ``MALLOC_TRIM_THRESHOLD_=65536`` so that
    the heap is trimmed too), so the next window faults the same gigabytes in again. On
    this project's 2-core VMs freed memory goes back to the host (free page reporting) and
    touching it again costs about 2 s per GB of system time (0.1-0.2 s per GB while the guest
    still holds it):
    a steady bfloat16 window of 204x260x260 took 17.2 s, of which 2.8 s were system time;
    with these settings, 14.5 s and 0.1 s. End to end the gain is smaller (float32
    200x256x256 cold 41.3 -> 39.0 s, steady within the noise:
    ``benchmarks/results/bench_segment_200x256x256_trained_scatter.txt``). The price is
    that a worker's resident memory stays at its peak between blocks (the block plan
    already sizes that peak to the worker's memory; distributed may log "Unmanaged
    memory use is high").

    ``MALLOC_ARENA_MAX=1``: Dask runs tasks in threads, and glibc gives each thread an
    arena of its own whose heaps are at most 64 MB; a larger block from such an arena
    is ``mmap``-ed whatever ``MALLOC_MMAP_MAX_`` says, and unmapped when freed. In the
    one arena every block comes from the retained heap: a steady bfloat16 window in a
    worker's task went from 17.2/16.7 s to 14.0/14.0 s (the same as in a main thread),
    the float32 one likewise. Dask's tasks allocate few but large blocks, so the one
    arena's lock is not contended.

    Returned on Linux with glibc only, and only where dask's
    ``distributed.nanny.pre-spawn-environ`` does not set ``MALLOC_MMAP_MAX_`` itself: to
    keep glibc's defaults, set it there (``MALLOC_MMAP_MAX_: 65536``). Batch jobs get
    the same variables in their prologue.

    Examples
    --------
    >>> sorted(malloc_env()) in ([], ["MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"])
    True
    """
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return {}
    if "MALLOC_MMAP_MAX_" in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}):
        return {}
    return dict(_MALLOC_RETAIN)


@contextlib.contextmanager
def _pre_spawn(env: dict):
    """Nannies created inside take ``env`` into the variables set before their worker starts.

    Only ``pre-spawn-environ`` reaches a worker before its interpreter (and so glibc)
    starts; ``env=`` is applied inside the worker, too late for malloc. The nanny also
    copies these variables into this process's ``os.environ``; that copy is undone here,
    so that later subprocesses of the caller keep the caller's own environment.
    """
    if not env:
        yield
        return
    saved = {k: os.environ.get(k) for k in env}
    base = dict(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": {**base, **env}}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def current_client(client=None):
    """The client to compute on: ``client`` if given, else the default distributed client, else ``None``.

    This is the one probe for a running client; ``None`` means "no distributed
    scheduler, compute with dask's local scheduler".

    Examples
    --------
    >>> current_client("given")
    'given'
    """
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def worker_info(client=None) -> dict:
    """The scheduler's worker records, ``{address: info}`` (``{}`` without a distributed client).

    Examples
    --------
    >>> isinstance(worker_info(), dict)
    True
    """
    client = current_client(client)
    if client is None:
        return {}
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed has no n_workers argument
        return client.scheduler_info()["workers"]


def n_workers(client=None) -> int:
    """How many workers share the work: the scheduler's count, or 1 without a client.

    Examples
    --------
    >>> n_workers() >= 1
    True
    """
    return max(1, len(worker_info(client)))


def close_client(client, owned: bool) -> None:
    """Close a client obtained from :func:`get_client` if we started it."""
    if not owned:
        return
    cluster = getattr(client, "_tomochunk_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextlib.contextmanager
def client_context(client=None, *, scheduler=None, n_workers=None, **kw):
    """Context-manager form of :func:`get_client`: closes what it started.

    Examples
    --------
    >>> with client_context(n_workers=1, processes=False) as c:
    ...     n_workers(c)
    1
    """
    c, owned = get_client(client, scheduler=scheduler, n_workers=n_workers, **kw)
    try:
        yield c
    finally:
        close_client(c, owned)


def client_options(mapping) -> dict:
    """:func:`get_client` keywords from a config mapping (a ``run`` config, or CLI options).

    Keys read: ``scheduler`` (address), ``workers`` (embedded LocalCluster workers) and
    ``cluster``: a kind (``local``, ``slurm``, ``pbs``, ``lsf``, ``sge``) or a mapping
    ``{kind: slurm, jobs: 2, cores: 4, memory: 16GB, walltime: "01:00:00", queue: gpu,
    gpus: 1, gpu_jobs: 1, processes: 1, account: ..., job_extra_directives: [...],
    worker_extra_args: [...], job_script_prologue: [...], interface: ib0,
    log_directory: ..., local_directory: ..., python: ..., wait: 600}`` (see
    :func:`get_client`). Keys left out come from dask's ``jobqueue.yaml``; ``job_extra``
    is accepted for ``job_extra_directives``. Other keys are refused.

    Examples
    --------
    >>> client_options({"cluster": {"kind": "slurm", "jobs": 2, "gpus": 1, "job_extra": ["--exclusive"]}})
    {'cluster': 'slurm', 'jobs': 2, 'gpus': 1, 'job_extra_directives': ['--exclusive']}
    >>> client_options({"workers": 2, "cluster": "local"})
    {'n_workers': 2, 'cluster': 'local'}
    >>> client_options({"cluster": {"kind": "slurm", "job": 2}})
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: cluster: unknown key 'job'; known: kind, jobs, cores, memory, processes, walltime, queue, account, gpus, gpu_jobs, job_extra_directives, worker_extra_args, job_script_prologue, interface, log_directory, local_directory, python, wait
    """
    out = {}
    if mapping.get("scheduler"):
        out["scheduler"] = str(mapping["scheduler"])
    if mapping.get("workers"):
        out["n_workers"] = int(mapping["workers"])
    spec = mapping.get("cluster")
    if spec is None:
        return out
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict):
        raise ValueProblem(f"cluster must be a kind ({', '.join(CLUSTER_KINDS)}) or a mapping with 'kind', "
                           f"not {spec!r}")
    spec = dict(spec)
    if "job_extra" in spec:
        spec.setdefault("job_extra_directives", spec.pop("job_extra"))
    for key in spec:
        if key not in CLUSTER_KEYS:
            raise ValueProblem(f"cluster: unknown key {key!r}; known: {', '.join(CLUSTER_KEYS)}")
    for key in ("job_extra_directives", "worker_extra_args", "job_script_prologue"):
        if isinstance(spec.get(key), str):
            spec[key] = [spec[key]]
    out["cluster"] = str(spec.pop("kind", "local")).lower()
    out.update({k: v for k, v in spec.items() if v is not None})
    return out


@contextlib.contextmanager
def client_from_config(mapping, client=None):
    """A client built from a config mapping (see :func:`client_options`), closed on exit.

    ``client``, when given, is used as is. This is how the ``run`` pipeline gets its
    cluster: ``cluster: {kind: slurm, jobs: 2, ...}`` in its YAML maps to
    ``get_client(cluster="slurm", jobs=2, ...)``.

    Examples
    --------
    >>> with client_from_config({"workers": 1}) as c:
    ...     n_workers(c)
    1
    """
    with client_context(client, **client_options(mapping)) as c:
        yield c
