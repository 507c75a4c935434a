#!/usr/bin/env python3
"""Phantom generation speed, and a large phantom written straight to OME-Zarr with bounded memory.

1. Eager default-size tomogram (128x256x256) and movie (300x256x256): wall and CPU seconds.
2. A large chunked phantom (default 512x1440x1440 float32 = 4.0 GiB, plus its uint8
   labels) written with ``tomochunk.write_volume`` in a child process: throughput
   as a ratio to the eager throughput, and peak RSS as a ratio to the volume size.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_phantom.py [--shape 512,1440,1440] [--dir /tmp/bench_phantom]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
import tomochunk
from tomochunk.phantom import phantom_tomogram
shape = tuple(json.loads(sys.argv[1])); out = sys.argv[2]
t = time.perf_counter(); c = time.process_time()
vol, obj, lab = phantom_tomogram(shape, chunks=256, seed=0)
t_plan = time.perf_counter() - t
tomochunk.write_volume(vol, out + "/tomo.zarr", voxel_size=10.0, chunks=256, overwrite=True)
t_vol = time.perf_counter() - t
tomochunk.write_volume(lab, out + "/labels.zarr", voxel_size=10.0, chunks=256, overwrite=True)
dt = time.perf_counter() - t
print(json.dumps({"objects": len(obj), "plan_s": t_plan, "volume_s": t_vol, "total_s": dt,
                  "cpu_s": time.process_time() - c,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="512,1440,1440")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()

    from tomochunk.phantom import phantom_movie, phantom_tomogram

    phantom_tomogram((16, 16, 16))  # imports
    t, c = time.perf_counter(), time.process_time()
    vol, obj, lab = phantom_tomogram()
    eager_s, eager_cpu = time.perf_counter() - t, time.process_time() - c
    eager_rate = vol.size / eager_s / 1e6
    print(f"eager tomogram 128x256x256, {len(obj)} objects: {eager_s:.2f} s wall, {eager_cpu:.2f} s CPU "
          f"({eager_rate:.1f} Mvox/s)")
    t, c = time.perf_counter(), time.process_time()
    movie, ev, _ = phantom_movie()
    print(f"eager movie 300x256x256, {len(ev)} objects: {time.perf_counter() - t:.2f} s wall, "
          f"{time.process_time() - c:.2f} s CPU")
    if args.skip_large:
        return

    shape = [int(v) for v in args.shape.split(",")]
    nvox = shape[0] * shape[1] * shape[2]
    out = Path(args.dir or tempfile.mkdtemp(prefix="bench_phantom_"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shape), str(out)], check=True,
                             capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        gib = nvox * 4 / 2**30
        rss_gib = r["rss_kb"] / 2**20
        rate = nvox / r["volume_s"] / 1e6
        disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**30
        print(f"chunked {'x'.join(map(str, shape))} ({gib:.2f} GiB float32 + labels), {r['objects']} objects: "
              f"plan {r['plan_s']:.1f} s, volume written in {r['volume_s']:.1f} s ({rate:.1f} Mvox/s, "
              f"{rate / eager_rate:.2f}x eager), total {r['total_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
              f"{disk:.2f} GiB on disk")
        cpu_rate = 2 * nvox / r["cpu_s"] / 1e6  # volume and labels both rendered
        print(f"CPU throughput {cpu_rate:.2f} Mvox/s (volume + labels) vs eager "
              f"{vol.size / eager_cpu / 1e6:.2f} Mvox/s: {cpu_rate / (vol.size / eager_cpu / 1e6):.2f}x")
        print(f"peak RSS {rss_gib:.2f} GiB = {rss_gib / gib:.3f}x the volume size")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
