#!/usr/bin/env python3
"""Overhead of ``tomochunk.cluster`` on a small in-memory map (issue 24).

DeepFinder's recommended input: a 2x-binned 100x256x256 sphere map with about 2500 objects,
clustered with ``radius=5``. The map fits in one block, so the time is overhead plus the
clustering itself. Prints the median of ``--repeat`` single-process runs (``time.perf_counter``,
and the process CPU time, which a loaded machine disturbs less), for ``cluster``, ``label`` and
``pick`` on the same map.

    PYTHONPATH=. .venv/bin/python benchmarks/profile_cluster_small.py [--repeat 3] [--profile]
"""

import argparse
import cProfile
import pstats
import statistics
import time

import dask
import numpy as np

import tomochunk
from tomochunk.ops.targets import spheres
from tomochunk.phantom import phantom_tomogram


def sphere_map(shape=(100, 256, 256), n=2500, radius=5, seed=0, touching=False):
    """Non-overlapping spheres of 2 classes (centres >= 2 radius + 1 apart, the phantom's placement),
    or with ``touching`` spheres placed for radius - 1, so that many merge and mean shift splits them."""
    size = radius - 1 if touching else radius
    _, obj, _ = phantom_tomogram(shape, classes=[("sphere", size)], n_objects=n, snr=None,
                                 missing_wedge=None, background=0, membranes=0, min_gap=0, seed=seed,
                                 chunks=shape)
    obj["class_label"] = np.random.default_rng(seed).integers(1, 3, len(obj))
    return spheres(obj, shape, radius, chunks=shape).compute(), obj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--touching", action="store_true", help="spheres that touch: mean shift does the work")
    ap.add_argument("--scheduler", default="synchronous", help="dask scheduler: synchronous or threads")
    a = ap.parse_args()
    lm, truth = sphere_map(touching=a.touching)
    score = (lm > 0).astype(np.float32)
    print(f"map {lm.shape}, {len(truth)} objects, {int((lm > 0).sum())} foreground voxels, "
          f"scheduler {a.scheduler}")
    runs = {"cluster(radius=5)": lambda: len(tomochunk.cluster(lm, radius=5)),
            "label": lambda: tomochunk.label(lm > 0)[1],
            "pick(min_spacing=5)": lambda: len(tomochunk.pick(score, min_spacing=5)),
            "pick(centroid)": lambda: len(tomochunk.pick(score, mode="centroid"))}
    with dask.config.set(scheduler=a.scheduler):
        for name, fn in runs.items():
            fn()  # warm up imports and caches
            times, cpu = [], []
            for _ in range(a.repeat):
                t, c = time.perf_counter(), time.process_time()
                n = fn()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            print(f"{name}: {n} objects, median {statistics.median(times):.3f} s "
                  f"of {[round(x, 3) for x in times]} (CPU median {statistics.median(cpu):.3f} s)")
        if a.profile:
            pr = cProfile.Profile()
            pr.enable()
            tomochunk.cluster(lm, radius=5)
            pr.disable()
            pstats.Stats(pr).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
