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


@pytest.fixture(scope="session")
def sphere_phantom():
    """``sphere_phantom(seed, shape, n)``: ``(vol, lab, objs)``, two classes of spheres (radii 2, 4) in noise."""
    import numpy as np
    import pandas as pd

    from tomochunk.targets import spheres

    def make(seed, shape, n):
        rng = np.random.default_rng(seed)
        objs = pd.DataFrame({"class_label": rng.integers(1, 3, n), "x": rng.uniform(4, shape[2] - 4, n),
                             "y": rng.uniform(4, shape[1] - 4, n), "z": rng.uniform(4, shape[0] - 4, n)})
        lab = spheres(objs, shape, {1: 2, 2: 4}, chunks=16).compute()
        vol = (lab > 0).astype(np.float32) + rng.normal(0, 0.5, shape).astype(np.float32)
        return vol, lab, objs

    return make
