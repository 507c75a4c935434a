"""Readers and writers on real files, and every bad input of the foundation issue."""

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

import tomochunk as tc
from tomochunk.errors import (ExistsError, FormatError, IncompleteError, MissingError, ShapeError,
                              TomochunkError)
from tomochunk.io._source import TomochunkWarning
from tomochunk.io.omezarr import PROGRESS_FILE, PyramidWriter


@pytest.fixture
def vol(rng):
    return rng.normal(size=(20, 34, 27)).astype(np.float32)


def _mrc(path, data, voxel_size=5.0):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel_size
    return path


def _one_line(exc, path):
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert isinstance(exc.value, TomochunkError)


# --- readers -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mrc", ".rec", ".map", ".st"])
def test_mrc_read(tmp_path, vol, suffix):
    p = _mrc(tmp_path / f"t{suffix}", vol, 7.0)
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x") and v.shape == vol.shape
    assert v.attrs["voxel_size"] == pytest.approx(7.0)
    assert v.coords["x"].values[1] == pytest.approx(7.0)
    np.testing.assert_array_equal(v.values, vol)
    assert v.attrs["mrc_header"]["nx"] == 27


def test_mrc_graph_is_small(tmp_path, vol):
    """The graph carries a path, not a memory map: it pickles small."""
    import pickle

    p = _mrc(tmp_path / "t.mrc", vol)
    v = tc.open_volume(p)
    assert len(pickle.dumps(dict(v.data.dask))) < 10_000


def test_mrc_zero_machine_stamp_warns(tmp_path, vol):
    p = _mrc(tmp_path / "z.mrc", vol)
    raw = bytearray(p.read_bytes())
    raw[212:216] = b"\0\0\0\0"
    p.write_bytes(raw)
    with pytest.warns(TomochunkWarning, match="machine stamp"):
        v = tc.open_volume(p)
    np.testing.assert_array_equal(v.values, vol)


def test_mrc_truncated(tmp_path, vol):
    p = _mrc(tmp_path / "t.mrc", vol)
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(FormatError, match="truncated") as e:
        tc.open_volume(p)
    _one_line(e, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(FormatError, match="truncated"):
        tc.open_volume(p)


def test_mrc_2d_rejected(tmp_path):
    p = _mrc(tmp_path / "img.mrc", np.zeros((16, 16), np.float32))
    with pytest.raises(ShapeError, match="3D") as e:
        tc.open_volume(p)
    _one_line(e, p)


def test_empty_and_missing(tmp_path):
    for name in ("e.mrc", "e.h5", "e.tif"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(FormatError, match="empty") as e:
            tc.open_volume(tmp_path / name)
        _one_line(e, tmp_path / name)
    with pytest.raises(MissingError) as e:
        tc.open_volume(tmp_path / "nope.mrc")
    _one_line(e, tmp_path / "nope.mrc")
    (tmp_path / "x.xyz").write_bytes(b"1")
    with pytest.raises(FormatError, match="unknown volume format"):
        tc.open_volume(tmp_path / "x.xyz")


def test_garbage_mrc(tmp_path):
    p = tmp_path / "g.mrc"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(FormatError) as e:
        tc.open_volume(p)
    _one_line(e, p)


def test_nan_inf_warn_with_count(tmp_path, vol):
    vol = vol.copy()
    vol[0, 0, :3] = np.nan
    vol[1, 1, 1] = np.inf
    p = _mrc(tmp_path / "n.mrc", vol)
    with pytest.warns(TomochunkWarning, match="4 NaN/Inf"):
        tc.open_volume(p, check_finite=True)
    with pytest.warns(TomochunkWarning, match="4 NaN/Inf"):
        stats = tc.convert(p, tmp_path / "n.zarr", chunks=16, levels=2)
    assert stats["nonfinite"] == 4


def test_h5_read(tmp_path, vol):
    p = tmp_path / "t.h5"
    with h5py.File(p, "w") as f:
        f["dataset"] = vol
        f["other"] = np.zeros((4, 4, 4))
    np.testing.assert_array_equal(tc.open_volume(p).values, vol)
    np.testing.assert_array_equal(tc.open_volume(p, dataset="other").values, 0)
    p2 = tmp_path / "single.hdf5"
    with h5py.File(p2, "w") as f:
        f["grp/tomo"] = vol
        f["meta"] = np.arange(3)
    np.testing.assert_array_equal(tc.open_volume(p2).values, vol)


def test_h5_bad(tmp_path, vol):
    p = tmp_path / "many.h5"
    with h5py.File(p, "w") as f:
        f["a"] = vol
        f["b"] = vol
    with pytest.raises(FormatError, match="several 3D datasets") as e:
        tc.open_volume(p)
    _one_line(e, p)
    with pytest.raises(FormatError, match="no dataset named"):
        tc.open_volume(p, dataset="c")
    p2 = tmp_path / "flat.h5"
    with h5py.File(p2, "w") as f:
        f["dataset"] = np.zeros((4, 4))
    with pytest.raises(ShapeError, match="2D"):
        tc.open_volume(p2)
    p3 = tmp_path / "junk.h5"
    p3.write_bytes(b"not hdf5 at all")
    with pytest.raises(FormatError):
        tc.open_volume(p3)


def test_tiff_stack(tmp_path, vol):
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, vol)
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x")
    np.testing.assert_array_equal(v.values, vol)
    np.testing.assert_array_equal(v[3:7, 2:9].values, vol[3:7, 2:9])
    tifffile.imwrite(tmp_path / "flat.tif", vol[0])
    with pytest.raises(ShapeError):
        tc.open_volume(tmp_path / "flat.tif")


def _frames(folder, movie, names=None):
    folder.mkdir()
    names = names or [f"cell_frame{t}.tif" for t in range(len(movie))]
    for n, f in zip(names, movie):
        tifffile.imwrite(folder / n, f)
    return folder


def test_tiff_folder_natural_order(tmp_path, rng):
    movie = rng.integers(0, 4000, size=(12, 15, 19), dtype=np.uint16)
    exts = [".tif", ".TIF", ".tiff", ".TIFF"]
    names = [f"exp2_t{t}{exts[t % 4]}" for t in range(12)]  # t10 sorts after t9 only naturally
    folder = _frames(tmp_path / "movie", movie, names)
    (folder / "notes.txt").write_text("ignored")
    v = tc.open_volume(folder)
    assert v.dims == ("t", "y", "x")
    np.testing.assert_array_equal(v.values, movie)
    np.testing.assert_array_equal(v.coords["t"].values, np.arange(12))


@pytest.mark.parametrize("case", ["gap", "duplicate", "unnumbered", "shape", "dtype"])
def test_tiff_folder_bad(tmp_path, rng, case):
    movie = rng.integers(0, 100, size=(5, 8, 9), dtype=np.uint16)
    folder = _frames(tmp_path / "m", movie)
    if case == "gap":
        (folder / "cell_frame2.tif").unlink()
        bad, err, match = "cell_frame3.tif", FormatError, "frame 2 is missing"
    elif case == "duplicate":
        tifffile.imwrite(folder / "cell_frame_v2_3.tif", movie[0])
        bad, err, match = "frame", FormatError, "duplicate frame number 3"
    elif case == "unnumbered":
        tifffile.imwrite(folder / "cell.tif", movie[0])
        bad, err, match = "cell.tif", FormatError, "no frame number"
    elif case == "shape":
        tifffile.imwrite(folder / "cell_frame4.tif", movie[0, :4])
        bad, err, match = "cell_frame4.tif", ShapeError, r"\(4, 9\)"
    else:
        tifffile.imwrite(folder / "cell_frame4.tif", movie[0].astype(np.float32))
        bad, err, match = "cell_frame4.tif", ShapeError, "float32"
    with pytest.raises(err, match=match) as e:
        tc.open_volume(folder)
    assert bad in str(e.value) and "\n" not in str(e.value)


def test_plain_zarr_array(tmp_path, vol):
    p = tmp_path / "plain.zarr"
    z = zarr.create_array(str(p), shape=vol.shape, chunks=(8, 8, 8), dtype=vol.dtype)
    z[:] = vol
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x")
    np.testing.assert_array_equal(v.values, vol)


# --- writers and OME-Zarr ------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mrc", ".h5", ".zarr"])
def test_write_volume_roundtrip(tmp_path, vol, suffix):
    import dask.array as da

    p = tmp_path / f"w{suffix}"
    tc.write_volume(da.from_array(vol, chunks=(7, 20, 20)), p, voxel_size=3.5)
    v = tc.open_volume(p)
    np.testing.assert_array_equal(v.values, vol)
    assert v.attrs["voxel_size"] == pytest.approx(3.5)
    with pytest.raises(ExistsError) as e:
        tc.write_volume(vol, p)
    _one_line(e, p)
    tc.write_volume(vol * 2, p, overwrite=True)
    np.testing.assert_array_equal(tc.open_volume(p).values, vol * 2)
    assert not list(tmp_path.glob(".*partial"))


def test_write_volume_rejects_2d(tmp_path):
    with pytest.raises(ShapeError):
        tc.write_volume(np.zeros((4, 4)), tmp_path / "x.mrc")


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_convert_ome_zarr_metadata(tmp_path, vol, ngff):
    src = _mrc(tmp_path / "t.mrc", vol, 4.0)
    dst = tmp_path / "t.zarr"
    tc.convert(src, dst, chunks=8, levels=3, ngff=ngff)
    g = zarr.open_group(str(dst), mode="r")
    attrs = g.attrs.asdict()
    ome = attrs["ome"] if ngff == "0.5" else attrs
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["axes"][0]["unit"] == "angstrom"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[4.0] * 3, [8.0] * 3, [16.0] * 3]
    assert attrs["tomochunk"]["complete"] is True
    assert attrs["mrc_header"]["nx"] == 27
    assert g["0"].metadata.zarr_format == (3 if ngff == "0.5" else 2)
    for level, vs in enumerate([4.0, 8.0, 16.0]):
        v = tc.open_volume(dst, level=level)
        assert v.attrs["voxel_size"] == vs
        assert v.shape == tuple(int(np.ceil(s / 2**level)) for s in vol.shape)
    np.testing.assert_allclose(tc.open_volume(dst, level=1).values[:10, :17, :13],
                               vol[:20, :34, :26].reshape(10, 2, 17, 2, 13, 2).mean((1, 3, 5)), rtol=1e-5, atol=1e-6)
    assert not (dst / PROGRESS_FILE).exists()


def test_convert_movie_folder_keeps_time(tmp_path, rng):
    movie = rng.integers(0, 4000, size=(9, 20, 30), dtype=np.uint16)
    folder = _frames(tmp_path / "cell", movie)
    dst = tmp_path / "cell.zarr"
    tc.convert(folder, dst, levels=2)
    v1 = tc.open_volume(dst, level=1)
    assert v1.dims == ("t", "y", "x") and v1.shape == (9, 10, 15)
    np.testing.assert_array_equal(tc.open_volume(dst).values, movie)


def test_convert_existing_output(tmp_path, vol):
    src = _mrc(tmp_path / "t.mrc", vol)
    dst = tmp_path / "t.zarr"
    stats = tc.convert(src, dst, chunks=16)
    assert tc.convert(src, dst, chunks=16) == stats  # the same source: the complete store is returned
    (tmp_path / "other").mkdir()
    other = _mrc(tmp_path / "other" / "t.mrc", vol + 1)
    with pytest.raises(ExistsError, match="overwrite") as e:
        tc.convert(other, dst, chunks=16)
    _one_line(e, dst)
    tc.convert(src, dst, chunks=16, overwrite=True)


def test_incomplete_store_refused_then_resumed(tmp_path, vol, monkeypatch):
    import tomochunk.io.convert as conv

    src = _mrc(tmp_path / "t.mrc", vol)
    dst = tmp_path / "t.zarr"
    calls = []

    class Boom(Exception):
        pass

    class Failing:  # the source fails after the compressibility sample and 5 level-0 chunks
        def __init__(self, inner):
            self.inner, self.shape, self.dtype = inner, inner.shape, inner.dtype

        def __getitem__(self, region):
            calls.append(region)
            if len(calls) > 6:
                raise Boom
            return self.inner[region]

    real = conv.open_source
    monkeypatch.setattr(conv, "open_source", lambda *a, **k: (Failing(real(*a, **k)[0]), real(*a, **k)[1]))
    with pytest.raises(Boom):
        tc.convert(src, dst, chunks=8, levels=3, threads=1)
    monkeypatch.setattr(conv, "open_source", real)
    with pytest.raises(IncompleteError, match="incomplete") as e:
        tc.open_volume(dst)
    _one_line(e, dst)
    n_done = len([p for p in (dst / PROGRESS_FILE).iterdir() if not p.name.startswith(".")])
    assert n_done == 5
    stats = tc.convert(src, dst, chunks=8, levels=3)  # resumes, does not refuse
    assert stats["n"] if "n" in stats else True
    ref = tmp_path / "ref.zarr"
    tc.convert(src, ref, chunks=8, levels=3)
    for level in range(3):
        np.testing.assert_array_equal(tc.open_volume(dst, level=level).values,
                                      tc.open_volume(ref, level=level).values)
    assert json.loads((dst / ".zattrs").read_text())["tomochunk"]["stats"]["mean"] == pytest.approx(
        float(vol.astype(np.float64).mean()), rel=1e-6)


def test_convert_compression_auto_raw_for_noise(tmp_path, vol):
    """Noisy floats are stored raw, smooth floats and integers compressed; a resumed store keeps its codec."""
    def codec(store):
        return json.loads((store / "0" / ".zarray").read_text())["compressor"]

    tc.convert(_mrc(tmp_path / "noise.mrc", vol), tmp_path / "noise.zarr")
    assert codec(tmp_path / "noise.zarr") is None
    smooth = np.broadcast_to(np.arange(27, dtype=np.float32), vol.shape).copy()
    tc.convert(_mrc(tmp_path / "smooth.mrc", smooth), tmp_path / "smooth.zarr")
    assert codec(tmp_path / "smooth.zarr")["cname"] == "lz4"
    tc.convert(tmp_path / "noise.mrc", tmp_path / "forced.zarr", compression=True)
    assert codec(tmp_path / "forced.zarr")["id"] == "blosc"
    np.testing.assert_array_equal(tc.open_volume(tmp_path / "forced.zarr").values, vol)
    np.testing.assert_array_equal(tc.open_volume(tmp_path / "noise.zarr").values, vol)
    labels = (vol > 1).astype(np.int8)
    tc.convert(_mrc(tmp_path / "lab.mrc", labels), tmp_path / "lab.zarr")
    assert codec(tmp_path / "lab.zarr")["cname"] == "zstd"
    with pytest.raises(TomochunkError, match="compression"):
        tc.convert(tmp_path / "noise.mrc", tmp_path / "x.zarr", compression="gzip")


@pytest.mark.parametrize("label", [False, True])
def test_slabwise_stats_and_downsample_equal_whole_block(rng, label):
    from tomochunk.io.omezarr import _downsample

    block = rng.normal(size=(13, 10, 7)).astype(np.float32)
    if label:
        block = (block > 0.5).astype(np.uint8)
    block[3, 2, 1] = np.nan if not label else 1
    w = PyramidWriter.__new__(PyramidWriter)
    w.factors, w.label = (2, 2, 2), label
    stats, small = w._stats_and_downsample(block, True, slab_bytes=block[:1].nbytes * 4)
    ref_stats = w._block_stats(block)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-6)
    np.testing.assert_array_equal(small, _downsample(block, (2, 2, 2), label))


def test_memmap_source_slices_like_numpy(tmp_path, rng):
    from tomochunk.io._source import MemmapSource

    a = rng.normal(size=(7, 9, 11)).astype(">f4")
    (tmp_path / "a.raw").write_bytes(b"x" * 37 + a.tobytes())
    src = MemmapSource(tmp_path / "a.raw", a.shape, a.dtype, 37)
    src.WINDOW = 2 * 9 * 11 * 4  # several windows per read
    for _ in range(300):
        key = tuple(slice(int(rng.integers(-12, 12)), int(rng.integers(-12, 12)), int(rng.choice([1, 2, -1, -3])))
                    for _ in range(3))
        out = src[key]
        np.testing.assert_array_equal(out, a[key])
        assert out.dtype == np.float32
    (tmp_path / "a.raw").write_bytes(b"x" * 37 + a.tobytes()[:-100])  # truncated after opening
    with pytest.raises(FormatError, match="ended early"):
        src[6:7]


def test_convert_h5_and_zarr_sources(tmp_path, vol):
    p = tmp_path / "t.h5"
    with h5py.File(p, "w") as f:
        f["dataset"] = vol
    tc.convert(p, tmp_path / "a.zarr", chunks=16, levels=2)
    tc.convert(tmp_path / "a.zarr", tmp_path / "b.zarr", chunks=8, levels=3)
    np.testing.assert_array_equal(tc.open_volume(tmp_path / "b.zarr").values, vol)


def test_open_volume_on_cluster(tmp_path, vol, client):
    """Lazily opened files compute on real worker processes."""
    p = _mrc(tmp_path / "t.mrc", vol)
    v = tc.open_volume(p, chunks=(8, 16, 16))
    assert float(client.compute(v.data.sum()).result()) == pytest.approx(float(vol.sum()), rel=1e-5)
    tc.convert(p, tmp_path / "t.zarr", chunks=8)
    z = tc.open_volume(tmp_path / "t.zarr")
    np.testing.assert_array_equal(client.compute(z.data).result(), vol)


# --- CLI -----------------------------------------------------------------------

def test_cli_convert_many(tmp_path, vol, rng, capsys):
    from tomochunk.cli import main

    a = _mrc(tmp_path / "a.mrc", vol)
    b = tmp_path / "b.h5"
    with h5py.File(b, "w") as f:
        f["dataset"] = vol
    folder = _frames(tmp_path / "mov", rng.integers(0, 9, size=(4, 8, 8), dtype=np.uint16))
    out = tmp_path / "out"
    assert main(["convert", str(a), str(b), str(folder), "-o", str(out), "--chunks", "16", "--levels", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.zarr", "b.zarr", "mov.zarr"]
    capsys.readouterr()
    assert main(["convert", str(a), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.zarr" in err[0] and "Traceback" not in err[0]
    assert main(["convert", str(tmp_path / "missing.mrc"), "-o", str(out)]) == 2


def test_raw_chunks_written_with_o_direct_where_aligned(tmp_path):
    from tomochunk.io._source import aligned_empty
    from tomochunk.io.omezarr import _write_direct

    a = aligned_empty((16, 16, 16), np.float32)
    a[...] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    if _write_direct(tmp_path / "c", a):  # False on file systems without O_DIRECT (tmpfs)
        assert (tmp_path / "c").read_bytes() == a.tobytes()
    # unaligned memory or size: refused before anything is written (the caller writes buffered)
    assert not _write_direct(tmp_path / "d", np.zeros(8193, np.uint8)[1:])
    assert not _write_direct(tmp_path / "e", aligned_empty((1000,), np.uint8))
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
