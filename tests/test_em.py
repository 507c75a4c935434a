"""Issue 20, volume side: TOM/PyTOM .em volumes, and MRC origin / start indices kept through open and write.

The EM files are checked against emfile (its own writer and reader) and against the
format definition byte by byte (TOM's tom_emread.m layout); the MRC headers against
mrcfile's own header fields.
"""

import struct

import emfile
import mrcfile
import numpy as np
import pytest
import xarray as xr

import tomochunk as tc
from tomochunk.errors import FormatError, ShapeError, TomochunkError
from tomochunk.io._source import TomochunkWarning
from tomochunk.io.em import em_header_params


@pytest.fixture
def vol(rng):
    return rng.normal(size=(6, 7, 9)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int8, np.int32, np.float64])
def test_em_written_by_emfile_opens(tmp_path, rng, dtype):
    data = (rng.normal(size=(5, 6, 7)) * 50).astype(dtype)
    p = tmp_path / "t.em"
    emfile.write(p, data, em_header_params(OBJ=1350))  # 1.35 nm = 13.5 Å
    v = tc.open_volume(p)
    assert v.dims == ("z", "y", "x") and v.dtype == dtype
    np.testing.assert_array_equal(v.values, data)
    np.testing.assert_array_equal(v[1:4, 2:5, 3:6].values, data[1:4, 2:5, 3:6])
    assert v.attrs["voxel_size"] == pytest.approx(13.5)
    assert float(v.x[1]) == pytest.approx(13.5)


def test_em_without_pixel_size_warns(tmp_path, vol):
    p = tmp_path / "t.em"
    emfile.write(p, vol)  # emfile's plain call: no header parameters
    with pytest.warns(TomochunkWarning, match="pixel size"):
        v = tc.open_volume(p)
    assert v.attrs["voxel_size"] == 1.0
    np.testing.assert_array_equal(v.values, vol)


@pytest.mark.parametrize("dtype,stored", [(np.float32, np.float32), (np.uint8, np.int16), (np.uint16, np.int32),
                                          (np.int64, np.int32), (np.bool_, np.int8)])
def test_write_volume_em_read_by_emfile(tmp_path, rng, dtype, stored):
    data = rng.integers(0, 200, (5, 6, 7)).astype(dtype)
    arr = xr.DataArray(data, dims=("z", "y", "x"), attrs={"voxel_size": 7.5})
    import dask.array as da

    arr = arr.copy(data=da.from_array(data, chunks=(2, 3, 4)))  # written block by block
    p = tc.write_volume(arr, tmp_path / "w.em")
    header, back = emfile.read(p)
    assert back.dtype == np.dtype(stored) and back.shape == data.shape
    np.testing.assert_array_equal(back, data.astype(stored))
    assert header["OBJ"] == 750 and (header["xdim"], header["ydim"], header["zdim"]) == (7, 6, 5)
    # the format definition, byte by byte: machine 6 (PC), type code, dims, data at 512
    raw = p.read_bytes()
    code = {np.float32: 5, np.int16: 2, np.int32: 4, np.int8: 1}[stored]
    assert raw[0] == 6 and raw[3] == code
    assert struct.unpack("<3i", raw[4:16]) == (7, 6, 5)
    assert struct.unpack("<i", raw[96 + 24:100 + 24]) == (750,)
    assert len(raw) == 512 + data.size * np.dtype(stored).itemsize
    np.testing.assert_array_equal(np.frombuffer(raw[512:], np.dtype(stored).newbyteorder("<")).reshape(data.shape),
                                  data.astype(stored))
    np.testing.assert_array_equal(tc.open_volume(p).values, data.astype(stored))


def test_em_big_endian_and_bad_files(tmp_path, vol):
    """A big-endian (Mac/SGI) EM file: the header and data in '>' order, built from the format definition."""
    header = bytearray(512)
    header[0], header[3] = 5, 5
    header[4:16] = struct.pack(">3i", 9, 7, 6)
    header[120:124] = struct.pack(">i", 500)
    p = tmp_path / "be.em"
    p.write_bytes(bytes(header) + vol.astype(">f4").tobytes())
    v = tc.open_volume(p)
    np.testing.assert_array_equal(v.values, vol)
    assert v.attrs["voxel_size"] == 5.0
    for name, raw, match in (("trunc.em", p.read_bytes()[:600], "truncated"),
                             ("type.em", bytes(header[:3]) + b"\x08" + bytes(header[4:]) + bytes(8 * vol.size),
                              "complex"),
                             ("junk.em", b"\x99" * 700, "not an EM")):
        q = tmp_path / name
        q.write_bytes(raw)
        with pytest.raises(FormatError, match=match) as e:
            tc.open_volume(q)
        assert str(q) in str(e.value) and "\n" not in str(e.value)


def test_em_refuses_what_it_cannot_hold(tmp_path):
    big = np.zeros((2, 3, 4), np.int64)
    big[0, 0, 0] = 2**40
    with pytest.raises(ShapeError, match="int32") as e:
        tc.write_volume(big, tmp_path / "b.em")
    assert isinstance(e.value, TomochunkError) and not (tmp_path / "b.em").exists()
    with pytest.raises(ShapeError, match="complex"):
        tc.write_volume(np.zeros((2, 3, 4), np.complex64), tmp_path / "c.em")


# --- MRC origin and start indices ---------------------------------------------------------------

def _mrc(path, data, voxel_size=10.0, origin=(0.0, 0.0, 0.0), nstart=(0, 0, 0)):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel_size
        m.header.origin.x, m.header.origin.y, m.header.origin.z = origin
        m.header.nxstart, m.header.nystart, m.header.nzstart = nstart
    return path


def test_mrc_origin_and_nstart_kept(tmp_path, vol):
    p = _mrc(tmp_path / "o.mrc", vol, 10.0, origin=(1000.0, 2000.0, 3000.0), nstart=(5, 6, 7))
    v = tc.open_volume(p)
    assert v.attrs["origin"] == (3000.0, 2000.0, 1000.0)  # z, y, x Å
    assert v.attrs["mrc_nstart"] == (7, 6, 5)
    assert float(v.x[0]) == 1000.0 and float(v.y[0]) == 2000.0 and float(v.z[2]) == 3020.0
    out = tc.write_volume(v, tmp_path / "back.mrc")
    with mrcfile.open(out) as m:  # mrcfile's own header fields
        h = m.header
        assert (float(h.origin.x), float(h.origin.y), float(h.origin.z)) == (1000.0, 2000.0, 3000.0)
        assert (int(h.nxstart), int(h.nystart), int(h.nzstart)) == (5, 6, 7)
        assert float(m.voxel_size.x) == pytest.approx(10.0)
        np.testing.assert_array_equal(m.data, vol)


def test_mrc_nstart_only_gives_origin_and_round_trips(tmp_path, vol):
    """With no origin, the start indices place the volume (Chimera's rule), and the header is kept as it was."""
    p = _mrc(tmp_path / "s.mrc", vol, 4.0, nstart=(5, 6, 7))
    v = tc.open_volume(p)
    assert v.attrs["origin"] == (28.0, 24.0, 20.0)
    assert float(v.x[0]) == 20.0
    out = tc.write_volume(v, tmp_path / "back.mrc")
    with mrcfile.open(out) as m:
        h = m.header
        assert (float(h.origin.x), float(h.origin.y), float(h.origin.z)) == (0.0, 0.0, 0.0)
        assert (int(h.nxstart), int(h.nystart), int(h.nzstart)) == (5, 6, 7)


def test_origin_from_python_attrs_written(tmp_path, vol):
    arr = xr.DataArray(vol, dims=("z", "y", "x"), attrs={"voxel_size": 2.0, "origin": (30.0, 20.0, 10.0)})
    out = tc.write_volume(arr, tmp_path / "a.mrc")
    with mrcfile.open(out) as m:
        assert (float(m.header.origin.x), float(m.header.origin.z)) == (10.0, 30.0)
    assert tc.open_volume(out).attrs["origin"] == (30.0, 20.0, 10.0)


def test_no_origin_no_attr(tmp_path, vol):
    v = tc.open_volume(_mrc(tmp_path / "plain.mrc", vol))
    assert v.attrs["origin"] == (0.0, 0.0, 0.0) and v.attrs["mrc_nstart"] == (0, 0, 0)
    assert float(v.x[0]) == 0.0
