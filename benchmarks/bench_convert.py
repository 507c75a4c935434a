#!/usr/bin/env python3
"""Convert a >=2 GB float32 MRC to OME-Zarr; print throughput as a ratio to `cp` and the peak RSS.

Targets (issue 2): >= 0.5x cp, peak RSS <= 1 GB.

    .venv/bin/python benchmarks/bench_convert.py [--gb 2.0] [--dir /tmp/bench_convert]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_mrc(path, gb):
    import mrcfile

    nx = ny = 1024
    nz = int(np.ceil(gb * 2**30 / (nx * ny * 4)))
    mrc = mrcfile.new_mmap(path, shape=(nz, ny, nx), mrc_mode=2, overwrite=True)
    rng = np.random.default_rng(0)
    for z in range(0, nz, 16):
        mrc.data[z:z + 16] = rng.standard_normal((min(16, nz - z), ny, nx), dtype=np.float32)
    mrc.voxel_size = 10.0
    mrc.close()
    return (nz, ny, nx)


# Peak RSS is the child's VmHWM (kB): getrusage's ru_maxrss survives fork + exec on Linux, so it
# reports this parent's high-water mark (the 2 GB written while making the MRC) instead.
CHILD = """
import sys, time, tomochunk
t = time.perf_counter()
tomochunk.convert(sys.argv[1], sys.argv[2], overwrite=True)
dt = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(dt, hwm)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=3, help="alternating cp / convert runs (medians)")
    a = ap.parse_args()
    d = a.dir or tempfile.mkdtemp(prefix="bench_convert_")
    os.makedirs(d, exist_ok=True)
    src = os.path.join(d, "big.mrc")
    if not os.path.exists(src) or os.path.getsize(src) < a.gb * 2**30:
        shape = make_mrc(src, a.gb)
        print(f"made {src}: {shape} float32")
    size = os.path.getsize(src)
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # same warm page cache for both
    dst = os.path.join(d, "big.zarr")
    t_cps, t_convs, rss = [], [], []
    for _ in range(a.repeat):  # alternate, so that writeback state affects both alike
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        subprocess.run(["cp", src, os.path.join(d, "copy.mrc")], check=True)
        subprocess.run(["sync"], check=True)
        t_cps.append(time.perf_counter() - t)
        os.remove(os.path.join(d, "copy.mrc"))
        shutil.rmtree(dst, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, src, dst], capture_output=True, text=True, check=True)
        subprocess.run(["sync"], check=True)
        t_convs.append(time.perf_counter() - t)  # includes interpreter start and imports (~0.1 s)
        rss.append(int(out.stdout.split()[-1]) / 1024)
        shutil.rmtree(dst, ignore_errors=True)
    t_cp, t_conv = float(np.median(t_cps)), float(np.median(t_convs))

    def runs(v):
        return ", ".join(f"{x:.2f}" for x in v)

    print(f"input: {size / 1e9:.2f} GB float32 MRC -> OME-Zarr, 3 levels, chunks 256^3, compression auto (raw: noise does not compress); "
          f"times include sync to disk")
    print(f"cp:      {t_cp:6.2f} s  {size / t_cp / 1e9:.2f} GB/s   (runs: {runs(t_cps)})")
    print(f"convert: {t_conv:6.2f} s  {size / t_conv / 1e9:.2f} GB/s   (runs: {runs(t_convs)})")
    print(f"ratio convert/cp throughput: {t_cp / t_conv:.2f}x  (target >= 0.5x)")
    print(f"peak RSS of convert: {max(rss):.0f} MB  (target <= 1024 MB; runs: {', '.join(f'{x:.0f}' for x in rss)})")
    shutil.rmtree(os.path.join(d, "big.zarr"), ignore_errors=True)
    if not a.dir:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
