"""TIRF exocytosis workflow: cones, spot detection, merging, batch conversion, dataset manifest."""

import json

import numpy as np
import pandas as pd
import pytest

from tomochunk.errors import FormatError, MissingError, ValueProblem
from tomochunk.workflows import tirf

T, Y, X = 40, 64, 64


def _has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


needs_objects_io = pytest.mark.skipif(not _has("tomochunk.io.objects"), reason="object-list I/O not merged yet")


@pytest.fixture(scope="module")
def movie():
    """40x64x64 float movie, Gaussian noise, 30 Gaussian spots (sigma 1.5) at known places."""
    rng = np.random.default_rng(0)
    mov = rng.normal(100, 5, (T, Y, X)).astype(np.float32)
    yy, xx = np.mgrid[:Y, :X]
    truth = []
    for _ in range(30):
        t, y, x = int(rng.integers(0, T)), int(rng.integers(5, Y - 5)), int(rng.integers(5, X - 5))
        mov[t] += 60 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2))
        truth.append((x, y, t))
    return mov, pd.DataFrame(truth, columns=["x", "y", "z"]).astype(float)


def _events(rows):
    df = pd.DataFrame(rows, columns=["x", "y", "z"]).astype(float)
    df.insert(0, "class_label", 1)
    return df


def _recall(found, truth, r=1.5):
    from scipy.spatial import cKDTree

    if len(found) == 0:
        return 0.0
    d, _ = cKDTree(found[["x", "y", "z"]].to_numpy()).query(truth[["x", "y", "z"]].to_numpy())
    return float(np.mean(d <= r))


# --- event targets -----------------------------------------------------------------------

def test_event_cone_matches_exodeepfinder_mask():
    m = tirf.event_targets(_events([(10, 12, 3)]), (T, Y, X)).values
    assert m.dtype == np.uint8
    # disk r=4 (49 px), disk r=2 (13 px), one pixel; nothing before or after
    assert [int((m[t] > 0).sum()) for t in range(2, 7)] == [0, 49, 13, 1, 0]
    assert m[5, 12, 10] == 1 and m[3, 12, 14] == 1 and m[3, 12, 15] == 0
    assert m.sum() == 63


def test_event_targets_chunked_equals_whole_and_clips():
    ev = _events([(10, 12, 3), (62, 1, 39), (20, 20, 21), (23, 21, 22)])
    a = tirf.event_targets(ev, (T, Y, X), chunks=(7, 20, 20)).values
    b = tirf.event_targets(ev, (T, Y, X), chunks=(T, Y, X)).values
    np.testing.assert_array_equal(a, b)
    assert a[39].sum() > 0 and a[39].sum() < 49  # clipped at the corner and the last frame


def test_event_targets_radii_configurable_and_label():
    m = tirf.event_targets(_events([(30, 30, 0)]), (T, Y, X), radii=(1, 1, 1, 0), label=2).values
    assert [int((m[t] > 0).sum()) for t in range(5)] == [5, 5, 5, 1, 0]
    assert set(np.unique(m)) == {0, 2}


def test_event_targets_accepts_movie_for_shape(movie):
    assert tirf.event_targets(_events([(1, 1, 1)]), movie[0]).shape == (T, Y, X)


def test_annotation_with_wrong_class_names_file(tmp_path):
    ev = _events([(10, 12, 3), (20, 20, 5)])
    ev.loc[1, "class_label"] = 2
    with pytest.raises(FormatError, match="class label 2"):
        tirf.event_targets(ev, (T, Y, X))
    assert tirf.event_targets(ev, (T, Y, X), check_label=None).values.max() == 2


@needs_objects_io
def test_annotation_file_errors_name_the_file(tmp_path):
    p = tmp_path / "expert_annotation.csv"
    p.write_text("tomo_idx,class_label,x,y,z\n0,1,10,12,3\n0,2,20,20,5\n")
    with pytest.raises(FormatError, match="expert_annotation.csv.*class label 2"):
        tirf.event_targets(p, (T, Y, X))
    p.write_text("tomo_idx,class_label,x,y,z\n0,1,10,12,3\n0,1,20,70,5\n")
    with pytest.raises(FormatError, match="expert_annotation.csv.*outside the movie"):
        tirf.event_targets(p, (T, Y, X))
    p.write_text("tomo_idx,class_label,x,y,z\n0,1,10,12,40\n")
    with pytest.raises(FormatError, match="outside"):
        tirf.event_targets(p, (T, Y, X))


def test_event_outside_movie():
    with pytest.raises(FormatError, match="outside the movie"):
        tirf.event_targets(_events([(10, 12, -1)]), (T, Y, X))


# --- spot detection ------------------------------------------------------------------------

def test_detect_spots_finds_the_spots(movie, client):
    mov, truth = movie
    spots = tirf.detect_spots(mov, sigma=1.5, threshold=5, frames_per_block=16)
    assert list(spots.columns[:4]) == ["class_label", "x", "y", "z"]
    assert (spots["class_label"] == 1).all()
    assert _recall(spots, truth) == 1.0
    assert _recall(truth, spots) >= 0.9  # precision
    assert spots["score"].min() > 5


def test_detect_spots_tiles_and_labels(movie):
    mov, truth = movie
    spots, labels = tirf.detect_spots(mov, sigma=1.5, tile=24, frames_per_block=7, labels=True, spot_radius=2)
    assert _recall(spots, truth) == 1.0
    # no duplicates from the tile halos
    assert not spots.duplicated(["x", "y", "z"]).any()
    lab = labels.values
    assert lab.shape == (T, Y, X) and set(np.unique(lab)) <= {0, 1}
    assert ((lab > 0).sum(axis=(1, 2)) > 0).sum() >= len(set(truth["z"]))


def test_detect_spots_blob_log(movie):
    mov, truth = movie
    spots = tirf.detect_spots(mov[:10], method="blob_log", sigma=(1, 2), threshold=0.1)
    assert _recall(spots, truth[truth.z < 10]) == 1.0


def test_detect_spots_bad_method(movie):
    with pytest.raises(ValueProblem):
        tirf.detect_spots(movie[0], method="atlas")


def test_import_spots_from_label_map(tmp_path, movie):
    import tifffile

    lab = np.zeros((T, Y, X), np.uint8)
    lab[3, 10:13, 20:23] = 255
    lab[3, 40:42, 40:42] = 255
    lab[7, 5, 5] = 1
    p = tmp_path / "detector_segmentation.tif"
    tifffile.imwrite(p, lab)
    spots = tirf.import_spots(p)
    got = sorted(map(tuple, spots[["x", "y", "z", "size"]].to_numpy().tolist()))
    assert got == [(5, 5, 7, 1), (21, 11, 3, 9), (40.5, 40.5, 3, 4)]
    with pytest.raises(MissingError):
        tirf.import_spots(tmp_path / "nothing.csv")


# --- merging -----------------------------------------------------------------------------

def test_match_events_rules():
    spots = pd.DataFrame({"x": [10.0, 13.0, 10.0, 30.0], "y": [10.0, 14.0, 10.0, 30.0], "z": [5.0, 5.0, 9.0, 5.0]})
    ev = _events([(10, 10, 5)])
    # ExoDeepFinder: Euclidean in (x, y, t) <= 5
    assert tirf.match_events(spots, ev).tolist() == [True, True, True, False]
    assert tirf.match_events(spots, ev, match_frames=1).tolist() == [True, True, False, False]


def test_merge_removes_matched_spots_and_caps(movie):
    spots = pd.DataFrame({"class_label": 1, "x": np.arange(5.0, 60, 5), "y": 20.0, "z": 10.0})
    ev = _events([(10, 20, 10), (50, 50, 30)])
    labels, objs = tirf.merge_annotations(spots, ev, (T, Y, X), max_spots=4, seed=1)
    assert (objs["class_label"] == 2).sum() == 2
    kept = objs[objs.class_label == 1]
    assert len(kept) == 4 and not ((kept.x - 10).abs() <= 5).any()
    # same seed, same sample; another seed, another sample
    _, again = tirf.merge_annotations(spots, ev, (T, Y, X), max_spots=4, seed=1)
    _, other = tirf.merge_annotations(spots, ev, (T, Y, X), max_spots=4, seed=2)
    assert kept.x.tolist() == again[again.class_label == 1].x.tolist()
    assert kept.x.tolist() != other[other.class_label == 1].x.tolist()
    lab = labels.values
    # every remaining spot (not only the 4 listed) is class 1 in the map; events are class 2 cones
    assert lab[10, 20, 50] == 1 and lab[10, 20, 20] == 1
    assert lab[10, 20, 10] == 2 and lab[10, 20, 6] == 2  # the event's r=4 disk
    assert lab[10, 20, 5] == 0  # the matched spot at x=5 is gone
    assert (lab[30] == 2).sum() == 49 and (lab[31] == 2).sum() == 13 and (lab[32] == 2).sum() == 1


def test_merge_with_detector_label_map(tmp_path):
    det = np.zeros((T, Y, X), np.uint8)
    det[10, 15:26, 5:16] = 1  # the event as the detector saw it
    det[10, 40:43, 40:43] = 1  # a bright spot
    det[11, 40:43, 40:43] = 1
    ev = _events([(10, 20, 10)])
    labels, objs = tirf.merge_annotations(det, ev, (T, Y, X), chunks=(8, 32, 32))
    lab = labels.values
    assert lab[10, 41, 41] == 1 and lab[11, 41, 41] == 1
    assert lab[10, 20, 10] == 2 and lab[10, 15, 5] == 0  # component erased, corner outside the r=4 disk
    assert sorted(objs.class_label.tolist()) == [1, 1, 2]


@needs_objects_io
def test_merge_writes_both(tmp_path):
    from tomochunk.io.objects import read_objects
    from tomochunk.io.volume import open_volume

    spots = pd.DataFrame({"class_label": 1, "x": [30.0, 50.0], "y": 20.0, "z": 10.0})
    tirf.merge_annotations(spots, _events([(10, 20, 10)]), (T, Y, X), labels_path=tmp_path / "merged.zarr",
                           objects_path=tmp_path / "merged.xml")
    lab = open_volume(tmp_path / "merged.zarr").values
    assert lab.shape == (T, Y, X) and lab.max() == 2
    objs = read_objects(tmp_path / "merged.xml")
    assert sorted(objs.class_label.tolist()) == [1, 1, 2]


# --- segmentation -> events -----------------------------------------------------------------

@pytest.mark.skipif(not _has("tomochunk.ops.cluster"), reason="cluster not merged yet")
def test_events_from_segmentation(client):
    lab = tirf.merge_annotations(pd.DataFrame({"class_label": 1, "x": [50.0], "y": [50.0], "z": [5.0]}),
                                 _events([(10, 20, 10), (40, 20, 30)]), (T, Y, X))[0]
    ev = tirf.events_from_segmentation(lab, radius=5)
    assert len(ev) == 2 and (ev.class_label == 1).all()
    assert np.allclose(sorted(ev.x), [10, 40], atol=1.5)
    allv = tirf.events_from_segmentation(lab, keep=None, radius=5)
    assert sorted(allv.class_label.tolist()) == [1, 2, 2]
    cc = tirf.events_from_segmentation(lab, method="cc", radius=5)
    assert len(cc) == 2


def test_events_from_segmentation_refuses_floats():
    with pytest.raises(FormatError, match="integers"):
        tirf.events_from_segmentation(np.zeros((4, 8, 8), np.float32))


# --- batch conversion ---------------------------------------------------------------------

def _frames(folder, n, skip=None):
    import tifffile

    folder.mkdir(parents=True)
    for t in range(n):
        if t != skip:
            tifffile.imwrite(folder / f"frame{t:04d}.tif", np.full((16, 20), t, np.uint16))


def test_convert_movies_batch_skip_and_resume(tmp_path):
    from tomochunk.io.volume import open_volume

    _frames(tmp_path / "exp" / "cell1", 6)
    _frames(tmp_path / "exp" / "day2" / "cell2", 4)
    out = tmp_path / "zarr"
    res = tirf.convert_movies(tmp_path / "exp", out)
    assert sorted(v["status"] for v in res.values()) == ["converted", "converted"]
    m = open_volume(out / "day2" / "cell2.zarr")
    assert m.dims == ("t", "y", "x") and m.shape == (4, 16, 20)
    assert int(m[3, 0, 0]) == 3
    res = tirf.convert_movies(tmp_path / "exp", out)
    assert sorted(v["status"] for v in res.values()) == ["skipped", "skipped"]


def test_convert_movies_missing_frame_names_file(tmp_path):
    _frames(tmp_path / "exp" / "good", 3)
    _frames(tmp_path / "exp" / "bad", 5, skip=2)
    with pytest.raises(FormatError, match=r"frame0003\.tif.*frame 2 is missing"):
        tirf.convert_movies(tmp_path / "exp", tmp_path / "zarr")
    res = tirf.convert_movies(tmp_path / "exp", tmp_path / "zarr", on_error="skip")
    bad = res[str(tmp_path / "exp" / "bad")]
    assert bad["status"] == "error" and "frame0003.tif" in bad["error"]
    with pytest.raises(MissingError):
        tirf.convert_movies(tmp_path / "nowhere", tmp_path / "zarr")


# --- dataset -------------------------------------------------------------------------------

def test_make_dataset_manifest(tmp_path):
    paths = {}
    for kind in ("movie", "target", "objects"):
        paths[kind] = []
        for i in range(5):
            p = tmp_path / f"{kind}{i}.txt"
            p.write_text("x")
            paths[kind].append(p)
    m = tirf.make_dataset(paths["movie"], paths["target"], paths["objects"], tmp_path / "ds", seed=3)
    data = json.loads(m.read_text())
    assert len(data["train"]) == 3 and len(data["valid"]) == 2  # ExoDeepFinder: int(70 * 5 / 100) = 3 train
    movies = {e["movie"] for e in data["train"] + data["valid"]}
    assert movies == {str(p.resolve()) for p in paths["movie"]}
    for e in data["train"]:  # rows stay together
        i = e["movie"][-5]
        assert e["target"].endswith(f"target{i}.txt") and e["objects"].endswith(f"objects{i}.txt")
    again = tirf.make_dataset(paths["movie"], paths["target"], paths["objects"], tmp_path / "ds2", seed=3)
    assert json.loads(again.read_text()) == data
    assert tirf.read_dataset(m)["valid"] == data["valid"]
    assert not any(p.is_symlink() for p in (tmp_path / "ds").iterdir())
    with pytest.raises(ValueProblem):
        tirf.make_dataset(paths["movie"], paths["target"][:2], paths["objects"], tmp_path / "ds")
    with pytest.raises(MissingError):
        tirf.make_dataset([tmp_path / "no.zarr"], paths["target"][:1], paths["objects"][:1], tmp_path / "ds")


# --- CLI -----------------------------------------------------------------------------------

def test_cli_convert_and_missing_frame(tmp_path, capsys):
    from tomochunk.cli import main

    _frames(tmp_path / "exp" / "cell1", 3)
    assert main(["tirf", "convert", str(tmp_path / "exp"), "-o", str(tmp_path / "zarr")]) == 0
    assert (tmp_path / "zarr" / "cell1.zarr").exists()
    _frames(tmp_path / "exp" / "cell2", 4, skip=1)
    assert main(["tirf", "convert", str(tmp_path / "exp"), "-o", str(tmp_path / "zarr")]) == 2
    err = capsys.readouterr().err
    assert "frame0002.tif" in err and "missing" in err and "Traceback" not in err


@needs_objects_io
def test_cli_detect_annotate_merge_dataset(tmp_path, movie):
    from tomochunk.cli import main
    from tomochunk.io.objects import read_objects, write_objects
    from tomochunk.io.volume import open_volume, write_volume

    mov, truth = movie
    write_volume(_as_xr(mov), tmp_path / "cell1.zarr", levels=1)
    m = str(tmp_path / "cell1.zarr")
    assert main(["tirf", "detect", m, "-o", str(tmp_path / "spots"), "--labels"]) == 0
    assert len(read_objects(tmp_path / "spots" / "cell1_spots.csv")) >= 30
    write_objects(_events([(10, 12, 3), (40, 40, 20)]), tmp_path / "expert_annotation.csv")
    assert main(["tirf", "annotate", m, str(tmp_path / "expert_annotation.csv"),
                 "-o", str(tmp_path / "expert_segmentation.zarr")]) == 0
    assert int((open_volume(tmp_path / "expert_segmentation.zarr").values > 0).sum()) == 2 * 63
    assert main(["tirf", "merge", m, "--spots", str(tmp_path / "spots" / "cell1_spots.csv"),
                 "--events", str(tmp_path / "expert_annotation.csv"), "-o", str(tmp_path / "cell1"),
                 "--max-spots", "10"]) == 0
    objs = read_objects(tmp_path / "cell1" / "merged_annotation.xml")
    assert (objs.class_label == 2).sum() == 2 and (objs.class_label == 1).sum() == 10
    assert main(["tirf", "dataset", "--movies", m, m, "--targets", *[str(tmp_path / "cell1" / "merged_segmentation.zarr")] * 2,
                 "--objects", *[str(tmp_path / "cell1" / "merged_annotation.xml")] * 2,
                 "-o", str(tmp_path / "ds")]) == 0
    assert (tmp_path / "ds" / "dataset.json").exists()
    assert main(["tirf", "events", str(tmp_path / "cell1" / "merged_segmentation.zarr"), "-o",
                 str(tmp_path / "ev"), "--method", "cc"]) == 0
    ev = read_objects(tmp_path / "ev" / "merged_segmentation_events.xml")
    assert len(ev) == 2 and (ev.class_label == 1).all()
    bad = tmp_path / "bad_annotation.csv"
    bad.write_text("tomo_idx,class_label,x,y,z\n0,2,10,12,3\n")
    assert main(["tirf", "annotate", m, str(bad), "-o", str(tmp_path / "x.zarr")]) == 2


def _as_xr(a):
    import xarray as xr

    return xr.DataArray(a, dims=("t", "y", "x"), attrs={"voxel_size": 1.0})


# --- training and segmentation wrappers -----------------------------------------------------

@pytest.mark.skipif(not (_has("tomochunk.nn.train") and _has("tomochunk.ops.normalize")), reason="nn.train not merged")
def test_train_events_on_manifest(tmp_path, movie):
    from tomochunk.io.objects import write_objects
    from tomochunk.io.volume import write_volume

    mov, truth = movie
    write_volume(_as_xr(mov), tmp_path / "m.zarr", levels=1)
    spots = truth.assign(class_label=1)
    labels, objs = tirf.merge_annotations(spots, _events([(20, 20, 10), (40, 40, 25)]), (T, Y, X),
                                          labels_path=tmp_path / "t.zarr")
    write_objects(objs, tmp_path / "o.xml")
    man = tirf.make_dataset([tmp_path / "m.zarr"] * 2, [tmp_path / "t.zarr"] * 2, [tmp_path / "o.xml"] * 2,
                            tmp_path / "ds", valid_fraction=0.5)
    import dask

    with dask.config.set(scheduler="synchronous"):  # patches are read in this process
        model, hist = tirf.train_events(man, tmp_path / "model", patch_size=(4, 16, 16), epochs=1,
                                        steps_per_epoch=1, batch_size=2, filters="small", progress=False,
                                        valid_steps=1)
    assert model.output_shape[-1] == 3 and len(hist) == 1
    assert (tmp_path / "model" / "model_final.keras").exists()
    # the movie default: Tversky + class-weighted cross-entropy (rare event voxels)
    assert model.loss.ce_weight == 1.0 and model.loss.class_weights == list(tirf.EVENT_CLASS_WEIGHTS)
    with pytest.raises(ValueProblem, match="one per class"):
        tirf.train_events(man, tmp_path / "model2", class_weights=(1, 2), epochs=1)


@pytest.mark.skipif(not (_has("tomochunk.nn.segment") and _has("tomochunk.ops.normalize")), reason="segment not merged")
def test_segment_movies_writes_label_maps(tmp_path, movie):
    import dask
    import keras

    from tomochunk.io.volume import open_volume, write_volume
    from tomochunk.nn.models import deepfinder_unet, save_model

    mov = movie[0][:12, :32, :32]
    write_volume(_as_xr(mov), tmp_path / "m.zarr", levels=1)
    keras.utils.set_random_seed(0)
    save_model(deepfinder_unet(3, filters="small", anisotropic=True), tmp_path / "w.keras",
               legacy_h5=tmp_path / "w.h5")
    # in this process: the session's LocalCluster workers would each import TensorFlow first
    with dask.config.set(scheduler="synchronous"):
        _segment_checks(tmp_path)


def _segment_checks(tmp_path):
    from tomochunk.io.volume import open_volume

    sc = tirf.segment_movie(tmp_path / "m.zarr", tmp_path / "w.keras", patch_size=32, crop=4)
    assert sc.dims == ("c", "t", "y", "x") and sc.shape == (3, 12, 32, 32)
    np.testing.assert_allclose(sc.sum("c").values, 1, atol=1e-4)
    out = tirf.segment_movies([tmp_path / "m.zarr"], tmp_path / "w.h5", tmp_path / "seg", patch_size=32, crop=4,
                              scores=True)
    assert open_volume(tmp_path / "seg" / "m_scores.zarr").shape == (3, 12, 32, 32)
    dst = out[str(tmp_path / "m.zarr")]
    assert dst.name == "m_segmentation.zarr"
    lab = open_volume(dst)
    assert lab.shape == (12, 32, 32) and lab.dtype == np.uint8 and int(lab.max()) <= 2
    # the label map is the argmax of the scores (computed once, then read back; no temporary left)
    written = open_volume(tmp_path / "seg" / "m_scores.zarr").values
    np.testing.assert_array_equal(lab.values, written.argmax(0))
    ref = tirf.segment_movie(tmp_path / "m.zarr", tmp_path / "w.h5", patch_size=32, crop=4).values
    np.testing.assert_allclose(written, ref, atol=1e-3)  # float16 storage
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["m_scores.zarr", "m_segmentation.zarr"]
    assert tirf.segment_movies([tmp_path / "m.zarr"], tmp_path / "w.h5", tmp_path / "seg") == out  # skipped


def test_cli_tirf_segment_blocks(tmp_path):
    import keras
    import xarray as xr

    import tomochunk
    from tomochunk.cli import main
    from tomochunk.nn.models import deepfinder_unet, save_model

    keras.utils.set_random_seed(0)
    save_model(deepfinder_unet(3, filters=(2, 3, 4), anisotropic=True), tmp_path / "m.keras")
    mv = np.random.default_rng(0).integers(0, 1000, (12, 40, 48)).astype(np.uint16)
    tomochunk.write_volume(xr.DataArray(mv, dims=("t", "y", "x"), attrs={"voxel_size": 1.0}),
                           tmp_path / "cell.zarr", levels=1)
    assert main(["tirf", "segment", str(tmp_path / "cell.zarr"), "-m", str(tmp_path / "m.keras"),
                 "-o", str(tmp_path / "seg"), "--tiling", "blocks"]) == 0
    out = [p for p in (tmp_path / "seg").iterdir() if p.name.endswith("_segmentation.zarr")]
    assert len(out) == 1 and tomochunk.open_volume(out[0]).shape == mv.shape
