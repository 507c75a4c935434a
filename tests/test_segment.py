"""Distributed segmentation: equivalence with whole-volume tiling, blends, label maps, writing and resuming."""

import os

import numpy as np
import pytest
import xarray as xr
import zarr

P, CROP = 16, 4  # tiny patches; the tiling rules are those of patch 160 / crop 25


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A tiny DeepFinder U-Net (few filters) saved as .keras."""
    import keras

    from tomochunk.nn.models import deepfinder_unet, save_model

    keras.utils.set_random_seed(0)
    model = deepfinder_unet(3, filters=(2, 3, 4))
    path = tmp_path_factory.mktemp("model") / "net.keras"
    save_model(model, path)
    return model, str(path)


@pytest.fixture(scope="module")
def vol():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(24, 40, 36)).astype(np.float32)
    v[8:14, 10:20, 12:18] += 3.0  # some structure
    return v * 2.5 + 7.0


def reference(vol, model, patch=P, crop=CROP, blend="crop"):
    """DeepFinder's Segment, written out on the whole volume in numpy: normalise, zero-pad by
    ``crop``, patch centres every ``patch + 1 - (2*crop + 5)`` plus one flush with the end,
    predict patch by patch, keep the cores and average where they overlap."""
    v = (vol - vol.mean()) / vol.std()
    v = np.pad(v, crop)
    v = np.pad(v, [(0, max(0, patch - s)) for s in v.shape])  # sides shorter than a patch
    half, core = patch // 2, patch - 2 * crop
    step = patch + 1 - (2 * crop + 5)
    centres = []
    for d in v.shape:
        c = list(range(half, d - half, step))
        if not c or c[-1] < d - half:
            c.append(d - half)
        centres.append(c)
    w1 = np.ones(core)
    if blend == "gaussian":
        w1 = np.exp(-0.5 * ((np.arange(core) - (core - 1) / 2) / (core / 4)) ** 2)
    w3 = w1[:, None, None] * w1[None, :, None] * w1[None, None, :]
    n_cls = model.output_shape[-1]
    acc = np.zeros(v.shape + (n_cls,))
    wsum = np.zeros(v.shape)
    for z in centres[0]:
        for y in centres[1]:
            for x in centres[2]:
                patch_in = v[z - half:z + half, y - half:y + half, x - half:x + half]
                pred = np.asarray(model.predict_on_batch(patch_in[None, ..., None].astype(np.float32)))[0]
                sl = (slice(z - half + crop, z + half - crop), slice(y - half + crop, y + half - crop),
                      slice(x - half + crop, x + half - crop))
                acc[sl] += pred[crop:-crop, crop:-crop, crop:-crop] * w3[..., None]
                wsum[sl] += w3
    n = vol.shape
    inner = (slice(crop, crop + n[0]), slice(crop, crop + n[1]), slice(crop, crop + n[2]))
    return np.moveaxis(acc[inner] / wsum[inner][..., None], -1, 0)


@pytest.fixture(scope="module")
def ref(vol, net):
    return reference(vol, net[0])


# --- normalize ----------------------------------------------------------------------

def test_normalize_meanstd_keeps_xarray_metadata(client):
    import dask.array as da

    from tomochunk import normalize

    x = np.random.default_rng(0).normal(3, 2, size=(12, 20, 18)).astype(np.float32)
    xa = xr.DataArray(da.from_array(x, chunks=7), dims=("z", "y", "x"),
                      coords={"z": np.arange(12) * 10.0}, attrs={"voxel_size": 10.0})
    out = normalize(xa)
    assert isinstance(out.data, da.Array) and out.dims == xa.dims and out.attrs == xa.attrs
    np.testing.assert_array_equal(out.z, xa.z)
    np.testing.assert_allclose(out.values, (x - x.mean()) / x.std(), atol=1e-5)
    # recorded store statistics are used instead of a pass over the data
    xa.attrs["tomochunk"] = {"stats": {"mean": 1.0, "std": 2.0, "nonfinite": 0}}
    np.testing.assert_allclose(normalize(xa).values, (x - 1.0) / 2.0, atol=1e-6)
    np.testing.assert_allclose(normalize(x, stats=(0.0, 4.0)).compute(), x / 4.0)
    assert normalize(x, method=None).dtype == np.float32


def test_normalize_percentile_per_frame():
    from tomochunk import ValueProblem, normalize

    rng = np.random.default_rng(0)
    movie = rng.random((5, 30, 40)).astype(np.float32) * np.arange(1, 6)[:, None, None] * 100
    out = normalize(movie, method="percentile").compute()
    for t in range(5):
        lo, hi = np.percentile(movie[t], [1, 99])
        np.testing.assert_allclose(out[t], (movie[t] - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    clipped = normalize(movie, method="percentile", clip=True).compute()
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    with pytest.raises(ValueProblem):
        normalize(movie, method="zscore")


# --- segment ----------------------------------------------------------------------

@pytest.mark.parametrize("block_patches", [2, 3])
def test_segment_matches_whole_volume_tiling(client, vol, net, ref, block_patches):
    from tomochunk import segment

    xa = xr.DataArray(vol, dims=("z", "y", "x"),
                      coords={d: np.arange(n) * 8.0 for d, n in zip("zyx", vol.shape)},
                      attrs={"voxel_size": 8.0})
    scores = segment(xa, net[1], patch_size=P, crop=CROP, block_patches=block_patches)
    assert scores.dims == ("c", "z", "y", "x") and scores.shape == (3,) + vol.shape
    assert scores.data.numblocks[1:] != (1, 1, 1)  # really several compute blocks
    assert scores.attrs["voxel_size"] == 8.0
    np.testing.assert_array_equal(scores.y, xa.y)
    np.testing.assert_array_equal(scores.c, [0, 1, 2])
    out = scores.values
    assert np.abs(out - ref).max() < 1e-5
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_segment_dims_smaller_than_patch(client, net):
    from tomochunk import segment

    small = np.random.default_rng(2).normal(size=(5, 9, 30)).astype(np.float32)
    scores = segment(small, net[0], patch_size=P, crop=CROP).compute()
    assert scores.shape == (3, 5, 9, 30)
    assert np.abs(scores.values - reference(small, net[0])).max() < 1e-5


def test_gaussian_blend(client, vol, net, ref):
    from tomochunk import segment

    g = segment(vol, net[1], patch_size=P, crop=CROP, blend="gaussian", block_patches=3).values
    assert np.abs(g - reference(vol, net[0], blend="gaussian")).max() < 1e-5
    np.testing.assert_allclose(g.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(g - ref).max() < 0.2  # the same predictions, weighted differently


def test_bfloat16_precision_close_to_float32(client, vol, net, ref):
    from tomochunk import ValueProblem, segment

    scores = segment(vol, net[1], patch_size=P, crop=CROP, block_patches=3, precision="bfloat16")
    assert scores.attrs["segment"]["precision"] == "bfloat16"
    out = scores.values
    assert out.dtype == np.float32 and 0 < np.abs(out - ref).max() < 2e-2
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-3)
    with pytest.raises(ValueProblem, match="precision"):
        segment(vol, net[1], patch_size=P, crop=CROP, precision="float8")


def test_auto_precision(tmp_path, client, vol, net):
    from tomochunk import segment
    from tomochunk.nn._predict import cpu_has_bf16, resolve_precision

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor : 0\nflags : fpu sse avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert resolve_precision("auto", cpuinfo=amx) == "bfloat16"
    assert resolve_precision("auto", cpuinfo=plain) == "float32"
    assert resolve_precision("auto", gpu=True, cpuinfo=plain) == "bfloat16"
    assert resolve_precision("float32", gpu=True, cpuinfo=amx) == "float32"
    scores = segment(vol, net[1], patch_size=P, crop=CROP, block_patches=3, precision="auto")
    assert scores.attrs["segment"]["precision"] == ("bfloat16" if cpu_has_bf16() else "float32")


def test_labelmap(client, vol, net, ref):
    from tomochunk import labelmap, segment

    import dask

    scores = segment(vol, net[1], patch_size=P, crop=CROP, block_patches=3, dtype="float16")
    assert scores.dtype == np.float16
    lab = labelmap(scores)
    assert lab.dims == ("z", "y", "x") and lab.dtype == np.uint8
    s, l = dask.compute(scores.data, lab.data)
    np.testing.assert_array_equal(l, np.argmax(s, axis=0))
    np.testing.assert_array_equal(labelmap(np.asarray(ref)).compute(), np.argmax(ref, axis=0))


def test_model_loaded_once_per_worker(client, tmp_path, vol, net):
    import shutil

    from tomochunk import segment

    path = str(tmp_path / "copy.keras")  # a file no worker has seen yet
    shutil.copy(net[1], path)

    def loads():
        from tomochunk.nn import _cache as s

        return s.LOADS

    before = client.run(loads)
    for _ in range(2):
        segment(vol, path, patch_size=P, crop=CROP, block_patches=3).data.sum().compute()
    after = client.run(loads)
    grown = [after[w] - before.get(w, 0) for w in after]
    assert max(grown) <= 1 and sum(grown) >= 1


# --- tiling="blocks" ----------------------------------------------------------------

@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(64, 96, 80)).astype(np.float32)
    v[10:20, 20:34, 12:30] += 3.0
    return v


def one_window(vol, model, lead):
    """The network on the whole normalised volume in one call: ``lead`` zeros in front (the
    phase of DeepFinder's first patch), zero-padded to multiples of 4 at the far end."""
    v = (vol - vol.mean()) / vol.std()
    v = np.pad(v, [(lead, (-(n + lead)) % 4) for n in v.shape])
    pred = np.asarray(model.predict_on_batch(v[None, ..., None]))[0]
    return np.moveaxis(pred[lead:lead + vol.shape[0], lead:lead + vol.shape[1], lead:lead + vol.shape[2]], -1, 0)


@pytest.mark.parametrize("block_shape", [(32, 48, 40), (36, 96, 32)])
def test_blocks_tiling_is_seamless(client, tmp_path, big, net, block_shape):
    from tomochunk import segment
    from tomochunk.nn.segment import write_segmentation

    scores = segment(big, net[1], crop=25, tiling="blocks", block_shape=block_shape)
    assert scores.data.numblocks[1:] != (1, 1, 1)
    assert scores.attrs["segment"]["tiling"] == "blocks"
    # halos of 28 voxels, all windows in one pooling phase: the blocks cannot be told apart
    ref = one_window(big, net[0], lead=25 % 4)
    assert np.abs(scores.values - ref).max() < 1e-4
    # block chunks (not aligned to the storage chunks) write like any other scores
    write_segmentation(scores, tmp_path / "b.zarr", chunks=16)
    s, classes = _read(tmp_path / "b.zarr")
    assert np.abs(s.astype(np.float32) - ref).max() < 2e-3


def test_blocks_auto_plan_gives_every_worker_a_block(client, big, net):
    from tomochunk import segment
    from tomochunk.nn.segment import window_voxels

    scores = segment(big, net[1], crop=8, tiling="blocks", client=client)
    assert np.prod(scores.data.numblocks[1:]) >= 2  # two workers
    assert all(c % 4 == 0 for c in scores.data.chunks[1][:-1])  # inner block sides: multiples of 4
    assert window_voxels(scores.data.chunks[1:], 8) < 2.2 * big.size
    np.testing.assert_allclose(scores.values.sum(axis=0), 1.0, atol=1e-5)


def test_blocks_errors(tmp_path, big, net):
    from tomochunk import ValueProblem, segment
    from tomochunk.nn.models import deepfinder_unet, save_model

    with pytest.raises(ValueProblem, match="tiling"):
        segment(big, net[1], tiling="rows")
    with pytest.raises(ValueProblem, match="block_shape"):
        segment(big, net[1], tiling="blocks", block_shape=(0, 8, 8))
    with pytest.raises(ValueProblem, match="thinner than the halo"):
        segment(big, net[1], crop=13, tiling="blocks", block_shape=8)
    fixed = tmp_path / "fixed.keras"
    save_model(deepfinder_unet(3, 16, filters=(2, 3, 4)), fixed)
    with pytest.raises(ValueProblem, match="any input size"):
        segment(big, fixed, tiling="blocks")


def test_gpu_annotation_survives_in_graph(vol, net):
    from tomochunk import segment

    for kw in ({"patch_size": P}, {"tiling": "blocks", "block_shape": 16}):
        scores = segment(vol, net[1], crop=CROP, gpu=True, normalize=None, **kw)
        annotated = {name: layer.annotations for name, layer in scores.data.dask.layers.items()
                     if layer.annotations}
        # only the network tasks: padding, halos and blending run on any worker
        assert annotated and all(a == {"resources": {"GPU": 1}} for a in annotated.values())
        assert all(name.startswith("segment-") for name in annotated)
    plain = segment(vol, net[1], patch_size=P, crop=CROP, normalize=None)  # no GPU workers here
    assert not any(layer.annotations for layer in plain.data.dask.layers.values())


def test_errors(net, vol):
    from tomochunk import MissingError, ShapeError, ValueProblem, segment

    with pytest.raises(ValueProblem):
        segment(vol, net[1], patch_size=8, crop=4)
    with pytest.raises(ValueProblem):
        segment(vol, net[1], patch_size=P, crop=CROP, blend="max")
    with pytest.raises(ShapeError):
        segment(vol[0], net[1], patch_size=P, crop=CROP)
    with pytest.raises(MissingError):
        segment(vol, "/nonexistent/net.keras", patch_size=P, crop=CROP, normalize=None)


# --- writing ----------------------------------------------------------------------

def _read(store):
    lab = os.path.join(store, "labels")
    return (zarr.open_array(os.path.join(lab, "scores", "0"))[:],
            [zarr.open_array(os.path.join(lab, "classes", str(k)))[:] for k in range(3)])


def test_write_segmentation_and_resume(client, tmp_path, vol, net, ref):
    import dask.array as da

    from tomochunk.io.omezarr import is_complete
    from tomochunk.nn.segment import PROGRESS_DIR, write_segmentation
    from tomochunk import segment

    scores = segment(vol, net[1], patch_size=P, crop=CROP, block_patches=2)
    full = tmp_path / "full.zarr"
    write_segmentation(scores, full, chunks=16)
    s, classes = _read(full)
    assert s.dtype == np.float16 and s.shape == (3,) + vol.shape
    assert np.abs(s.astype(np.float32) - ref).max() < 1e-3
    np.testing.assert_array_equal(classes[0], np.argmax(ref, axis=0))
    np.testing.assert_array_equal(classes[2], classes[0][::4, ::4, ::4])
    lab = zarr.open_group(str(full / "labels"))
    assert lab.attrs["labels"] == ["classes"]
    assert zarr.open_group(str(full / "labels" / "classes")).attrs["image-label"]
    assert is_complete(full / "labels" / "scores") and is_complete(full / "labels" / "classes")
    assert not (full / "labels" / PROGRESS_DIR).exists()

    # an interrupted run: the block of region (1, 1, 1) fails after the others were written
    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][1:] == (1, 1, 1):
            raise RuntimeError("simulated crash")
        return block

    bad = scores.copy(data=scores.data.rechunk((3, 16, 16, 16)).map_blocks(boom, dtype=np.float32))
    part = tmp_path / "part.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_segmentation(bad, part, chunks=16)
    assert not is_complete(part / "labels" / "scores") and not is_complete(part / "labels" / "classes")
    written = sorted(p.name for p in (part / "labels" / PROGRESS_DIR).iterdir())
    assert "1.1.1" not in written and 0 < len(written) < 2 * 3 * 3
    # the rerun writes only what is missing and completes identically
    write_segmentation(scores, part, chunks=16)
    s2, classes2 = _read(part)
    np.testing.assert_array_equal(s2, s)
    for a, b in zip(classes2, classes):
        np.testing.assert_array_equal(a, b)
    assert is_complete(part / "labels" / "scores")

    from tomochunk import ExistsError

    with pytest.raises(ExistsError):
        write_segmentation(scores, full, chunks=16)
    write_segmentation(scores, full, chunks=16, overwrite=True)
    assert _read(full)[0].shape == s.shape


def test_cli_segment_many_and_skip(client, tmp_path, vol, net, capsys):
    import mrcfile

    from tomochunk.cli import main

    paths = []
    for i in range(2):
        p = tmp_path / f"tomo{i}.mrc"
        with mrcfile.new(p) as f:
            f.set_data(vol if i == 0 else vol[:, :20])
            f.voxel_size = 10.0
        paths.append(str(p))
    out = tmp_path / "out"
    args = ["segment", *paths, "-m", net[1], "-o", str(out), "--patch", str(P), "--crop", str(CROP),
            "--chunks", "16", "--scheduler", client.scheduler.address]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dashboard" in text.lower()
    s, classes = _read(out / "tomo0.zarr")
    assert s.shape == (3,) + vol.shape and classes[0].shape == vol.shape
    assert zarr.open_array(str(out / "tomo1.zarr" / "labels" / "classes" / "0")).shape == (24, 20, 36)
    assert main(args) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert main(["segment", paths[0], "-m", str(tmp_path / "missing.keras"), "-o", str(out)]) == 2


def test_cli_segment_blocks(client, tmp_path, big, net):
    import mrcfile

    from tomochunk.cli import main

    p = tmp_path / "big.mrc"
    with mrcfile.new(p) as f:
        f.set_data(big)
    out = tmp_path / "out"
    assert main(["segment", str(p), "-m", net[1], "-o", str(out), "--tiling", "blocks", "--block", "32,48,40",
                 "--dtype", "float32", "--chunks", "32", "--scheduler", client.scheduler.address]) == 0
    s, classes = _read(out / "big.zarr")
    assert np.abs(s - one_window(big, net[0], lead=25 % 4)).max() < 1e-4
    np.testing.assert_array_equal(classes[0], s.argmax(0))


def test_small_volume_is_split_so_every_worker_gets_a_block():
    import math

    from tomochunk.nn._tiling import _auto_block_patches, _plan_axes, _weights

    k = _auto_block_patches(160, 106)
    args = ((200, 256, 256), 160, 25, 4, k, _weights(110, "crop"))
    assert math.prod(len(ax.groups) for ax in _plan_axes(*args, 0)) == 1
    for workers in (2, 4, 8):
        axes = _plan_axes(*args, workers)
        assert math.prod(len(ax.groups) for ax in axes) >= workers
        assert all(sorted(sum(ax.groups, [])) == list(range(len(ax.starts))) for ax in axes)


# --- checks at the edge, models shipped through the scheduler, memory-safe defaults ----

def test_patch_not_a_multiple_of_4_refused_before_any_work(net, vol):
    import dask.array as da

    from tomochunk import ValueProblem, segment

    touched = []

    def boom(b):
        touched.append(1)
        return b

    lazy = da.from_array(vol, chunks=12).map_blocks(boom, meta=np.empty((0, 0, 0), np.float32))
    touched.clear()
    with pytest.raises(ValueProblem) as err:
        segment(lazy, net[1], patch_size=18, crop=4)
    assert "\n" not in str(err.value) and "multiple of 4" in str(err.value) and "patch_size" in str(err.value)
    assert not touched


def test_keras_model_reaches_workers_once_through_the_scheduler(client, tmp_path, vol, net, ref):
    import glob
    import tempfile

    import cloudpickle
    import dask

    from tomochunk import segment
    from tomochunk.nn import _cache

    def built():
        from tomochunk.nn import _cache as c

        return sorted(k[0] for k in c._SHIPPED)

    before_tmp = set(glob.glob(os.path.join(tempfile.gettempdir(), "tomochunk-model-*")))
    scores = segment(vol, net[0], patch_size=P, crop=CROP, block_patches=3)
    assert scores.attrs["segment"]["model"].startswith("<keras model keras-")
    # the graph names the model; its bytes are one scattered piece of data, not in every task
    graph = dict(scores.data.__dask_graph__())
    blob = _cache.model_bytes(net[0])
    tasks = {k: v for k, v in graph.items() if isinstance(k, tuple) and str(k[0]).startswith("segment-")}
    assert len(tasks) >= 2 and len(cloudpickle.dumps(tasks)) < len(blob) / 4
    got = client.compute(scores.data).result()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    token = scores.attrs["segment"]["model"][len("<keras model "):-1]
    per_worker = client.run(built)
    assert sum(token in v for v in per_worker.values()) >= 1
    assert all(v.count(token) <= 1 for v in per_worker.values())
    # no file on a local disk was involved
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "tomochunk-model-*"))) == before_tmp
    with dask.config.set(scheduler="sync"):  # and without a distributed client the graph holds it once
        local = segment(vol, net[0], patch_size=P, crop=CROP, block_patches=3, client=None)
    assert local.attrs["segment"]["model"] == scores.attrs["segment"]["model"]


def test_default_patch_batch_fits_2gb_workers(tmp_path):
    """The old default (37 patches of 48^3 per call, ~4 GB for DeepFinder's filters) cannot fit a
    2 GB worker; the default batch is now sized from the worker's memory limit and the model."""
    import keras
    from distributed import Client, LocalCluster

    from tomochunk import segment
    from tomochunk.nn._memory import bytes_per_voxel, patch_batch
    from tomochunk.nn.models import deepfinder_unet, save_model
    from tomochunk.parallel import worker_env, worker_info

    keras.utils.set_random_seed(0)
    model = deepfinder_unet(2)  # DeepFinder's own filters (32, 48, 64)
    path = tmp_path / "df.keras"
    save_model(model, path)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(32, 96, 32)).astype(np.float32)   # 3 patches of 48^3 (cores of 32) along y
    old_batch = min(37, 24)  # the old default: 48 patches in 2 blocks (one per worker)
    assert old_batch * 48 ** 3 * bytes_per_voxel(model) > 2e9
    # one worker, so that the one block is not split for a second one
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="2GB",
                      dashboard_address=None, env=worker_env(1)) as cluster, Client(cluster) as c:
        batch = patch_batch(48, bytes_per_voxel(model), worker_info(c))
        assert 2 <= batch <= 4
        # one block holding a whole default batch: a single network call on `batch` patches
        scores = segment(vol, str(path), patch_size=48, crop=8, client=c, block_patches=batch)
        assert scores.data.numblocks[1:] == (1, 1, 1)
        out = c.compute(scores.data).result()
    assert out.shape == (2, 32, 96, 32) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)


def test_class_argmax_equals_numpy_argmax():
    from tomochunk.nn.segment import class_argmax

    rng = np.random.default_rng(3)
    s = rng.random((13, 6, 7, 8)).astype(np.float32)
    s[:, 0, 0, :] = 0.25                       # ties: the lower class wins, as in np.argmax
    s[4, 1, 2, 3] = np.nan                     # np.argmax's rule: the first NaN
    s[[2, 9], 2, 2, 2] = np.nan
    want = np.argmax(s, axis=0).astype(np.uint8)
    assert (class_argmax(s) == want).all()
    q = (np.nan_to_num(s) * 100).astype(np.int16)
    assert (class_argmax(q) == np.argmax(q, axis=0)).all()
