"""Where one ``tiling="blocks"`` segmentation spends its time, stage by stage (issue 24).

The legacy-like DeepFinder U-Net (13 classes, filters 32/48/64, random He-scaled weights)
segments a synthetic volume stored in Zarr, first through the real pipeline
(``segment(..., tiling="blocks")`` + ``write_segmentation`` on a 1-worker LocalCluster, the
end-to-end time), then block by block with each stage timed on its own, in the same process
and with the same block plan:

* read: the block and its halo from the Zarr store;
* normalisation: the global mean/std pass (run ONCE per volume by ``segment``, at graph
  construction, never per block) and applying it to the block;
* pad/halo: the lead zeros and the multiple-of-4 padding of ``predict_window``;
* network: one ``predict_on_batch`` call (the graph), and each layer run eagerly on its own
  inputs (Keras layer-by-layer: the shares of the graph time);
* crop: keeping the core and moving the class axis first;
* write: the float16 cast, the label levels and the Zarr writes, by ``write_segmentation``'s own
  region writer (scores and labels from two threads), into its layout;
* Dask overhead: end-to-end minus the sum of the stages.

The stages run under the workers' glibc settings (the script re-executes itself with
``tomochunk.parallel.malloc_env``), so both sides allocate alike.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/profile_block.py [--shape 200,256,256]
        [--precision float32] [--block-shape 0] [--layers 1] [--serial 1] [--threads 2]
"""

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def he_model(n_classes, seed=0):
    """DeepFinder's U-Net with He-normal kernels and zero biases (legacy-like activations)."""
    import keras

    from tomochunk.nn.models import deepfinder_unet

    keras.utils.set_random_seed(seed)
    model = deepfinder_unet(n_classes)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim == 5:
            fan_in = np.prod(w.shape[:4])
            weights.append((rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        else:
            weights.append(np.zeros_like(w))
    model.set_weights(weights)
    return model


def layer_flops(layer, out_shape):
    """FLOPs of a convolution layer at its own cost (UpConv3D: 27 taps per 8 output voxels)."""
    import keras

    if not isinstance(layer, keras.layers.Conv3D):
        return 0.0
    cin = layer.kernel.shape[3]
    taps = np.prod(layer.kernel_size)
    if layer.__class__.__name__ == "UpConv3D":
        taps = np.prod([3 if u == 2 else 2 for u in layer.up]) / np.prod(layer.up)
    return 2.0 * taps * cin * layer.filters * np.prod(out_shape[:3])


def layer_times(model, x, reps=2):
    """Seconds of each layer run eagerly on its own inputs (same weights, same input; the last of
    ``reps`` passes, so oneDNN's primitive creation is not counted), with its FLOPs."""
    for _ in range(reps):
        out = _layer_pass(model, x)
    return out


def _layer_pass(model, x):
    values = {id(model.inputs[0]): x}
    out = []
    for layer in model.layers[1:]:
        ins = layer.input if isinstance(layer.input, list) else [layer.input]
        args = [values[id(t)] for t in ins]
        t = time.perf_counter()
        y = layer(args if len(args) > 1 else args[0])
        y = np.asarray(y)  # eager CPU ops are synchronous; this also forces the copy
        out.append((f"{layer.name} ({layer.__class__.__name__}) -> {tuple(y.shape[1:])}",
                    time.perf_counter() - t, layer_flops(layer, y.shape[1:])))
        values[id(layer.output)] = y
    return out


def set_serial(value):
    from tomochunk.nn import _model

    _model.SERIAL = value


def _with_worker_malloc():
    """Re-run this script under the workers' glibc settings (``tomochunk.parallel.malloc_env``),
    so the stages timed in this process allocate as a worker's task does, not with glibc's defaults."""
    import sys

    from tomochunk.parallel import malloc_env

    env = malloc_env()
    if env and any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **env})


def main():
    _with_worker_malloc()
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="200,256,256")
    ap.add_argument("--classes", type=int, default=13)
    ap.add_argument("--crop", type=int, default=25)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--block-shape", type=int, default=0, help="0: the memory-sized default plan")
    ap.add_argument("--memory", type=float, default=12e9, help="worker memory limit (bytes)")
    ap.add_argument("--layers", type=int, default=1, help="1: also time each layer eagerly")
    ap.add_argument("--serial", type=int, default=1, help="0: let a worker's threads run network calls "
                    "concurrently (before tomochunk.nn._model.SERIAL)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the one worker")
    ap.add_argument("--write-chunks", type=int, default=256, help="storage chunk side of write_segmentation")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()

    import zarr

    from tomochunk.nn import _cache
    from tomochunk.nn._blocks_plan import POOL, _classes_first, _halo, block_chunks, largest_window, window_voxels
    from tomochunk.nn._memory import block_memory, slab_voxels
    from tomochunk.nn._split import split_of
    from tomochunk.nn.models import save_model
    from tomochunk.nn.segment import preload_model, segment, write_segmentation
    from tomochunk.workflows.segment import _write_block
    from tomochunk.ops.normalize import global_stats
    from tomochunk.parallel import client_context
    from tomochunk._blocks import chunk_starts

    shape = tuple(int(s) for s in args.shape.split(","))
    work = args.dir or tempfile.mkdtemp(prefix="profile_block_")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    vol = (rng.standard_normal(shape, dtype=np.float32) * 20 + 100).astype(np.float32)
    src = os.path.join(work, "vol.zarr")
    z = zarr.open_array(src, mode="w", shape=shape, chunks=(64, 64, 64), dtype="float32")
    z[:] = vol
    model = he_model(args.classes)
    kpath = os.path.join(work, "net.keras")
    save_model(model, kpath)
    prec = args.precision
    mem = {"w": {"memory_limit": args.memory}}
    bs = args.block_shape or None
    planned, held, per_slab = block_memory(model, prec)
    chunks = block_chunks(shape, args.crop, bs, planned, mem)
    slab = slab_voxels(largest_window(chunks, args.crop), held, per_slab, mem)
    n_vox = int(np.prod(shape))
    print(f"volume {shape} ({n_vox / 1e6:.1f} Mvox) in Zarr, {args.classes} classes, {prec}, "
          f"blocks {[len(c) for c in chunks]} of up to {[max(c) for c in chunks]}, "
          f"network on {window_voxels(chunks, args.crop) / n_vox:.2f}x the volume, slabs of {slab} voxels "
          f"(0: whole calls); load {os.getloadavg()[0]:.1f}")

    # --- end to end: the real pipeline on a 1-worker LocalCluster (warm: model loaded) ---
    import dask.array as da

    out = os.path.join(work, "out.zarr")
    with client_context(n_workers=1, threads_per_worker=args.threads, memory_limit=int(args.memory)) as client:
        client.run(preload_model, kpath, prec)
        client.run(set_serial, bool(args.serial))
        for rep in range(2):  # the first run also traces the graph for these window shapes
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            scores = segment(da.from_zarr(src), kpath, tiling="blocks", crop=args.crop, precision=prec,
                             block_shape=bs, client=client)
            write_segmentation(scores, out, dtype="float16", chunks=args.write_chunks, client=client)
            e2e = time.perf_counter() - t
            print(f"end to end (run {rep + 1}): {e2e:.2f} s")

    # --- the same blocks, stage by stage, in this process ---
    net = _cache.keras_model(kpath, prec)
    halo, lead = _halo(args.crop), args.crop % POOL
    st = {k: 0.0 for k in ("read", "norm_stats", "norm_apply", "pad", "network", "crop", "write")}
    arr = zarr.open_array(src, mode="r")
    t = time.perf_counter()
    mean, std = global_stats(da.from_zarr(src))
    st["norm_stats"] = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    g = zarr.open_group(out, mode="w")
    wc = args.write_chunks  # write_segmentation's layout: one class per scores chunk, 3 label levels
    g.create_array("scores/0", shape=(args.classes,) + shape, chunks=(1, wc, wc, wc), dtype="float16")
    for k in range(3):
        g.create_array(f"classes/{k}", shape=tuple(-(-n // 2 ** k) for n in shape),
                       chunks=(max(1, wc >> k),) * 3, dtype="uint8")
    starts = chunk_starts(chunks)
    nb = [len(c) for c in chunks]
    from itertools import product

    first = True
    for ids in product(*(range(n) for n in nb)):
        lo = [starts[a][i] for a, i in enumerate(ids)]
        hi = [lo[a] + chunks[a][i] for a, i in enumerate(ids)]
        inner = [(ids[a] > 0, ids[a] < nb[a] - 1) for a in range(3)]
        rlo = [lo[a] - (halo if inner[a][0] else 0) for a in range(3)]
        rhi = [hi[a] + (halo if inner[a][1] else 0) for a in range(3)]
        t0 = time.perf_counter()
        block = arr[tuple(slice(a, b) for a, b in zip(rlo, rhi))]
        t1 = time.perf_counter()
        x = (block - np.float32(mean)) / np.float32(std)
        x = x.astype(np.float32, copy=False)
        t2 = time.perf_counter()
        front = [0 if lo_ else lead for lo_, _ in inner]
        pad = [(f, (-(f + n)) % POOL) for f, n in zip(front, x.shape)]
        x = np.pad(x, pad)
        t3p = time.perf_counter()
        core = tuple(slice(f + (halo if lo_ else 0), f + n - (halo if hi_ else 0))
                     for (lo_, hi_), n, f in zip(inner, block.shape, front))
        split = split_of(net) if slab else None
        if first:  # trace outside the timing, as the e2e warm-up did
            if split is not None:
                split.predict_core(x, core, slab)
            else:
                net.predict_on_batch(x[None, ..., None])
        t3 = time.perf_counter()
        if split is not None:  # slabs: the core comes class-first from the network stage
            sc = split.predict_core(x, core, slab)
            t4 = t5 = time.perf_counter()
        else:
            y = np.asarray(net.predict_on_batch(x[None, ..., None]), np.float32)[0]
            t4 = time.perf_counter()
            sc = _classes_first(y[core])
            t5 = time.perf_counter()
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        _write_block(sc, out, region, 3, np.dtype("float16"), ".".join(map(str, ids)))
        t7 = time.perf_counter()
        for k, (a, b) in zip(("read", "norm_apply", "pad", "network", "crop", "write"),
                             ((t0, t1), (t1, t2), (t2, t3p), (t3, t4), (t4, t5), (t5, t7))):
            st[k] += b - a
        if first and args.layers:
            lt = layer_times(net, x[None, ..., None])
            first_net = t4 - t3
        first = False
    total = sum(st.values())
    names = {"read": "read (Zarr, block + halo)", "norm_stats": "normalisation: global mean/std (once per volume)",
             "norm_apply": "normalisation: apply to the block", "pad": "padding (lead zeros, multiple of 4)",
             "network": "network (predict_on_batch, all blocks)", "crop": "crop halo + class axis first",
             "write": "float16 cast + label levels + Zarr write (write_segmentation's region writer)"}
    rows = [(names[k], v) for k, v in st.items()]
    rows.append(("Dask/graph overhead (end to end - stages)", e2e - total))
    print(f"\n| stage | seconds | share of end to end ({e2e:.2f} s) |\n|---|---:|---:|")
    for name, v in rows:
        print(f"| {name} | {v:.3f} | {v / e2e * 100:.1f}% |")
    if args.layers:
        s = sum(v for _, v, _ in lt)
        fl = sum(f for _, _, f in lt)
        print(f"\nlayers of the first block, eager (sum {s:.2f} s, {fl / s / 1e9:.0f} GFLOP/s; the graph call "
              f"took {first_net:.2f} s, {fl / first_net / 1e9:.0f} GFLOP/s at the layers' own cost):")
        print("| layer | eager s | share | GFLOP/s |\n|---|---:|---:|---:|")
        for name, v, f in lt:
            print(f"| {name} | {v:.3f} | {v / s * 100:.1f}% | {f / v / 1e9:.0f} |")


if __name__ == "__main__":
    main()
