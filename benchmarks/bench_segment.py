#!/usr/bin/env python3
"""DeepFinder's ``Segment`` against ``tomochunk.segment`` with the same weights: equivalence and speed.

Targets (issue 5): patch 160 on a 200x256x256 volume, max |delta| <= 1e-3, voxels/s >= 4x
DeepFinder; achieved GFLOP/s against the raw network cost (~0.38 MFLOP per voxel), whose
ratio is the overlap overhead (target <= 1.4x).

DeepFinder runs in its own venv (``/work/venvs/df``, cryoet-deepfinder, TensorFlow 2.13); the
weights go there as a DeepFinder ``.h5`` written by ``tomochunk.save_model``. tomochunk runs on
an embedded LocalCluster (warmed up: TensorFlow imported and the model loaded once, as
DeepFinder's timing also excludes building its network), writing the OME-Zarr output.

    .venv/bin/python benchmarks/bench_segment.py [--shape 200,256,256] [--patch 160] [--classes 4]
        [--fast-patch 0] [--workers 1] [--df /work/venvs/df/bin/python]

``--blocks 1`` (the default) adds runs with ``tiling="blocks"``: one network call per Dask
block plus a halo, with blocks sized to the workers' memory (not DeepFinder's tiling, so
its max |delta| is larger; it shows the overhead the patch tiling costs). ``--fast-patch N``
adds a run with larger patches.

``--precision float32,bfloat16`` (the default) times both arithmetics in the same run:
float32 is the equivalence check; bfloat16 (``segment(..., precision="bfloat16")``, Keras
``mixed_bfloat16``: AMX/AVX512-BF16 on this CPU) is the fast path, whose own max |delta|
against DeepFinder's float32 scores is printed too.

``--repeat 2`` (the default) runs each side twice in the same processes: DeepFinder's
``Segment.launch`` twice in its one process, each of our runs twice on the same workers. The
first is cold (the first trace of each window shape, and memory the process faults in for
the first time: one block window touches ~5 GB at once, where DeepFinder's 160^3 patches
touch ~2 GB and repeat it 18 times); the last is the steady state of a batch that segments one
tomogram after another. The ratios are against DeepFinder's fastest launch. ``--prefault 16``
(the default) first touches 16 GB in a throwaway process: this VM gives freed guest memory back
to the host (virtio-balloon free page reporting), and touching such memory again costs ~2.4 s per
GB. The pages stay backed only until the guest frees them again, so this helps DeepFinder's first
launch, which starts right after it, and not our workers, started minutes later: it favours the
baseline (0: no prefault). ``--malloc
glibc`` keeps glibc's malloc defaults in our workers (``tomochunk.parallel.malloc_env``
off), ``--df-malloc tomochunk`` gives DeepFinder's process our settings: the A/B of that lever.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

DF_CHILD = r"""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from deepfinder.inference import Segment
data = np.load(sys.argv[1])
filters = [int(f) for f in sys.argv[6].split(",")]
if filters == [32, 48, 64]:
    seg = Segment(Ncl=int(sys.argv[3]), path_weights=sys.argv[2], patch_size=int(sys.argv[4]))
else:
    # DeepFinder's own Segment.launch (tiling, padding, averaging), with the same U-Net layer
    # sequence built at a smaller width: DeepFinder's my_model hard-codes (32, 48, 64)
    from tensorflow.keras import Model
    from tensorflow.keras.layers import Input, Conv3D, MaxPooling3D, UpSampling3D, concatenate
    P, (a, b, c) = int(sys.argv[4]), filters
    conv = lambda n, k=3: Conv3D(n, (k,) * 3, padding="same", activation="relu")
    inp = Input(shape=(P, P, P, 1))
    x = conv(a)(inp)
    high = conv(a)(x)
    x = MaxPooling3D((2, 2, 2), strides=None)(high)
    x = conv(b)(x)
    mid = conv(b)(x)
    x = MaxPooling3D((2, 2, 2), strides=None)(mid)
    for _ in range(4):
        x = conv(c)(x)
    x = UpSampling3D(size=(2, 2, 2))(x)
    x = conv(c, 2)(x)
    x = concatenate([x, mid])
    x = conv(b)(x)
    x = conv(b)(x)
    x = UpSampling3D(size=(2, 2, 2))(x)
    x = conv(b, 2)(x)
    x = concatenate([x, high])
    x = conv(a)(x)
    x = conv(a)(x)
    out = Conv3D(int(sys.argv[3]), (1, 1, 1), padding="same", activation="softmax")(x)
    net = Model(inp, out)
    net.load_weights(sys.argv[2])
    seg = Segment.__new__(Segment)
    seg.Ncl, seg.P, seg.pcrop, seg.poverlap, seg.net = int(sys.argv[3]), P, 25, 55, net
    seg.obs_list, seg.path_weights = [], sys.argv[2]
for _ in range(int(sys.argv[7])):  # the second launch: DeepFinder's steady state in one process
    t = time.perf_counter()
    scores = seg.launch(data)
    print("DFTIME", time.perf_counter() - t, flush=True)
np.save(sys.argv[5], np.moveaxis(scores, -1, 0))  # [z,y,x,c] -> [c,z,y,x]
"""


def bare_patch_seconds(path, precision, patch, n=3):
    """Seconds per patch of the bare network call on a worker (its cached model; no tiling, Dask or I/O)."""
    from tomochunk.nn.segment import get_model

    m = get_model(path, precision)
    x = np.random.default_rng(0).standard_normal((1, patch, patch, patch, 1)).astype(np.float32)
    m.predict_on_batch(x)
    t = time.perf_counter()
    for _ in range(n):
        m.predict_on_batch(x)
    return (time.perf_counter() - t) / n


def network_flops_per_voxel(model_builder, patch):
    """Multiply-adds x 2 of every convolution of DeepFinder's network, per voxel of the output.

    tomochunk's UpConv3D counts as the up-sampling + 2x2x2 convolution it replaces (it does
    27/64 of those multiply-adds), so the figures compare with DeepFinder's arithmetic.
    """
    import keras

    m = model_builder(patch)
    total = 0.0
    for layer in m.layers:
        if isinstance(layer, keras.layers.Conv3D):
            k = np.prod(layer.kernel_size)
            cin = layer.input.shape[-1]
            cout = layer.filters
            out_vox = np.prod(layer.output.shape[1:4])
            total += 2.0 * k * cin * cout * out_vox
    return total / patch ** 3


def synthetic(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    for _ in range(40):  # bright blobs ("particles")
        c = [rng.integers(min(10, s // 4), s - min(10, s // 4)) for s in shape]
        v[tuple(slice(max(0, x - 5), x + 5) for x in c)] += 0.5
    return v * 20 + 100


PREFAULT = r"""
import sys, time, numpy as np
t = time.perf_counter()
a = np.ones(int(float(sys.argv[1]) * 1e9) // 8)
print(f"{time.perf_counter() - t:.2f}")
"""


def prefault(gb):
    """Touch ``gb`` GB (at most what is available less 2 GB) in a subprocess that then exits. The
    guest gives those pages back to the host within seconds (free page reporting), so only the
    run that starts right after (DeepFinder's first launch) finds them backed."""
    import psutil

    gb = min(gb, psutil.virtual_memory().available / 1e9 - 2)
    if gb <= 0:
        return
    r = subprocess.run([sys.executable, "-c", PREFAULT, str(gb)], capture_output=True, text=True)
    print(f"prefault: {gb:.1f} GB touched once in {r.stdout.strip() or '?'} s (a throwaway process)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="200,256,256")
    ap.add_argument("--patch", type=int, default=160)
    ap.add_argument("--crop", type=int, default=25)
    ap.add_argument("--classes", type=int, default=13)
    ap.add_argument("--init", default="he", help="he: He-scaled random kernels, zero biases (legacy-like "
                    "activations, benchmarks/profile_block.py); keras: Keras' default initialisers")
    ap.add_argument("--filters", default="32,48,64")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--memory", default="12GB", help="memory limit of each worker (the issue's setup: 12 GB, "
                    "2 threads; 'auto': dask's share of the machine)")
    ap.add_argument("--threads", type=int, default=2, help="threads of each worker")
    ap.add_argument("--fast-patch", type=int, default=0)
    ap.add_argument("--patches", type=int, default=1, help="0: skip the tiling='patches' runs")
    ap.add_argument("--blocks", type=int, default=1, help="1: also time tiling='blocks' (0: patches only)")
    ap.add_argument("--precision", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    ap.add_argument("--df", default="/work/venvs/df/bin/python")
    ap.add_argument("--weights", default=None,
                    help="trained DeepFinder weights (.h5, e.g. bench_accuracy.py's df/net_weights_FINAL.h5) "
                         "instead of random ones; --classes is read from them")
    ap.add_argument("--volume", default=None,
                    help="the volume to segment (.h5 'dataset' or .npy, e.g. bench_accuracy.py's test.h5) "
                         "instead of the synthetic one; --shape is then its shape")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each side in the same processes: the first is cold (first traces, memory "
                         "faulted in for the first time), the last is the steady state of a worker (or a "
                         "DeepFinder process) that segments one tomogram after another")
    ap.add_argument("--malloc", default="tomochunk", choices=("tomochunk", "glibc"),
                    help="glibc: the workers keep glibc's malloc defaults (tomochunk.parallel.malloc_env off)")
    ap.add_argument("--df-malloc", default="glibc", choices=("tomochunk", "glibc"),
                    help="tomochunk: DeepFinder's process gets the workers' malloc settings too")
    ap.add_argument("--prefault", type=float, default=16,
                    help="GB of memory touched once, in a throwaway process, before either side runs (0: none). "
                         "This VM returns freed guest memory to the host (free page reporting), and touching it "
                         "again costs ~2.4 s/GB: this helps DeepFinder's first launch, right after it")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    if args.prefault > 0:
        prefault(args.prefault)
    if args.malloc == "glibc":  # dask's own setting switches tomochunk's off (malloc_env)
        import dask

        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_MAX_": 65536})

    import keras
    import zarr

    import tomochunk
    from tomochunk.nn.models import deepfinder_unet, save_model
    from tomochunk.nn.segment import preload_model, segment, window_voxels, write_segmentation

    filters = tuple(int(f) for f in args.filters.split(","))
    work = args.dir or tempfile.mkdtemp(prefix="bench_segment_")
    os.makedirs(work, exist_ok=True)
    if args.volume:   # real data for trained weights: on random noise they would all say background
        vol = np.load(args.volume) if args.volume.endswith(".npy") else np.asarray(tomochunk.open_volume(args.volume))
        vol = vol.astype(np.float32, copy=False)
        shape = vol.shape
    else:
        shape = tuple(int(s) for s in args.shape.split(","))
        vol = synthetic(shape)
    if not os.path.exists(os.path.join(work, "vol.npy")):
        np.save(os.path.join(work, "vol.npy"), vol)
    keras.utils.set_random_seed(0)
    if args.weights:
        from tomochunk.nn.models import load_model

        model = load_model(args.weights)
        args.classes = int(model.output.shape[-1])
        print(f"weights: {args.weights} ({args.classes} classes, trained)")
    else:
        model = deepfinder_unet(args.classes, filters=filters)
    if args.init == "he" and not args.weights:
        from profile_block import he_model

        model.set_weights(he_model(args.classes).get_weights()) if filters == (32, 48, 64) else None
    kpath = os.path.join(work, "net.keras")
    h5 = os.path.join(work, "net_weights.h5")
    save_model(model, kpath, legacy_h5=h5)
    fpv = network_flops_per_voxel(lambda p: deepfinder_unet(args.classes, p, filters=filters), 64)
    n_vox = int(np.prod(shape))
    print(f"volume {shape} ({n_vox / 1e6:.1f} Mvox), patch {args.patch}, crop {args.crop}, "
          f"{args.classes} classes, filters {filters}: {fpv / 1e6:.3f} MFLOP/voxel raw network cost")

    # --- DeepFinder ---
    df_out = os.path.join(work, "df_scores.npy")
    df_times = []
    tfile = df_out + ".time"
    if os.path.exists(tfile) and os.path.exists(df_out):  # reuse a finished DeepFinder run of this setup
        df_times = [float(t) for t in open(tfile).read().split()]
        print(f"DeepFinder Segment (cached): {' s, then '.join(f'{t:.1f}' for t in df_times)} s")
    elif os.path.exists(args.df):
        from tomochunk.parallel import _MALLOC_RETAIN

        env = {**os.environ, **(_MALLOC_RETAIN if args.df_malloc == "tomochunk" else {})}
        r = subprocess.run([args.df, "-c", DF_CHILD, os.path.join(work, "vol.npy"), h5, str(args.classes),
                            str(args.patch), df_out, ",".join(map(str, filters)), str(args.repeat)],
                           capture_output=True, text=True, env=env)
        df_times = [float(ln.split()[1]) for ln in r.stdout.splitlines() if ln.startswith("DFTIME")]
        if r.returncode or not df_times:
            print("DeepFinder failed:", r.stderr[-2000:])
            df_times = []
        else:
            open(tfile, "w").write(" ".join(map(str, df_times)))
            for i, t in enumerate(df_times):
                print(f"DeepFinder Segment, launch {i + 1} in one process (malloc: {args.df_malloc}): "
                      f"{t:.1f} s, {n_vox / t / 1e6:.3f} Mvox/s")
    else:
        print("no DeepFinder venv at", args.df)
    # the ratio's baseline: DeepFinder's last launch (the fastest, in its steady state) unless it is slower
    df_time = min(df_times) if df_times else None
    from tomochunk.nn._tiling import _axis_plan, _weights

    def n_patches(patch):  # DeepFinder's tiling (= ours with tiling="patches")
        core = patch - 2 * args.crop
        return int(np.prod([len(_axis_plan(n, patch, args.crop, 4, 1, _weights(core, "crop")).starts)
                            for n in shape]))

    df_flops = n_patches(args.patch) * args.patch ** 3 * fpv
    summary = []
    if df_time:
        print(f"  DeepFinder runs {n_patches(args.patch)} patches of {args.patch}^3 "
              f"({df_flops / fpv / n_vox:.2f}x the volume): {df_flops / df_time / 1e9:.1f} GFLOP/s sustained")
        for i, t in enumerate(df_times):
            summary.append((f"DeepFinder Segment, launch {i + 1}", "float32", t, df_flops, None))

    # --- tomochunk ---
    from tomochunk.parallel import client_context

    with client_context(n_workers=args.workers, threads_per_worker=args.threads,
                        memory_limit=args.memory) as client:
        precisions = args.precision.split(",")
        for prec in precisions:  # warm: TensorFlow imported and the model loaded once per worker
            client.run(preload_model, kpath, prec)
        print("dashboard", client.dashboard_link)
        runs = [("patches", args.patch, prec) for prec in precisions] if args.patches else []
        runs += [("patches", args.fast_patch, prec) for prec in precisions] if args.fast_patch else []
        runs += [("blocks", None, prec) for prec in precisions] if args.blocks else []
        runs = [(*r, i) for r in runs for i in range(1, args.repeat + 1)]
        for tiling, patch, prec, run in runs:
            store = os.path.join(work, f"ours_{tiling}_{patch}_{prec}.zarr")
            t = time.perf_counter()
            scores = segment(vol, kpath, patch_size=patch or 160, crop=args.crop, tiling=tiling, precision=prec,
                             client=client)
            write_segmentation(scores, store, dtype="float32", overwrite=True, client=client)
            dt = time.perf_counter() - t
            ours = zarr.open_array(os.path.join(store, "labels", "scores", "0"))[:]
            if tiling == "blocks":
                executed = window_voxels(scores.data.chunks[1:], args.crop) * fpv
                raw = n_vox * fpv
                blocks = [len(c) for c in scores.data.chunks[1:]]
                print(f"tomochunk tiling='blocks' {'x'.join(map(str, blocks))} blocks of up to "
                      f"{scores.attrs['segment']['block_shape']}, {prec}, run {run}: {dt:.1f} s, "
                      f"{n_vox / dt / 1e6:.3f} Mvox/s, "
                      f"{executed / dt / 1e9:.1f} GFLOP/s executed, {raw / dt / 1e9:.1f} GFLOP/s useful; "
                      f"tiling overhead {executed / raw:.2f}x (target <= 1.4x)")
                summary.append((f"tomochunk blocks, run {run}", prec, dt, executed,
                                compare(ours, df_time, df_out, dt, args.crop)))
                continue
            # executed network cost: every patch is predicted whole
            core = patch - 2 * args.crop
            n_pat = n_patches(patch)
            executed = n_pat * patch ** 3 * fpv
            raw = n_vox * fpv
            print(f"tomochunk patch {patch}, {prec}: {dt:.1f} s, {n_vox / dt / 1e6:.3f} Mvox/s, "
                  f"{executed / dt / 1e9:.1f} GFLOP/s executed, {raw / dt / 1e9:.1f} GFLOP/s useful "
                  f"(raw cost {fpv / 1e6:.3f} MFLOP/voxel); tiling overhead {executed / raw:.2f}x "
                  f"({n_pat} patches of {patch}^3: the patch tiling's own recomputation; the block "
                  f"plan adds no patch beyond it)")
            # as many workers at once as the run had compute blocks to share out
            from tomochunk.nn._tiling import _auto_block_patches, _plan_axes

            k = _auto_block_patches(patch, core - 4)
            n_blocks = np.prod([len(ax.groups) for ax in
                                _plan_axes(shape, patch, args.crop, 4, k, _weights(core, "crop"), args.workers)])
            busy = sorted(client.scheduler_info(n_workers=-1)["workers"])[:int(min(n_blocks, args.workers))]
            per = float(np.mean(list(client.run(bare_patch_seconds, kpath, prec, patch, workers=busy).values())))
            bare = n_pat * per / len(busy)
            print(f"  bare network calls for these {n_pat} patches on {len(busy)} worker(s): {bare:.1f} s ({executed / bare / 1e9:.1f} "
                  f"GFLOP/s); pipeline overhead over them (normalise, tile, blend, write) "
                  f"{dt / bare:.2f}x (target <= 1.4x)")
            summary.append((f"tomochunk patches {patch}, run {run}", prec, dt, executed,
                            compare(ours, df_time, df_out, dt, args.crop)))

    # --- one table: the same FLOP count (fpv per input voxel the network runs on) for both sides ---
    print(f"\nsummary ({shape}, {args.classes} classes, {fpv / 1e6:.3f} MFLOP per network input voxel, "
          f"UpConv3D counted at DeepFinder's cost; load average {os.getloadavg()[0]:.1f}; malloc: workers "
          f"{args.malloc}, DeepFinder {args.df_malloc}; ratios against DeepFinder's fastest launch, {df_time or 0:.1f} s)")
    print("| run | precision | s | x DeepFinder | labels agree | GFLOP/s | of DeepFinder's rate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    df_rate = df_flops / df_time if df_time else None
    for name, prec, dt, flops, agree in summary:
        ratio = f"{df_time / dt:.2f}" if df_time else "-"
        frac = f"{flops / dt / df_rate * 100:.0f}%" if df_rate else "-"
        ag = "-" if agree is None else f"{agree * 100:.3f}%"
        print(f"| {name} | {prec} | {dt:.1f} | {ratio} | {ag} | {flops / dt / 1e9:.1f} | {frac} |")


def compare(ours, df_time, df_out, dt, crop):
    """Print max |delta| and the labels agreement with DeepFinder's scores; return the agreement."""
    if not df_time:
        return None
    df = np.load(df_out).astype(np.float32)
    d = np.abs(ours - df)
    inner = d[:, crop:-crop, crop:-crop, crop:-crop].max()
    agree = float((ours.argmax(0) == df.argmax(0)).mean())
    print(f"  vs DeepFinder: max |delta| = {d.max():.2e} ({inner:.2e} beyond {crop} voxels of the faces), "
          f"speed ratio = {df_time / dt:.2f}x, labels agree on {agree * 100:.3f}% of voxels")
    return agree


if __name__ == "__main__":
    main()
