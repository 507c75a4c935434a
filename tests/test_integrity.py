"""Stores under hostile conditions: aliasing, resumes from other sources, missing and corrupted chunks,
unreadable paths, leftovers (issue 19 items 2, 4, 6, 12, 14)."""

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import zarr

import tomochunk as tc
from tomochunk import ExistsError, FormatError, IncompleteError, ShapeError, ValueProblem
from tomochunk.cli import main
from tomochunk.io.omezarr import PROGRESS_FILE, PyramidWriter


@pytest.fixture
def vol():
    return np.random.default_rng(3).normal(size=(20, 34, 27)).astype(np.float32)


def _mrc(path, data, voxel_size=5.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel_size
    return path


def _one_line(exc, path):
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg


# --- item 2: outputs never alias inputs -----------------------------------------------

def test_cli_convert_onto_itself_is_refused_before_deleting(tmp_path, vol, capsys):
    z = tmp_path / "z"
    tc.convert(_mrc(tmp_path / "t.mrc", vol), z / "t.zarr", chunks=16)
    assert main(["convert", str(z / "t.zarr"), "-o", str(z), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its own input" in err[0] and "Traceback" not in err[0]
    np.testing.assert_array_equal(tc.open_volume(z / "t.zarr").values, vol)  # untouched


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_convert_alias_refused(tmp_path, vol, where):
    src = tc.convert(_mrc(tmp_path / "t.mrc", vol), tmp_path / "a.zarr", chunks=16) and tmp_path / "a.zarr"
    dst = {"same": src, "inside": src / "sub.zarr", "holds": tmp_path}[where]
    with pytest.raises(ValueProblem, match="own input") as e:
        tc.convert(src, dst, overwrite=True)
    _one_line(e, dst)
    np.testing.assert_array_equal(tc.open_volume(src).values, vol)


def test_write_volume_reading_its_own_target_is_refused(tmp_path, vol):
    p = tmp_path / "t.zarr"
    tc.write_volume(vol, p, chunks=16)
    with pytest.raises(ValueProblem, match="own input") as e:
        tc.write_volume(tc.open_volume(p) * 1, p, overwrite=True)
    _one_line(e, p)
    np.testing.assert_array_equal(tc.open_volume(p).values, vol)
    # from an MRC that lies inside the output folder too
    m = _mrc(tmp_path / "d.zarr" / "x.mrc", vol)
    with pytest.raises(ValueProblem, match="own input"):
        tc.write_volume(tc.open_volume(m) + 1, tmp_path / "d.zarr", overwrite=True)
    assert m.exists()


# --- item 4: resume keyed to the source ------------------------------------------------

def _interrupt(monkeypatch, src, dst, after=4, **kw):
    import tomochunk.io.convert as conv

    real = conv.open_source
    calls = []

    class Failing:
        def __init__(self, inner):
            self.inner, self.shape, self.dtype = inner, inner.shape, inner.dtype

        def __getitem__(self, region):
            calls.append(region)
            if len(calls) > after:
                raise KeyboardInterrupt
            return self.inner[region]

    monkeypatch.setattr(conv, "open_source", lambda *a, **k: (Failing(real(*a, **k)[0]), real(*a, **k)[1]))
    with pytest.raises(KeyboardInterrupt):
        tc.convert(src, dst, chunks=8, levels=2, threads=1, **kw)
    monkeypatch.setattr(conv, "open_source", real)


def test_resume_from_another_source_is_refused(tmp_path, vol, monkeypatch):
    a = _mrc(tmp_path / "A" / "tomo.mrc", vol)
    b = _mrc(tmp_path / "B" / "tomo.mrc", vol[::-1].copy())  # same name and shape, other data
    mix = tmp_path / "mix" / "tomo.zarr"
    _interrupt(monkeypatch, a, mix)
    with pytest.raises(ExistsError, match="incomplete store written from .*A/tomo.mrc") as e:
        tc.convert(b, mix, chunks=8, levels=2)
    _one_line(e, mix)
    tc.convert(b, mix, chunks=8, levels=2, overwrite=True)  # starts afresh
    np.testing.assert_array_equal(tc.open_volume(mix).values, vol[::-1])
    assert json.loads((mix / ".zattrs").read_text())["tomochunk"]["source"]["path"] == str(b.resolve())


def test_resume_of_a_changed_source_is_refused(tmp_path, vol, monkeypatch):
    a = _mrc(tmp_path / "tomo.mrc", vol)
    out = tmp_path / "tomo.zarr"
    _interrupt(monkeypatch, a, out)
    _mrc(a, vol + 1)  # rewritten between the runs
    with pytest.raises(ExistsError, match="changed since"):
        tc.convert(a, out, chunks=8, levels=2)


def test_resume_with_other_parameters_is_refused(tmp_path, vol, monkeypatch):
    a = _mrc(tmp_path / "tomo.mrc", vol)
    out = tmp_path / "tomo.zarr"
    _interrupt(monkeypatch, a, out)
    with pytest.raises(ExistsError, match="overwrite"):
        tc.convert(a, out, chunks=16, levels=2)
    tc.convert(a, out, chunks=8, levels=2)  # same parameters: resumed
    np.testing.assert_array_equal(tc.open_volume(out, level=0).values, vol)


def test_complete_store_of_same_source_is_returned(tmp_path, vol):
    a = _mrc(tmp_path / "tomo.mrc", vol)
    out = tmp_path / "tomo.zarr"
    stats = tc.convert(a, out, chunks=16)
    mtime = (out / ".zattrs").stat().st_mtime_ns
    assert tc.convert(a, out, chunks=16) == stats
    assert (out / ".zattrs").stat().st_mtime_ns == mtime  # nothing rewritten


# --- item 6: missing and corrupted chunks ----------------------------------------------

@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_missing_chunk_in_a_complete_store_is_an_error(tmp_path, vol, ngff):
    out = tmp_path / "t.zarr"
    tc.convert(_mrc(tmp_path / "t.mrc", vol), out, chunks=8, levels=2, ngff=ngff)
    chunk = out / "0" / ("1/1/1" if ngff == "0.4" else "c/1/1/1")
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(FormatError, match="missing 0/") as e:
        tc.open_volume(out)
    _one_line(e, out)
    with pytest.raises(FormatError):  # convert does not copy the damage into a complete store
        tc.convert(out, tmp_path / "copy.zarr")
    assert not (tmp_path / "copy.zarr").exists()


def test_all_zero_chunks_are_written_so_nothing_is_missing(tmp_path):
    out = tmp_path / "z.zarr"
    tc.write_volume(np.zeros((16, 16, 16), np.uint8), out, chunks=8, levels=2, ngff="0.5")
    np.testing.assert_array_equal(tc.open_volume(out).values, 0)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_labels_with_all_background_coarse_levels_are_whole(tmp_path, ngff):
    """The cause of a flaky test_pipeline failure ("array '2' has 0 of its 1 chunk files"): labels
    whose only objects sit on odd voxels have all-zero 2x and 4x levels; zarr dropped the
    ``write_empty_chunks`` setting when the writer reopened the arrays, so those chunks got no file
    and the completed store read as damaged."""
    import xarray as xr

    from tomochunk.workflows.segment import write_segmentation

    scores = np.zeros((2, 16, 16, 16), np.float32)
    scores[0] = 1.0
    scores[1, 1, 3, 5] = 2.0  # one class-1 voxel, at odd coordinates: no coarse level samples it
    out = tmp_path / "t.zarr"
    write_segmentation(xr.DataArray(scores, dims=("c", "z", "y", "x")), out, chunks=8, levels=3, ngff=ngff)
    classes = out / "labels" / "classes"
    tc.io.omezarr.check_complete(classes)  # no chunk reported missing
    sub = (lambda k: f"{k}/0/0/0") if ngff == "0.4" else (lambda k: f"{k}/c/0/0/0")
    assert all((classes / sub(k)).is_file() for k in range(3))
    lab = tc.open_volume(classes).values
    assert lab.sum() == 1 and lab[1, 3, 5] == 1
    np.testing.assert_array_equal(tc.open_volume(classes, level=2).values, 0)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])  # 0.5: chunks go through zarr, the path that dropped them
def test_resumed_pyramid_writes_all_zero_chunks(tmp_path, monkeypatch, ngff):
    """A resume reopens the arrays; zero chunks it writes then must still get their files."""
    zeros = np.zeros((16, 16, 16), np.float32)
    a = _mrc(tmp_path / "zeros.mrc", zeros)
    out = tmp_path / "zeros.zarr"
    _interrupt(monkeypatch, a, out, after=2, ngff=ngff)
    tc.convert(a, out, chunks=8, levels=2, ngff=ngff)
    tc.io.omezarr.check_complete(out)
    files = [f for f in (out / "0").rglob("*") if f.is_file() and not f.name.startswith(".") and f.name != "zarr.json"]
    assert len(files) == 8
    np.testing.assert_array_equal(tc.open_volume(out).values, 0)


def test_corrupted_chunk_is_a_format_error_naming_store_and_chunk(tmp_path, vol):
    out = tmp_path / "t.zarr"
    tc.convert(_mrc(tmp_path / "t.mrc", vol), out, chunks=8, levels=2, compression=True)
    (out / "0" / "1" / "0" / "2").write_bytes(b"not blosc at all")
    v = tc.open_volume(out)
    with pytest.raises(FormatError, match=r"corrupted chunk 0/1/0/2") as e:
        v.values
    _one_line(e, out)
    with pytest.raises(FormatError, match=r"corrupted chunk 0/1/0/2"):  # and not a raw blosc error in convert
        tc.convert(out, tmp_path / "copy.zarr")


# --- item 14: messages and leftovers ---------------------------------------------------

def test_unreadable_paths_say_what_is_wrong(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(FormatError, match="not a Zarr store") as e:
        tc.open_volume(empty)
    _one_line(e, empty)
    plain = tmp_path / "plain.zarr"
    plain.write_text("hello")
    with pytest.raises(FormatError, match="not a Zarr store"):
        tc.open_volume(plain)
    bad = tmp_path / "bad.zarr"
    zarr.open_group(str(bad), mode="w", zarr_format=2)
    (bad / ".zattrs").write_text("{not json")
    with pytest.raises(FormatError, match=r"invalid JSON in \.zattrs") as e:
        tc.open_volume(bad)
    assert "incomplete" not in str(e.value)


def test_no_tmp_files_after_a_resumed_run_completes(tmp_path, vol, monkeypatch):
    a = _mrc(tmp_path / "tomo.mrc", vol)
    out = tmp_path / "tomo.zarr"
    _interrupt(monkeypatch, a, out)
    (out / "0" / "0").mkdir(parents=True, exist_ok=True)
    (out / "0" / "0" / ".1.140000.tmp").write_bytes(b"torn")  # what a kill -9 leaves
    (out / PROGRESS_FILE / ".0.0.0.1.9.9.tmp").write_text("")
    tc.convert(a, out, chunks=8, levels=2)
    left = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]
    assert left == [] and not (out / PROGRESS_FILE).exists()


def test_incomplete_store_message(tmp_path, vol):
    w = PyramidWriter(tmp_path / "t.zarr", vol.shape, vol.dtype, dims="zyx", chunks=8, levels=1)
    with pytest.raises(IncompleteError, match="incomplete"):
        tc.open_volume(tmp_path / "t.zarr")
    w.write(lambda r: vol[r])
    w.finish()
    np.testing.assert_array_equal(tc.open_volume(tmp_path / "t.zarr").values, vol)


def test_output_that_is_not_a_store_is_never_deleted(tmp_path, vol):
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ExistsError, match="not a Zarr store"):
        tc.convert(_mrc(tmp_path / "t.mrc", vol), folder, overwrite=True)
    assert (folder / "keep.txt").exists()


# --- item 12: write_segmentation's output ----------------------------------------------

def test_write_segmentation_refuses_other_shapes_and_non_stores(tmp_path):
    import xarray as xr

    from tomochunk.workflows.segment import write_segmentation

    tc.write_volume(np.zeros((16, 16, 16), np.float32), tmp_path / "img.zarr", chunks=8, levels=1)
    scores = xr.DataArray(np.random.default_rng(0).random((2, 32, 64, 64), np.float32), dims=("c", "z", "y", "x"))
    with pytest.raises(ShapeError, match=r"\(32, 64, 64\).*\(16, 16, 16\)") as e:
        write_segmentation(scores, tmp_path / "img.zarr")
    _one_line(e, tmp_path / "img.zarr")
    assert not (tmp_path / "img.zarr" / "labels").exists()
    with pytest.raises(ValueProblem, match="OME-Zarr store") as e:
        write_segmentation(scores, tmp_path / "out.mrc")
    _one_line(e, tmp_path / "out.mrc")
    assert not (tmp_path / "out.mrc").exists()


def test_write_segmentation_resume_keyed_to_its_inputs(tmp_path):
    import xarray as xr

    from tomochunk.workflows.segment import write_segmentation

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        s = xr.DataArray(rng.random((2, 16, 16, 16), np.float32), dims=("c", "z", "y", "x"))
        tc.write_volume(s, tmp_path / f"{name}.zarr", chunks=8, levels=1)
    a, b = tc.open_volume(tmp_path / "a.zarr"), tc.open_volume(tmp_path / "b.zarr")

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][1:] == (1, 1, 1):
            raise RuntimeError("simulated crash")
        return block

    bad = a.copy(data=a.data.rechunk((2, 8, 8, 8)).map_blocks(boom, dtype=np.float32))
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_segmentation(bad, out, chunks=8, levels=2)
    with pytest.raises(ExistsError, match="written from") as e:
        write_segmentation(b, out, chunks=8, levels=2)
    _one_line(e, out / "labels" / "scores")
    write_segmentation(a, out, chunks=8, levels=2)  # the same inputs: resumed
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels" / "classes" / "0"))[:],
                                  np.argmax(a.values, axis=0))


def test_store_killed_while_created_is_never_read_as_complete(tmp_path, vol, monkeypatch):
    """A kill after the group appeared but before its arrays (and, once, its record) were written
    left a group without record: a "foreign", hence complete, store that `run` then skipped."""
    import zarr.core.group as zg

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zg.Group, "create_array", killed)
    src, out = _mrc(tmp_path / "t.mrc", vol), tmp_path / "t.zarr"
    with pytest.raises(KeyboardInterrupt):
        tc.convert(src, out, chunks=8, levels=2)
    monkeypatch.undo()
    assert not tc.io.omezarr.is_complete(out)
    with pytest.raises(IncompleteError):
        tc.open_volume(out)
    tc.convert(src, out, chunks=8, levels=2)  # resumed
    np.testing.assert_array_equal(tc.open_volume(out).values, vol)


def test_region_whose_scores_fail_to_write_is_not_recorded(tmp_path, monkeypatch):
    """The scores of a region are written from a second thread: its failure must still fail the
    task and leave the region out of the progress record, so a rerun writes it."""
    import dask
    import xarray as xr

    from tomochunk.io import omezarr
    from tomochunk.workflows.segment import PROGRESS_DIR, write_segmentation

    s = xr.DataArray(np.random.default_rng(1).random((2, 16, 16, 16), np.float32), dims=("c", "z", "y", "x"))
    real = omezarr.open_for_write

    def failing(path):
        if Path(path).parent.name == "scores":
            raise OSError("disk full")
        return real(path)

    def no_client():
        raise ValueError("no client")

    # in this process, where the patch applies, even after tests that leave a default client
    monkeypatch.setattr("distributed.default_client", no_client)
    monkeypatch.setattr(omezarr, "open_for_write", failing)
    out = tmp_path / "out.zarr"
    with pytest.raises(OSError, match="disk full"), dask.config.set(scheduler="threads"):
        write_segmentation(s, out, chunks=8, levels=1)
    progress = out / "labels" / PROGRESS_DIR
    assert not progress.exists() or not any(progress.iterdir())
    monkeypatch.setattr(omezarr, "open_for_write", real)
    write_segmentation(s, out, chunks=8, levels=1)  # resumed: every region written
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels" / "scores" / "0"))[:],
                                  s.values.astype(np.float16))
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels" / "classes" / "0"))[:],
                                  np.argmax(s.values, axis=0))
