"""Issue 19, volume side: hostile and unusual inputs built here, each with a clear error or a correct result.

Every file is written with the format's own library (mrcfile, tifffile, h5py, zarr)
or patched byte by byte where the library cannot make it, and the expected values
come from the data we put in, not from our reader.
"""

import math
import struct
import warnings

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr

import tomochunk as tc
from tomochunk.errors import FormatError, ShapeError, TomochunkError, ValueProblem
from tomochunk.io._source import TomochunkWarning
from tomochunk.io.convert import convert
from tomochunk.io.mesh import export_meshes
from tomochunk.io.mrc import IMOD_STAMP


def _one_line(exc, path=None):
    msg = str(exc.value)
    assert isinstance(exc.value, TomochunkError), type(exc.value)
    assert "\n" not in msg, msg
    if path is not None:
        assert str(path) in msg, msg


@pytest.fixture
def vol(rng):
    return rng.normal(size=(6, 7, 9)).astype(np.float32)


def _mrc(path, data, voxel_size=5.0):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel_size
    return path


def _patch(path, offset, fmt, *values):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(raw))


# --- item 9: axis order -------------------------------------------------------------------

@pytest.mark.parametrize("order", [(3, 2, 1), (2, 3, 1), (1, 3, 2), (3, 1, 2)])
def test_mrc_axis_order_is_honoured(tmp_path, vol, order):
    """A file whose columns/rows/sections are not x/y/z opens as [z, y, x] of the same voxels."""
    mapc, mapr, maps = order
    # the file's array is [section, row, column]; axis k of vol (z=0, y=1, x=2) is MRC axis 3-k
    disk_axes = [3 - a for a in (maps, mapr, mapc)]
    disk = np.ascontiguousarray(vol.transpose(disk_axes))
    p = _mrc(tmp_path / "perm.mrc", disk)
    with mrcfile.open(p, mode="r+") as m:
        m.header.mapc, m.header.mapr, m.header.maps = mapc, mapr, maps
    with mrcfile.open(p) as m:  # mrcfile itself returns the file order
        assert m.data.shape == disk.shape
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x") and v.shape == vol.shape
    np.testing.assert_array_equal(v.values, vol)
    np.testing.assert_array_equal(v[2:5, 1:6, 3:8].values, vol[2:5, 1:6, 3:8])


def test_mrc_invalid_axis_order_refused(tmp_path, vol):
    p = _mrc(tmp_path / "bad.mrc", vol)
    with mrcfile.open(p, mode="r+", permissive=True) as m:
        m.header.mapc, m.header.mapr, m.header.maps = 1, 1, 3
    with pytest.raises(FormatError, match="mapc") as e:
        tc.open_volume(p)
    _one_line(e, p)


def _ngff_store(path, data, axes, scale, zarr_format=2, translation=None, units="angstrom"):
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    kw = {"dimension_names": axes} if zarr_format == 3 else {}
    a = g.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape, **kw)
    a[...] = data
    tr = [{"type": "scale", "scale": list(scale)}]
    if translation is not None:
        tr.append({"type": "translation", "translation": list(translation)})
    kinds = {"t": "time", "c": "channel"}
    ms = {"axes": [{"name": n, "type": kinds.get(n.lower(), "space"),
                    **({"unit": units} if n.lower() in "zyx" else {})} for n in axes],
          "datasets": [{"path": "0", "coordinateTransformations": tr}], "version": "0.4"}
    if zarr_format == 2:
        g.attrs["multiscales"] = [ms]
    else:
        ms.pop("version")
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ngff_axes_xyz_open_as_zyx(tmp_path, vol, zarr_format):
    """A store with axes x, y, z (and a translation in that order) opens as z, y, x data, not swapped."""
    p = _ngff_store(tmp_path / "xyz.zarr", np.ascontiguousarray(vol.transpose(2, 1, 0)), ["x", "y", "z"],
                    [4.0, 4.0, 4.0], zarr_format, translation=[30.0, 20.0, 10.0])
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x") and v.shape == vol.shape
    np.testing.assert_array_equal(v.values, vol)
    assert v.attrs["voxel_size"] == 4.0
    assert v.attrs["origin"] == (10.0, 20.0, 30.0)
    assert float(v.x[0]) == 30.0 and float(v.z[1]) == 14.0


def test_ngff_axes_case_singletons_and_units(tmp_path, vol):
    """Upper-case names, a t/c of length 1 (bioformats2raw's tczyx) and nanometre units."""
    data = vol[None, None]
    p = _ngff_store(tmp_path / "tczyx.zarr", data, ["T", "C", "Z", "Y", "X"], [1, 1, 0.5, 0.5, 0.5],
                    units="nanometer")
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x")
    np.testing.assert_array_equal(v.values, vol)
    assert v.attrs["voxel_size"] == pytest.approx(5.0)


def test_ngff_unknown_axis_refused(tmp_path, vol):
    p = _ngff_store(tmp_path / "q.zarr", vol, ["q", "y", "x"], [1, 1, 1])
    with pytest.raises(FormatError, match="axes") as e:
        tc.open_volume(p)
    _one_line(e, p)


def test_plain_zarr_dimension_names_reordered(tmp_path, vol):
    p = tmp_path / "plain.zarr"
    a = zarr.create_array(str(p), shape=vol.shape[::-1], dtype=vol.dtype, dimension_names=("x", "y", "z"))
    a[...] = vol.transpose(2, 1, 0)
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x")
    np.testing.assert_array_equal(v.values, vol)


# --- item 10: TIFF series and colour ----------------------------------------------------------

def test_tiff_two_series_read_whole_with_warning(tmp_path, rng):
    a = rng.integers(0, 1000, (4, 8, 9)).astype(np.uint16)
    b = rng.integers(0, 1000, (6, 8, 9)).astype(np.uint16)
    p = tmp_path / "two.tif"
    tifffile.imwrite(p, a, photometric="minisblack")
    tifffile.imwrite(p, b, photometric="minisblack", append=True)
    with tifffile.TiffFile(p) as tf:  # tifffile itself sees two series, and imread gives the first only
        assert [len(s.pages) for s in tf.series] == [4, 6]
    assert tifffile.imread(p).shape == (4, 8, 9)
    with pytest.warns(TomochunkWarning, match="2 series"):
        v = tc.open_volume(p)
    assert v.shape == (10, 8, 9)
    np.testing.assert_array_equal(v.values, np.concatenate([a, b]))
    np.testing.assert_array_equal(v[3:6].values, np.concatenate([a, b])[3:6])


def test_tiff_series_of_different_shapes_refused(tmp_path, rng):
    p = tmp_path / "mixed.tif"
    tifffile.imwrite(p, np.zeros((4, 8, 9), np.uint16), photometric="minisblack")
    tifffile.imwrite(p, np.zeros((6, 5, 9), np.uint16), photometric="minisblack", append=True)
    with pytest.raises(FormatError, match="2 series") as e:
        tc.open_volume(p)
    _one_line(e, p)


@pytest.mark.parametrize("case", ["rgb", "rgb-stack", "planar4"])
def test_tiff_colour_refused(tmp_path, case):
    p = tmp_path / f"{case}.tif"
    if case == "rgb":
        tifffile.imwrite(p, np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    elif case == "rgb-stack":
        tifffile.imwrite(p, np.zeros((5, 8, 9, 3), np.uint8), photometric="rgb")
    else:
        tifffile.imwrite(p, np.zeros((4, 8, 9), np.uint8), photometric="minisblack", planarconfig="separate",
                         extrasamples=[0, 0, 0])
    with pytest.raises(ShapeError, match="samples per pixel") as e:
        tc.open_volume(p)
    _one_line(e, p)


def test_tiff_rgb_frame_in_folder_refused(tmp_path):
    d = tmp_path / "movie"
    d.mkdir()
    for t in range(3):
        tifffile.imwrite(d / f"f{t}.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(ShapeError, match="samples per pixel") as e:
        tc.open_volume(d)
    _one_line(e)


def _corrupt_page(p, page):
    with tifffile.TiffFile(p) as tf:
        off, n = tf.pages[page].dataoffsets[0], tf.pages[page].databytecounts[0]
    raw = bytearray(p.read_bytes())
    raw[off:off + n] = b"\xff" * n
    p.write_bytes(bytes(raw))


def test_corrupt_tiff_page_is_format_error(tmp_path, rng):
    """A damaged zlib page is found when read (the headers are fine): FormatError naming the file."""
    p = tmp_path / "z.tif"
    tifffile.imwrite(p, rng.normal(size=(5, 16, 16)).astype(np.float32), compression="zlib",
                     photometric="minisblack")
    _corrupt_page(p, 2)
    v = tc.open_volume(p)
    np.testing.assert_array_equal(v[:2].values.shape, (2, 16, 16))  # the intact pages still read
    with pytest.raises(FormatError, match="page 2") as e:
        v.values
    _one_line(e, p)


def test_corrupt_tiff_frame_is_format_error(tmp_path, rng):
    d = tmp_path / "frames"
    d.mkdir()
    for t in range(3):
        tifffile.imwrite(d / f"f{t}.tif", rng.integers(0, 99, (16, 16)).astype(np.uint16), compression="zlib")
    _corrupt_page(d / "f1.tif", 0)
    with pytest.raises(FormatError, match="decode") as e:
        tc.open_volume(d).values
    _one_line(e, d / "f1.tif")


# --- item 11: values kept exactly ----------------------------------------------------------

def test_int32_labels_too_large_for_mrc_refused(tmp_path):
    lab = np.zeros((4, 5, 6), np.int32)
    lab[1, 2, 3] = 16777217
    p = tmp_path / "l.mrc"
    with pytest.raises(ShapeError, match="16777217") as e:
        tc.write_volume(lab, p)
    _one_line(e, p)
    assert not p.exists()


@pytest.mark.parametrize("dtype,top,stored", [(np.int32, 30000, np.int16), (np.int64, 60000, np.uint16),
                                              (np.uint32, 255, np.int16), (np.uint8, 255, np.uint16)])
def test_integer_labels_stored_exactly(tmp_path, dtype, top, stored):
    lab = np.zeros((4, 5, 6), dtype)
    lab[1, 2, 3], lab[2, 2, 2] = top, 7
    p = tc.write_volume(lab, tmp_path / "l.mrc", voxel_size=3.0)
    with mrcfile.open(p) as m:  # mrcfile's reading, not ours
        assert m.data.dtype == np.dtype(stored)
        np.testing.assert_array_equal(m.data, lab)
    np.testing.assert_array_equal(tc.open_volume(p).values, lab)


def _mode0(path, values, stamp=None, flags=0):
    _mrc(path, values.view(np.int8))
    if stamp is not None:
        _patch(path, 152, "<ii", stamp, flags)
    return path


def test_imod_unsigned_bytes(tmp_path):
    """IMOD stamps its files; without flag bit 0 the bytes are unsigned (IMOD's mrc_format.txt)."""
    values = np.arange(0, 240, 2, dtype=np.uint8).reshape(2, 6, 10)
    p = _mode0(tmp_path / "u.mrc", values, IMOD_STAMP, 0)
    v = tc.open_volume(p)
    assert v.dtype == np.uint8
    np.testing.assert_array_equal(v.values, values)


def test_imod_signed_bytes_and_plain_mrc2014(tmp_path):
    values = np.arange(0, 240, 2, dtype=np.uint8).reshape(2, 6, 10)
    signed = values.view(np.int8)
    for name, stamp, flags in (("s.mrc", IMOD_STAMP, 1), ("plain.mrc", None, 0)):
        v = tc.open_volume(_mode0(tmp_path / name, values, stamp, flags))
        assert v.dtype == np.int8
        np.testing.assert_array_equal(v.values, signed)


def test_int8_written_with_imod_signed_flag(tmp_path):
    data = np.array([-100, -1, 0, 1, 100], np.int8).repeat(12).reshape(3, 4, 5)
    p = tc.write_volume(data, tmp_path / "b.mrc")
    stamp, flags = struct.unpack("<ii", p.read_bytes()[152:160])
    assert stamp == IMOD_STAMP and flags & 1
    with mrcfile.open(p) as m:
        np.testing.assert_array_equal(m.data, data)
    np.testing.assert_array_equal(tc.open_volume(p).values, data)


@pytest.mark.parametrize("mode", [3, 4])
def test_complex_mrc_refused(tmp_path, mode):
    p = tmp_path / f"c{mode}.mrc"
    if mode == 4:
        with mrcfile.new(p) as m:
            m.set_data((np.ones((3, 4, 5)) + 1j).astype(np.complex64))
    else:  # mrcfile cannot write mode 3 (two int16 per voxel, 4 bytes): patch a float32 file's mode
        _mrc(p, np.ones((3, 4, 5), np.float32))
        _patch(p, 12, "<i", 3)
    with pytest.raises(FormatError, match="complex") as e:
        tc.open_volume(p)
    _one_line(e, p)
    with pytest.raises(FormatError, match="complex"):
        convert(p, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


# --- item 12: nonsense refused ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -10.0, float("nan"), float("inf"), "abc"])
def test_voxel_size_argument_refused(tmp_path, bad):
    for out in ("v.mrc", "v.zarr"):
        with pytest.raises(ValueProblem, match="voxel_size") as e:
            tc.write_volume(np.zeros((4, 4, 4), np.float32), tmp_path / out, voxel_size=bad)
        _one_line(e)
        assert not (tmp_path / out).exists()
    with pytest.raises(ValueProblem, match="voxel_size"):
        export_meshes(np.ones((4, 4, 4), np.uint8), tmp_path / "m", voxel_size=bad)


def test_voxel_size_attr_refused(tmp_path):
    arr = xr.DataArray(np.zeros((4, 4, 4), np.float32), dims=("z", "y", "x"), attrs={"voxel_size": 0.0})
    with pytest.raises(ValueProblem, match="voxel_size"):
        tc.write_volume(arr, tmp_path / "v.mrc")


def test_mrc_header_voxel_size(tmp_path, vol):
    """Cell size 0 means 'not set' in MRC: 1 Å with a warning; a negative or NaN one is refused."""
    p = _mrc(tmp_path / "unset.mrc", vol, 0.0)
    with pytest.warns(TomochunkWarning, match="no voxel size"):
        assert tc.open_volume(p).attrs["voxel_size"] == 1.0
    for bad in (-5.0, float("nan")):
        p = _mrc(tmp_path / "bad.mrc", vol, 1.0)
        _patch(p, 40, "<fff", bad * 9, bad * 7, bad * 6)
        with pytest.raises(FormatError, match="voxel size") as e:
            tc.open_volume(p)
        _one_line(e, p)


@pytest.mark.parametrize("bad", [0, -1.0, "nan"])
def test_h5_voxel_size_attr_nonsense_refused(tmp_path, vol, bad):
    p = tmp_path / "t.h5"
    with h5py.File(p, "w") as f:
        f["dataset"] = vol
        f["dataset"].attrs["voxel_size"] = bad
    with pytest.raises(FormatError, match="voxel_size") as e:
        tc.open_volume(p)
    _one_line(e, p)


@pytest.mark.parametrize("bad", [-8, 0, (8, 8), (8, -8, 8)])
def test_chunks_refused(tmp_path, vol, bad):
    with pytest.raises(ValueProblem, match="chunks") as e:
        tc.write_volume(vol, tmp_path / "c.zarr", chunks=bad)
    _one_line(e)
    assert not (tmp_path / "c.zarr").exists()
    p = _mrc(tmp_path / "t.mrc", vol)
    with pytest.raises(ValueProblem, match="chunks"):
        tc.open_volume(p, chunks=bad)


# --- item 13: no raw tracebacks ----------------------------------------------------------------

@pytest.mark.parametrize("attr,expected", [("10 A", 10.0), ("10Å", 10.0), (b"1.5 nm", 15.0),
                                           ("7.25", 7.25), (np.array([4.0, 4.0, 4.0]), 4.0)])
def test_h5_voxel_size_text(tmp_path, vol, attr, expected):
    p = tmp_path / "t.h5"
    with h5py.File(p, "w") as f:
        f["dataset"] = vol
        f.attrs["voxel_size"] = attr
    assert tc.open_volume(p).attrs["voxel_size"] == pytest.approx(expected)


def test_h5_voxel_size_garbage(tmp_path, vol):
    p = tmp_path / "t.h5"
    with h5py.File(p, "w") as f:
        f["dataset"] = vol
        f["dataset"].attrs["voxel_size"] = "ten angstrom"
    with pytest.raises(FormatError, match="voxel_size") as e:
        tc.open_volume(p)
    _one_line(e, p)


# --- item 8: class names from data never leave -o ---------------------------------------------

def test_mesh_class_names_cannot_escape(tmp_path):
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:8, 2:8, 2:8] = 1
    lab[10:17, 10:17, 10:17] = 2
    lab[2:8, 12:18, 2:8] = 3
    evil = {"1": "../../ESCAPED", "2": str(tmp_path / "abs" / "ESCAPED2"), "3": "x\nv 0 0 0\nf 1 1 1"}
    arr = xr.DataArray(lab, dims=("z", "y", "x"), attrs={"classes": evil, "voxel_size": 2.0})
    out = tmp_path / "a" / "b" / "out"
    df = export_meshes(arr, out)
    assert len(df) == 3
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(out in p.parents for p in written), written
    assert not (tmp_path / "a" / "ESCAPED_0001.obj").exists() and not (tmp_path / "abs").exists()
    # one .obj file: group names from data cannot inject vertex or face lines
    single = tmp_path / "all.obj"
    export_meshes(arr, single)
    lines = single.read_text().splitlines()
    groups = [ln for ln in lines if ln.startswith("o ")]
    assert len(groups) == 3 and all("/" not in g and ".." not in g for g in groups)
    n_v = sum(ln.startswith("v ") for ln in lines)
    assert n_v == int(df.n_vertices.sum())
    assert all(ln.split()[0] in {"#", "o", "v", "f"} for ln in lines)


def test_mesh_class_name_that_is_only_dots_refused(tmp_path):
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[2:8, 2:8, 2:8] = 1
    arr = xr.DataArray(lab, dims=("z", "y", "x"), attrs={"classes": {"1": "../.."}})
    with pytest.raises(ValueProblem, match="class name") as e:
        export_meshes(arr, tmp_path / "o")
    _one_line(e)
    assert not list(tmp_path.rglob("*.obj"))


# --- item 13: bad outputs -----------------------------------------------------------------------

def test_write_volume_bad_outputs(tmp_path, vol):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueProblem, match="output folder") as e:
        tc.write_volume(vol, tmp_path / "afile" / "out.mrc")
    _one_line(e, tmp_path / "afile")
    (tmp_path / "dir.mrc").mkdir()
    with pytest.raises(TomochunkError, match="folder") as e:
        tc.write_volume(vol, tmp_path / "dir.mrc", overwrite=True)
    _one_line(e, tmp_path / "dir.mrc")
    out = tc.write_volume(vol, tmp_path / "new" / "deeper" / "v.mrc")  # a missing parent is made
    with mrcfile.open(out) as m:
        np.testing.assert_array_equal(m.data, vol)


def test_write_volume_transposes_dataarray_in_xyz_order(tmp_path, vol):
    arr = xr.DataArray(vol.transpose(2, 1, 0), dims=("x", "y", "z"), attrs={"voxel_size": 3.0})
    for name in ("t.mrc", "t.zarr"):
        v = tc.open_volume(tc.write_volume(arr, tmp_path / name))
        assert v.dims == ("z", "y", "x")
        np.testing.assert_array_equal(v.values, vol)


def test_integer_index_of_a_lazy_mrc_drops_the_axis(tmp_path):
    """dask fuses ``x[16]`` into the source's getter: the source must drop the axis as numpy does."""
    import numpy as np

    import tomochunk as tc

    a = np.random.default_rng(0).random((8, 16, 12)).astype("float32")
    tc.write_volume(a, tmp_path / "x.mrc", voxel_size=10)
    v = tc.open_volume(tmp_path / "x.mrc")
    for k in [3, (slice(None), 5), (Ellipsis, 7), (slice(2, 4),)]:
        got = v.data[k].compute()
        assert got.shape == a[k].shape and np.array_equal(got, a[k])
