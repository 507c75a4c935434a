#!/usr/bin/env python
"""tomochunk on an accelerator: segmentation throughput, accuracy against TensorFlow, memory, where time goes.

Run on the GPU machine (see README.md here), under the Keras backend installed there (JAX,
else PyTorch; TensorFlow cannot travel)::

    python benchmarks/device/gpu_check.py --out gpu_check.json              # ~1 GVoxel, < 8 min
    python benchmarks/device/gpu_check.py --cpu --size 32 --out cpu.json    # anywhere, seconds

It writes one JSON file with:

- ``runs``: ``segment`` + ``write_segmentation`` voxels/s in float32 and bfloat16, for both
  tilings (``blocks`` and DeepFinder's ``patches``), on a synthetic ``size``³ float32 volume
  streamed from an OME-Zarr store on disk (1024³ = 1.07 GVoxel by default);
- ``crop``: the scores of a crop of that volume on the device, their max |Δ| against a
  reference computed with TensorFlow on the CPU (``--reference ref.npz``, made on a host with
  TensorFlow by ``--make-reference ref.npz``; computed here in a subprocess when TensorFlow is
  installed), and the device/TensorFlow-host throughput ratio on that crop;
- ``blocks``: the time per block split into reading (Zarr), the network and writing (Zarr);
- ``gpu_memory``: peak bytes on the device (JAX ``memory_stats``, ``torch.cuda``, or nvidia-smi).

The network is the DeepFinder U-Net with weights drawn from NumPy's generator (``--seed``),
so every backend gets the very same weights. The synthetic volume is already standardised,
so ``normalize=None`` throughout (no extra pass over the volume).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="JSON results")
    ap.add_argument("--size", type=int, default=None, help="volume side (default 1024; 32 with --cpu)")
    ap.add_argument("--cpu", action="store_true", help="no accelerator: CPU, small model and volume")
    ap.add_argument("--backend", choices=("auto", "jax", "torch", "tensorflow"), default="auto",
                    help="Keras backend (auto: jax, else torch, else tensorflow)")
    ap.add_argument("--data", default=None, help="folder of the synthetic store (default: a temp folder)")
    ap.add_argument("--filters", default=None, help="U-Net filters a,b,c (default 32,48,64; 8,12,16 with --cpu)")
    ap.add_argument("--classes", type=int, default=13, help="classes including background (DeepFinder: 13)")
    ap.add_argument("--patch", type=int, default=None, help="patches tiling: patch side (160; 48 with --cpu)")
    ap.add_argument("--crop", type=int, default=None, help="voxels cropped per patch side (25; 8 with --cpu)")
    ap.add_argument("--block", type=int, default=None, help="blocks tiling: block side (192; 32 with --cpu)")
    ap.add_argument("--budget", type=float, default=420, help="seconds; later runs are skipped past it")
    ap.add_argument("--reference", default=None, help="TensorFlow-CPU reference .npz (from --make-reference)")
    ap.add_argument("--make-reference", default=None, metavar="NPZ",
                    help="compute the crop's reference scores with this process's backend and exit")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    small = a.cpu
    a.size = a.size or (32 if small else 1024)
    a.filters = tuple(int(v) for v in a.filters.split(",")) if a.filters else ((8, 12, 16) if small else (32, 48, 64))
    a.patch = a.patch or (48 if small else 160)
    a.crop = a.crop if a.crop is not None else (8 if small else 25)
    a.block = a.block or (32 if small else 192)
    return a


def _backend(choice: str, cpu: bool) -> str:
    if cpu:  # before any backend is imported: hide accelerators
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if "KERAS_BACKEND" in os.environ and choice == "auto":
        return os.environ["KERAS_BACKEND"]
    if choice == "auto":
        choice = next((b for b in ("jax", "torch", "tensorflow") if importlib.util.find_spec(b)), "tensorflow")
    os.environ["KERAS_BACKEND"] = choice
    return choice


def _model(a, path: Path):
    """The DeepFinder U-Net with NumPy-drawn weights (the same under every backend), saved to ``path``."""
    import numpy as np

    import tomochunk as tc

    model = tc.deepfinder_unet(a.classes, filters=a.filters)
    rng = np.random.default_rng(a.seed)
    # kernels from NumPy (He scaling); 1-D weights (biases) keep Keras' constant initial values
    weights = [(rng.standard_normal(w.shape) * np.sqrt(2.0 / np.prod(w.shape[:-1]))).astype(w.dtype)
               if w.ndim > 1 else w for w in model.get_weights()]
    model.set_weights(weights)
    tc.save_model(model, path)
    return path


def _volume(a, folder: Path):
    """The synthetic ``size``³ OME-Zarr store (made once, kept in ``folder``)."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    import tomochunk as tc

    store = folder / f"synthetic_{a.size}_{a.seed}.zarr"
    if not (store.exists() and tc.io.omezarr.is_complete(store)):
        chunks = min(256, a.size)
        data = da.random.RandomState(a.seed).standard_normal((a.size,) * 3, chunks=chunks).astype(np.float32)
        tc.write_volume(xr.DataArray(data, dims=("z", "y", "x")), store, voxel_size=10.0, levels=1,
                        chunks=chunks, overwrite=True)
    return store


def _crop_input(a):
    import numpy as np

    shape = (min(a.size, 48), min(a.size, 96), min(a.size, 96))
    return np.random.default_rng(a.seed + 1).standard_normal(shape).astype(np.float32)


def _crop_scores(x, model_path, a, precision="float32"):
    """Scores of the crop (blocks tiling, one block) and seconds taken after a warm-up call."""
    import numpy as np
    import xarray as xr

    import tomochunk as tc

    vol = xr.DataArray(x, dims=("z", "y", "x"))
    kw = dict(tiling="blocks", block_shape=x.shape, crop=a.crop, normalize=None, precision=precision)
    np.asarray(tc.segment(vol, str(model_path), **kw).data)  # compiles / warms up
    t = time.perf_counter()
    scores = np.asarray(tc.segment(vol, str(model_path), **kw).data)
    return scores, time.perf_counter() - t


def _make_reference(a, npz: Path, model_path: Path):
    import numpy as np

    x = _crop_input(a)
    scores, seconds = _crop_scores(x, model_path, a)
    np.savez_compressed(npz, input=x, scores=scores, seconds=seconds, backend=os.environ["KERAS_BACKEND"])


def _reference(a, model_path: Path, folder: Path, backend: str):
    """The TensorFlow-CPU reference: given, computed here, or in a TensorFlow subprocess."""
    import numpy as np

    if a.reference:
        return np.load(a.reference), "file " + a.reference
    npz = folder / "reference.npz"
    if backend == "tensorflow" and a.cpu:
        _make_reference(a, npz, model_path)
        return np.load(npz), "this process (TensorFlow CPU)"
    if importlib.util.find_spec("tensorflow") is None:
        return None, "no TensorFlow here: make one on a host with --make-reference and pass --reference"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "--make-reference", str(npz), "--model-file", str(model_path),
           *_passthrough(a)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode:
        return None, "TensorFlow subprocess failed: " + res.stderr.strip().splitlines()[-1:][0]
    return np.load(npz), "TensorFlow CPU subprocess"


def _passthrough(a):
    return ["--size", str(a.size), "--filters", ",".join(map(str, a.filters)), "--classes", str(a.classes),
            "--patch", str(a.patch), "--crop", str(a.crop), "--block", str(a.block), "--seed", str(a.seed)]


def _gpu_memory(backend: str):
    try:
        if backend == "jax":
            import jax

            dev = jax.devices()[0]
            stats = dev.memory_stats() or {}
            return {"device": str(dev), "peak_bytes": stats.get("peak_bytes_in_use"),
                    "limit_bytes": stats.get("bytes_limit")}
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return {"device": torch.cuda.get_device_name(0), "peak_bytes": torch.cuda.max_memory_allocated(),
                        "limit_bytes": torch.cuda.get_device_properties(0).total_memory}
    except Exception as exc:  # a report, not a failure
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return {"nvidia_smi": out.stdout.strip()} if out.returncode == 0 else {"device": "cpu"}
    except (OSError, subprocess.TimeoutExpired):
        return {"device": "cpu"}


def _devices(backend: str):
    try:
        if backend == "jax":
            import jax

            return [str(d) for d in jax.devices()]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices()]
    except Exception as exc:
        return [f"{type(exc).__name__}: {exc}"]


def _run(store, model_path, a, tiling, precision):
    import tomochunk as tc

    vol = tc.open_volume(store)
    kw = dict(tiling=tiling, precision=precision, crop=a.crop, normalize=None)
    kw.update(block_shape=(a.block,) * 3) if tiling == "blocks" else kw.update(patch_size=a.patch)
    t = time.perf_counter()
    scores = tc.segment(vol, str(model_path), **kw)
    tc.write_segmentation(scores, store, overwrite=True, levels=1)
    seconds = time.perf_counter() - t
    return {"tiling": tiling, "precision": precision, "seconds": round(seconds, 3),
            "voxels_per_s": round(vol.size / seconds), "options": {k: v for k, v in kw.items() if k != "normalize"}}


def _blocks(store, model_path, a, n=3):
    """Read (Zarr), network and write (Zarr) seconds of ``n`` blocks with their halo, one after another."""
    import numpy as np
    import xarray as xr
    import zarr

    import tomochunk as tc

    src = tc.open_volume(store).data
    out = zarr.open(str(Path(store).parent / "blocks_out.zarr"), mode="w", shape=src.shape, dtype="uint8",
                    chunks=(min(a.block, a.size),) * 3)
    side, halo = min(a.block, a.size), a.crop
    starts = [(i * side) % max(1, a.size - side + 1) for i in range(n)]
    rows = []
    for s in starts:
        lo, hi = max(0, s - halo), min(a.size, s + side + halo)
        t0 = time.perf_counter()
        x = np.asarray(src[lo:hi, lo:hi, lo:hi])
        t1 = time.perf_counter()
        scores = np.asarray(tc.segment(xr.DataArray(x, dims=("z", "y", "x")), str(model_path), tiling="blocks",
                                       block_shape=x.shape, crop=a.crop, normalize=None).data)
        t2 = time.perf_counter()
        core = tuple(slice(s - lo, s - lo + side) for _ in range(3))
        out[s:s + side, s:s + side, s:s + side] = scores[(slice(None), *core)].argmax(0).astype("uint8")
        t3 = time.perf_counter()
        rows.append({"read_s": t1 - t0, "network_s": t2 - t1, "write_s": t3 - t2})
    mean = {k: round(float(np.mean([r[k] for r in rows[1:] or rows])), 4) for k in rows[0]}  # first one warms up
    return {"block": side, "halo": halo, "n": n, "mean_after_first": mean,
            "each": [{k: round(v, 4) for k, v in r.items()} for r in rows]}


def main(argv=None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    model_file = None
    if "--model-file" in raw:  # internal: the reference subprocess reuses the parent's model file
        i = raw.index("--model-file")
        model_file = Path(raw[i + 1])
        del raw[i:i + 2]
    a = _args(raw)
    backend = _backend(a.backend, a.cpu)
    sys.path.insert(0, str(ROOT))  # this checkout's tomochunk, installed or not
    import tempfile

    import numpy as np

    folder = Path(a.data or tempfile.mkdtemp(prefix="tomochunk_gpu_check_"))
    folder.mkdir(parents=True, exist_ok=True)
    model_path = model_file or _model(a, folder / "unet.keras")
    if a.make_reference:
        _make_reference(a, Path(a.make_reference), model_path)
        return 0

    import keras

    t_start = time.perf_counter()
    res = {"backend": backend, "keras": keras.__version__, "python": platform.python_version(),
           "devices": _devices(backend), "cpu_mode": a.cpu, "size": a.size, "voxels": a.size ** 3,
           "model": {"filters": a.filters, "classes": a.classes, "seed": a.seed},
           "store": str(folder)}
    t = time.perf_counter()
    store = _volume(a, folder)
    res["volume_write_s"] = round(time.perf_counter() - t, 3)

    ref, where = _reference(a, model_path, folder, backend)
    x = ref["input"] if ref is not None else _crop_input(a)
    crop = {"shape": list(x.shape), "reference": where}
    for precision in ("float32", "bfloat16"):
        scores, seconds = _crop_scores(x, model_path, a, precision)
        crop[precision] = {"voxels_per_s": round(x.size / seconds)}
        if ref is not None:
            crop[precision]["max_abs_delta"] = float(np.abs(scores - ref["scores"]).max())
    if ref is not None:
        tf_rate = x.size / float(ref["seconds"])
        crop["tensorflow_host_voxels_per_s"] = round(tf_rate)
        crop["ratio_float32"] = round(crop["float32"]["voxels_per_s"] / tf_rate, 3)
        crop["ratio_bfloat16"] = round(crop["bfloat16"]["voxels_per_s"] / tf_rate, 3)
    res["crop"] = crop

    res["blocks"] = _blocks(store, model_path, a)
    res["runs"] = []
    for tiling, precision in (("blocks", "float32"), ("blocks", "bfloat16"), ("patches", "bfloat16"),
                              ("patches", "float32")):
        if time.perf_counter() - t_start > a.budget:
            res["runs"].append({"tiling": tiling, "precision": precision, "skipped": f"past --budget {a.budget:g} s"})
            continue
        try:
            res["runs"].append(_run(store, model_path, a, tiling, precision))
        except Exception as exc:  # keep the other figures
            res["runs"].append({"tiling": tiling, "precision": precision, "error": f"{type(exc).__name__}: {exc}"})
    res["gpu_memory"] = _gpu_memory(backend)
    res["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    Path(a.out).write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: res[k] for k in ("backend", "devices", "size", "runs", "elapsed_s")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
