import os

from tomochunk.parallel import client_context, worker_env


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


def test_worker_env_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    assert worker_env(2, cores=8) == {"TF_NUM_INTEROP_THREADS": "1"}
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    assert worker_env(16, cores=8)["TF_NUM_INTRAOP_THREADS"] == "1"  # never 0
