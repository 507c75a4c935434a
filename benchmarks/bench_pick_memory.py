#!/usr/bin/env python3
"""A score map larger than a worker's memory limit is picked without error.

Target (issue 6). A float32 score map of ``--gb`` GB (smooth blobs) is written to Zarr by the
workers, then ``tomochunk.pick`` runs on it (peaks, with ``min_size`` so the distributed
``label`` runs too, then NMS) on a LocalCluster whose single worker has ``--memory`` of memory,
less than the map. Prints the map size / worker memory ratio, the picks, the time and the
worker's peak memory as reported by distributed.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pick_memory.py [--gb 1.0] [--memory 600MB]
"""

import argparse
import tempfile
import time

import numpy as np


def _blobs(block, block_info=None):
    from scipy import ndimage as ndi

    loc = block_info[None]["chunk-location"]
    rng = np.random.default_rng(hash(loc) % 2**32)
    s = ndi.gaussian_filter(rng.random(block.shape, dtype=np.float32), 3)
    s -= s.mean()
    s /= s.std() + 1e-9
    return (1 / (1 + np.exp(-2 * (s - 2.2)))).astype(np.float32)  # a few % above 0.5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--memory", default="600MB")
    ap.add_argument("--chunks", default="64,128,128")
    a = ap.parse_args()
    chunks = tuple(int(v) for v in a.chunks.split(","))

    import dask.array as da
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from tomochunk.ops.pick import pick

    nvox = a.gb * 1e9 / 4
    ny = nx = 1024
    nz = int(np.ceil(nvox / (ny * nx) / chunks[0]) * chunks[0])
    shape = (nz, ny, nx)
    mem = parse_bytes(a.memory)
    with tempfile.TemporaryDirectory() as d, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=a.memory,
                         dashboard_address=None) as lc, Client(lc) as client:
        t = time.perf_counter()
        src = da.zeros(shape, np.float32, chunks=chunks).map_blocks(_blobs, dtype=np.float32)
        src.to_zarr(f"{d}/scores.zarr")
        nbytes = np.prod(shape) * 4
        print(f"score map {shape} float32 = {nbytes / 1e9:.2f} GB written in {time.perf_counter() - t:.1f} s; "
              f"worker memory limit {mem / 1e9:.2f} GB; map / worker memory = {nbytes / mem:.1f}x")
        s = da.from_zarr(f"{d}/scores.zarr")
        for mode, kw in (("peaks", dict(min_size=20)), ("nms", dict(top_k=1000))):
            t = time.perf_counter()
            df = pick(s, threshold=0.5, min_spacing=4, mode=mode, **kw)
            dt = time.perf_counter() - t
            info = client.run(lambda dask_worker: dask_worker.monitor.range_query(start=0)["memory"])
            peak = max(max(v) for v in info.values())
            print(f"pick(mode={mode!r}, {kw}): {len(df)} picks in {dt:.1f} s "
                  f"({np.prod(shape) / dt / 1e6:.1f} Mvox/s), no error; worker peak RSS {peak / 1e9:.2f} GB "
                  f"({peak / mem:.2f} of its limit)")


if __name__ == "__main__":
    main()
