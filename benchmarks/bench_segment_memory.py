#!/usr/bin/env python3
"""Segment a >= 3 GB float32 Zarr volume with a small U-Net; print the peak RSS summed over
the scheduler and worker processes (sampled with psutil every 0.2 s).

Target (issue 5): total peak RSS <= 2 GB.

The scheduler and the worker run as separate processes (``dask scheduler`` / ``dask worker``),
so that their memory is measured apart from this client process, which is reported too.

    .venv/bin/python benchmarks/bench_segment_memory.py [--gb 3.2] [--workers 1] [--dir /tmp/bench_segmem]
        [--kill-after 0] [--tiling patches|blocks]

``--kill-after S`` kills the worker process S seconds into the run (its nanny restarts it);
the output is then compared with an undisturbed run of the same volume (``--reference DIR``).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def make_volume(path, gb):
    import dask.array as da

    from tomochunk.io.volume import write_volume

    ny = nx = 1024
    nz = int(np.ceil(gb * 2**30 / (ny * nx * 4)))
    rng = da.random.default_rng(0)
    vol = rng.standard_normal((nz, ny, nx), chunks=(128, 256, 256), dtype=np.float32)
    write_volume(vol, path, voxel_size=10.0, levels=1, chunks=256)
    return (nz, ny, nx)


class RSSMonitor:
    """Peak of the summed RSS of process trees, sampled in a thread."""

    def __init__(self, pids, interval=0.2):
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.interval, self.peak, self.peak_client = interval, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _tree(self):
        out = []
        for p in self.procs:
            try:
                out.append(p)
                out.extend(p.children(recursive=True))
            except Exception:
                pass
        return out

    def _run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in self._tree():
                try:
                    total += p.memory_info().rss
                except Exception:
                    pass
            self.peak = max(self.peak, total)
            self.peak_client = max(self.peak_client, me.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=3.2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--crop", type=int, default=8)
    ap.add_argument("--filters", default="2,3,4")
    ap.add_argument("--memory-limit", default="1.7GB",
                    help="worker limit: TensorFlow alone takes ~0.7 GB RSS and one block ~0.5 GB more; "
                         "below ~1.5 GB the worker pauses at 80%% and never resumes")
    ap.add_argument("--tiling", choices=("patches", "blocks"), default="patches",
                    help="blocks: segment(..., tiling='blocks'), blocks sized to the worker's memory limit")
    ap.add_argument("--kill-after", type=float, default=0)
    ap.add_argument("--reference", default=None, help="store of an undisturbed run to compare with")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import keras

    from tomochunk.nn.models import deepfinder_unet, save_model
    from tomochunk.nn.segment import segment, write_segmentation

    work = args.dir or tempfile.mkdtemp(prefix="bench_segmem_")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "vol.zarr")
    if not os.path.exists(os.path.join(src, ".zattrs")):
        t = time.perf_counter()
        shape = make_volume(src, args.gb)
        print(f"wrote {src} {shape} float32 ({np.prod(shape) * 4 / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    keras.utils.set_random_seed(0)
    model = deepfinder_unet(3, filters=tuple(int(f) for f in args.filters.split(",")))
    kpath = os.path.join(work, "small.keras")
    save_model(model, kpath)

    sched_file = os.path.join(work, "scheduler.json")
    if os.path.exists(sched_file):
        os.remove(sched_file)
    py = sys.executable
    sched = subprocess.Popen([py, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", sched_file,
                              "--port", "0", "--dashboard-address", ":0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(sched_file):
        time.sleep(0.2)
    worker = subprocess.Popen([py, "-m", "distributed.cli.dask_worker", "--scheduler-file", sched_file,
                               "--nworkers", str(args.workers), "--nthreads", "1",
                               "--memory-limit", args.memory_limit],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from distributed import Client

    client = Client(scheduler_file=sched_file)
    client.wait_for_workers(args.workers)
    out = os.path.join(work, "out.zarr")
    shutil.rmtree(out, ignore_errors=True)
    from tomochunk.io.volume import open_volume

    vol = open_volume(src)
    print(f"volume {dict(zip(vol.dims, vol.shape))}, {vol.nbytes / 2**30:.2f} GiB float32; "
          f"network filters {args.filters}, patch {args.patch}, crop {args.crop}; dashboard {client.dashboard_link}")
    killer = None
    if args.kill_after:
        def kill():
            time.sleep(args.kill_after)
            pids = list(client.run(os.getpid).values())
            import signal

            print(f"killing worker process {pids[0]} at {args.kill_after:.0f} s")
            os.kill(pids[0], signal.SIGKILL)
        killer = threading.Thread(target=kill, daemon=True)
    t = time.perf_counter()
    with RSSMonitor([sched.pid, worker.pid]) as mon:
        if killer:
            killer.start()
        scores = segment(vol, kpath, patch_size=args.patch, crop=args.crop, batch_size=1, block_patches=2,
                         client=client, tiling=args.tiling)
        if args.tiling == "blocks":
            print(f"blocks {[len(c) for c in scores.data.chunks[1:]]} of up to {scores.attrs['segment']['block_shape']}")
        write_segmentation(scores, out, chunks=128, client=client)
    dt = time.perf_counter() - t
    n = int(np.prod(vol.shape))
    print(f"segmented {n / 1e6:.0f} Mvox in {dt:.0f} s ({n / dt / 1e6:.2f} Mvox/s)")
    print(f"peak RSS scheduler + workers (+ nannies): {mon.peak / 2**30:.2f} GiB (target <= 2 GB = 1.86 GiB); "
          f"client process: {mon.peak_client / 2**30:.2f} GiB")
    if args.reference:
        import zarr

        same = True
        for name in ("scores/0", "classes/0", "classes/1", "classes/2"):
            a = zarr.open_array(os.path.join(out, "labels", name))
            b = zarr.open_array(os.path.join(args.reference, "labels", name))
            for z in range(0, a.shape[-3], 128):
                sl = (Ellipsis, slice(z, z + 128), slice(None), slice(None))
                same &= bool(np.array_equal(a[sl], b[sl]))
        print(f"output identical to the undisturbed run: {same}")
    client.close()
    worker.terminate()
    sched.terminate()
    worker.wait(30)
    sched.wait(30)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
