#!/usr/bin/env python3
"""Fault tolerance of segmentation: a killed worker, and an interrupted then rerun CLI.

1. Undisturbed run (embedded LocalCluster, 2 workers) -> reference store.
2. Same run, one worker process killed (SIGKILL) mid-run; the nanny restarts it and Dask
   recomputes the lost tasks -> the output must be identical to the reference.
3. ``tomochunk segment`` killed (SIGKILL, whole process group) mid-run -> the store must not
   be marked complete; the rerun resumes (only missing regions) -> identical output.

    .venv/bin/python benchmarks/fault_segment.py [--shape 64,160,160] [--dir /tmp/fault_segment]
        [--tiling patches|blocks]

``--tiling blocks`` runs the same checks with ``segment(..., tiling="blocks")`` (blocks of 32³).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

PATCH, CROP, BLOCK = 32, 6, 32


def same(a_store, b_store):
    import zarr

    for name in ("scores/0", "classes/0", "classes/1", "classes/2"):
        a = zarr.open_array(os.path.join(a_store, "labels", name))[:]
        b = zarr.open_array(os.path.join(b_store, "labels", name))[:]
        if not np.array_equal(a, b):
            return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="64,160,160")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--cli-only", action="store_true", help="only part 3")
    ap.add_argument("--tiling", choices=("patches", "blocks"), default="patches")
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    work = args.dir or tempfile.mkdtemp(prefix="fault_segment_")
    if not args.cli_only:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    for d in ("cli", "cli_ref"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)

    import keras
    import mrcfile

    from tomochunk.io.omezarr import is_complete
    from tomochunk.nn.models import deepfinder_unet, save_model
    from tomochunk.nn.segment import PROGRESS_DIR, preload_model, segment, write_segmentation
    from tomochunk.parallel import client_context

    keras.utils.set_random_seed(0)
    kpath = os.path.join(work, "net.keras")
    save_model(deepfinder_unet(3, filters=(4, 6, 8)), kpath)
    vol = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    mrc = os.path.join(work, "tomo.mrc")
    with mrcfile.new(mrc, overwrite=True) as f:
        f.set_data(vol)
        f.voxel_size = 10.0

    def run(store, kill_after=None, client=None):
        scores = segment(vol, kpath, patch_size=PATCH, crop=CROP, block_patches=2, client=client,
                         tiling=args.tiling, block_shape=BLOCK)
        if kill_after:
            def kill():
                time.sleep(kill_after)
                pid = list(client.run(os.getpid).values())[0]
                print(f"  killing worker process {pid} after {kill_after} s")
                os.kill(pid, signal.SIGKILL)
            threading.Thread(target=kill, daemon=True).start()
        t = time.perf_counter()
        write_segmentation(scores, store, chunks=32, client=client)
        return time.perf_counter() - t

    if not args.cli_only:
        with client_context(n_workers=2) as client:
            client.run(preload_model, kpath)
            ref = os.path.join(work, "ref.zarr")
            dt = run(ref, client=client)
            print(f"1. undisturbed run: {dt:.1f} s")
            killed = os.path.join(work, "killed.zarr")
            dt2 = run(killed, kill_after=max(1.0, dt / 3), client=client)
            print(f"2. run with a worker killed at {max(1.0, dt / 3):.1f} s: {dt2:.1f} s; "
                  f"complete: {is_complete(os.path.join(killed, 'labels', 'scores'))}; "
                  f"identical to the undisturbed run: {same(ref, killed)}")

    def cli(outdir):
        return [sys.executable, "-m", "tomochunk.cli", "segment", mrc, "-m", kpath, "-o", outdir, "--patch",
                str(PATCH), "--crop", str(CROP), "--chunks", "32", "--workers", "2", "--tiling", args.tiling,
                "--block", str(BLOCK)]

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path[1:]))
    # the CLI reads the converted store, whose recorded statistics normalise: compare CLI with CLI
    subprocess.run(cli(os.path.join(work, "cli_ref")), env=env, capture_output=True, check=True)
    cli_ref = os.path.join(work, "cli_ref", "tomo.zarr")
    out = os.path.join(work, "cli")
    cmd = cli(out)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    prog = os.path.join(out, "tomo.zarr", "labels", PROGRESS_DIR)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 600:  # kill once a few regions are written
        if os.path.isdir(prog) and len([p for p in os.listdir(prog) if not p.endswith(".tmp")]) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    n_done = len(os.listdir(prog)) if os.path.isdir(prog) else 0
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = os.path.join(out, "tomo.zarr")
    marked = is_complete(os.path.join(store, "labels", "scores")) if os.path.exists(
        os.path.join(store, "labels", "scores")) else False
    print(f"3. CLI killed with {n_done} regions written; store marked complete: {marked}")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(f"   rerun: exit {r.returncode}; complete: {is_complete(os.path.join(store, 'labels', 'scores'))}; "
          f"identical to an undisturbed CLI run: {same(cli_ref, store)}")


if __name__ == "__main__":
    main()
