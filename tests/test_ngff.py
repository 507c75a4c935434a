"""NGFF 0.4 and 0.5 as other tools read them (issue 20): ome-zarr-models validates our image and
label groups; labels follow the store's format; origins, half-voxel and foreign transforms."""

import importlib
import json

import mrcfile
import numpy as np
import pytest
import xarray as xr
import zarr

import tomochunk as tc
from tomochunk.cli import main
from tomochunk.workflows.segment import write_segmentation

pytest.importorskip("ome_zarr_models")


def _models(ngff):
    v = "v04" if ngff == "0.4" else "v05"
    mod = {n: importlib.import_module(f"ome_zarr_models.{v}.{n}") for n in ("image", "labels", "image_label")}
    return mod["image"].Image, mod["labels"].Labels, mod["image_label"].ImageLabel


def _mrc(path, data, voxel_size=10.0, origin=None, start=None):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel_size
        if origin is not None:
            m.header.origin = origin
        if start is not None:
            m.header.nxstart, m.header.nystart, m.header.nzstart = start
    return path


def _scores(shape, classes=None):
    rng = np.random.default_rng(0)
    return xr.DataArray(rng.random((3,) + shape, np.float32), dims=("c", "z", "y", "x"),
                        attrs={"voxel_size": 10.0, **({"classes": classes} if classes else {})})


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ome_zarr_models_validate_image_and_labels(tmp_path, ngff):
    Image, Labels, ImageLabel = _models(ngff)
    vol = np.random.default_rng(1).normal(size=(16, 24, 20)).astype(np.float32)
    store = tmp_path / "t.zarr"
    tc.convert(_mrc(tmp_path / "t.mrc", vol, origin=(100.0, 200.0, 300.0)), store, chunks=8, levels=3, ngff=ngff)
    write_segmentation(_scores(vol.shape, {1: "ribosome", 2: "membrane"}), store, chunks=8)  # the image's 3 levels
    Image.from_zarr(zarr.open_group(str(store), mode="r"))
    Labels.from_zarr(zarr.open_group(str(store / "labels"), mode="r"))
    il = ImageLabel.from_zarr(zarr.open_group(str(store / "labels" / "classes"), mode="r"))
    Image.from_zarr(zarr.open_group(str(store / "labels" / "scores"), mode="r"))
    assert il is not None


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_labels_follow_the_store_format(tmp_path, ngff):
    store = tmp_path / "t.zarr"
    tc.write_volume(np.zeros((16, 16, 16), np.float32), store, chunks=8, levels=2, ngff=ngff)
    write_segmentation(_scores((16, 16, 16), {1: "ribo", 2: "actin"}), store, chunks=8, levels=2)
    lab, cls = store / "labels", store / "labels" / "classes"
    if ngff == "0.5":
        assert json.loads((lab / "zarr.json").read_text())["zarr_format"] == 3
        attrs = zarr.open_group(str(cls), mode="r").attrs.asdict()["ome"]
        assert zarr.open_group(str(lab), mode="r").attrs["ome"]["labels"] == ["classes"]
        assert zarr.open_array(str(cls / "0"), mode="r").metadata.dimension_names == ("z", "y", "x")
        assert not (lab / ".zgroup").exists()
    else:
        assert (lab / ".zgroup").exists() and not (lab / "zarr.json").exists()
        attrs = json.loads((cls / ".zattrs").read_text())
        assert json.loads((lab / ".zattrs").read_text())["labels"] == ["classes"]
    il = attrs["image-label"]
    assert il["properties"] == [{"label-value": 1, "class": "ribo"}, {"label-value": 2, "class": "actin"}]
    assert [c["label-value"] for c in il["colors"]] == [1, 2] and all(len(c["rgba"]) == 4 for c in il["colors"])
    assert il["source"]["image"] == "../../"
    # our own readers see the same store
    v = tc.open_volume(cls)
    assert v.shape == (16, 16, 16) and v.dtype == np.uint8


def test_ngff_mismatch_refused(tmp_path):
    store = tmp_path / "t.zarr"
    tc.write_volume(np.zeros((8, 8, 8), np.float32), store, chunks=8, levels=1, ngff="0.5")
    with pytest.raises(tc.ValueProblem, match="NGFF 0.5"):
        write_segmentation(_scores((8, 8, 8)), store, ngff="0.4")


def test_cli_convert_ngff_05(tmp_path, capsys):
    src = _mrc(tmp_path / "t.mrc", np.ones((8, 16, 16), np.float32))
    assert main(["convert", str(src), "-o", str(tmp_path / "out"), "--ngff", "0.5", "--levels", "2"]) == 0
    meta = json.loads((tmp_path / "out" / "t.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["ome"]["version"] == "0.5"
    _models("0.5")[0].from_zarr(zarr.open_group(str(tmp_path / "out" / "t.zarr"), mode="r"))


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_mrc_origin_becomes_translation_with_half_voxels(tmp_path, ngff):
    vol = np.random.default_rng(2).normal(size=(8, 12, 16)).astype(np.float32)
    store = tmp_path / "t.zarr"
    tc.convert(_mrc(tmp_path / "t.mrc", vol, voxel_size=10.0, origin=(1000.0, 2000.0, 3000.0)), store,
               chunks=8, levels=3, ngff=ngff)
    g = zarr.open_group(str(store), mode="r").attrs.asdict()
    ms = (g["ome"] if ngff == "0.5" else g)["multiscales"][0]
    tr = [d["coordinateTransformations"][1]["translation"] for d in ms["datasets"]]
    # z, y, x; level k is the mean of 2**k voxels: its first voxel sits (2**k - 1) / 2 voxels further
    assert tr == [[3000.0, 2000.0, 1000.0], [3005.0, 2005.0, 1005.0], [3015.0, 2015.0, 1015.0]]
    for k in range(3):
        v = tc.open_volume(store, level=k)
        assert v.attrs["origin"] == tuple(tr[k])
        assert float(v.x[0]) == tr[k][2] and float(v.x[1] - v.x[0]) == 10.0 * 2 ** k
    # strided label levels keep level-0 voxels: no half-voxel shift
    write_segmentation(_scores(vol.shape) .assign_attrs(origin=[3000.0, 2000.0, 1000.0]), store, chunks=8,
                       levels=2)
    lg = zarr.open_group(str(store / "labels" / "classes"), mode="r").attrs.asdict()
    lms = (lg["ome"] if ngff == "0.5" else lg)["multiscales"][0]
    assert [d["coordinateTransformations"][1]["translation"] for d in lms["datasets"]] == [[3000.0, 2000.0, 1000.0]] * 2


def test_mrc_nxstart_when_origin_is_zero(tmp_path):
    store = tmp_path / "t.zarr"
    tc.convert(_mrc(tmp_path / "t.mrc", np.zeros((4, 4, 4), np.float32), voxel_size=2.0, start=(5, 6, 7)), store,
               levels=1)
    assert tc.open_volume(store).attrs["origin"] == (14.0, 12.0, 10.0)


def test_origin_back_to_the_mrc_header(tmp_path):
    store = tmp_path / "t.zarr"
    tc.convert(_mrc(tmp_path / "t.mrc", np.zeros((4, 4, 4), np.float32), origin=(1000.0, 2000.0, 3000.0)), store,
               levels=1)
    tc.write_volume(tc.open_volume(store), tmp_path / "back.mrc")
    with mrcfile.open(tmp_path / "back.mrc", header_only=True) as m:
        assert (float(m.header.origin.x), float(m.header.origin.y), float(m.header.origin.z)) == (1000, 2000, 3000)


def test_foreign_store_per_axis_transforms_at_every_level(tmp_path):
    """A store written by another tool: anisotropic scale, translations, a multiscale-level transform."""
    p = tmp_path / "foreign.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=2)
    data = np.arange(8 * 8 * 8, dtype=np.uint16).reshape(8, 8, 8)
    for k in range(2):
        g.create_array(str(k), shape=(8 // 2 ** k,) * 3, chunks=(4, 4, 4), dtype=np.uint16)[:] = data[::2 ** k, ::2 ** k, ::2 ** k]
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [3.0 * 2 ** k, 1.0 * 2 ** k, 1.5 * 2 ** k]},
            {"type": "translation", "translation": [0.0, 0.5 * k, 0.25 * k]}]} for k in range(2)],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]}]
    _models("0.4")[0].from_zarr(zarr.open_group(str(p), mode="r"))  # a valid store
    for k in range(2):
        v = tc.open_volume(p, level=k)
        # nanometre axes: coordinates are in Å (x 10)
        sz, sy, sx = (10 * 2.0 * s * 2 ** k for s in (3.0, 1.0, 1.5))
        assert float(v.z[1] - v.z[0]) == sz and float(v.y[1] - v.y[0]) == sy and float(v.x[1] - v.x[0]) == sx
        assert (float(v.z[0]), float(v.y[0]), float(v.x[0])) == (0.0, 10 * 2.0 * 0.5 * k, 10 * 2.0 * 0.25 * k)


def test_zarr_requirement_matches_the_code():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    want = re.search(r'"zarr>=([0-9.]+)"', text).group(1)
    assert int(want.split(".")[0]) >= 3  # the writers use zarr 3's create_array(zarr_format=...)
    assert int(zarr.__version__.split(".")[0]) >= 3
