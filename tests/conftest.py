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


@pytest.fixture
def one_line(capsys):
    """``one_line(argv, *words)``: the CLI exits 2 with one stderr line holding every word."""
    from tomochunk.cli import main

    def check(argv, *words):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        for w in words:
            assert w in err, err

    return check
