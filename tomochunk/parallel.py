"""One way to get a Dask client: an address, an existing client, or an embedded LocalCluster."""

from __future__ import annotations

import contextlib

from ._log import get_logger

log = get_logger(__name__)


def get_client(client=None, *, scheduler: str | None = None, n_workers: int | None = None,
               threads_per_worker: int = 1, memory_limit: str | None = "auto", processes: bool = True):
    """Return ``(client, owned)``: a Dask client and whether the caller must close it.

    Parameters
    ----------
    client : distributed.Client, optional
        Used as is when given.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``), for SLURM or
        Kubernetes clusters. The same code then runs there unchanged.
    n_workers : int, optional
        Worker processes of the embedded LocalCluster (default: the number of cores).

    Examples
    --------
    >>> client, owned = get_client(n_workers=2)  # doctest: +SKIP
    >>> if owned: client.close()  # doctest: +SKIP
    """
    from distributed import Client, LocalCluster

    if client is not None:
        return client, False
    if scheduler:
        return Client(scheduler), True
    import os

    n = n_workers or max(1, min(os.cpu_count() or 1, 8))
    kw = {"env": worker_env(n)} if processes else {}
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                           memory_limit=memory_limit, dashboard_address=":0", **kw)
    c = Client(cluster)
    c._tomochunk_cluster = cluster  # closed together with the client
    log.info("started LocalCluster with %d workers, dashboard %s", n, c.dashboard_link)
    return c, True


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
    import os

    cores = cores or os.cpu_count() or 1
    want = {"TF_NUM_INTRAOP_THREADS": str(max(1, cores // max(1, n_workers))), "TF_NUM_INTEROP_THREADS": "1"}
    return {k: v for k, v in want.items() if k not in os.environ}


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
    """Context-manager form of :func:`get_client`."""
    c, owned = get_client(client, scheduler=scheduler, n_workers=n_workers, **kw)
    try:
        yield c
    finally:
        close_client(c, owned)
