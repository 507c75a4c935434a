import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(scope="session")
def client():
    """A real multi-process LocalCluster shared by the whole test session."""
    from distributed import Client, LocalCluster

    from tomochunk.parallel import worker_env

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit="4GiB", env=worker_env(2))
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
