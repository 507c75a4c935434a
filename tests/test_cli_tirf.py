"""`tirf` CLI against ExoDeepFinder's (issue 22): its defaults (30% validation, 9800 spots), --batch
for annotate and merge, segment --visualization; and tirf segment on a running scheduler."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import tomochunk as tc
from tomochunk.cli import _parser, main


def _movie(path, seed):
    mov, obj, _ = tc.phantom_movie((24, 48, 48), n_spots=12, n_events=3, seed=seed)
    tc.write_volume(xr.DataArray(np.asarray(mov), dims=("t", "y", "x"), attrs={"voxel_size": 100.0}), path,
                    levels=1)
    return obj


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """ExoDeepFinder's layout: one folder per movie, holding movie.zarr and expert_annotation.xml."""
    root = tmp_path_factory.mktemp("exp")
    for i, name in enumerate(("cell1", "cell2")):
        d = root / name
        d.mkdir()
        obj = _movie(d / "movie.zarr", seed=i)
        events = obj[obj["class_label"] == obj["class_label"].max()].assign(class_label=1)
        tc.write_objects(events.reset_index(drop=True), d / "expert_annotation.xml")
    (root / "notes.txt").write_text("not a movie folder")
    return root


def test_defaults_are_exodeepfinders():
    p = _parser()
    assert p.parse_args(["tirf", "merge", "m.zarr", "--spots", "s.csv", "--events", "e.xml", "-o", "o"]).max_spots \
        == 9800
    assert p.parse_args(["tirf", "merge", "--batch", "r", "--max-spots", "all"]).max_spots is None
    assert p.parse_args(["tirf", "dataset", "--movies", "m", "--targets", "t", "--objects", "o", "-o", "d"]) \
        .valid_fraction == 0.3
    import inspect

    from tomochunk.workflows.tirf import make_dataset, merge_annotations

    assert inspect.signature(make_dataset).parameters["valid_fraction"].default == 0.3
    assert inspect.signature(merge_annotations).parameters["max_spots"].default == 9800
    sub = next(a for a in p._actions if a.dest == "command").choices["tirf"]
    train = next(a for a in sub._actions if a.dest == "tirf_command").choices["train"]
    assert "ExoDeepFinder" in train.description and "on purpose" in train.description


def test_batch_annotate_detect_merge(experiment, capsys):
    assert main(["tirf", "annotate", "--batch", str(experiment)]) == 0
    out = capsys.readouterr().out
    for name in ("cell1", "cell2"):
        seg = experiment / name / "expert_segmentation.zarr"
        assert f"{experiment / name / 'expert_annotation.xml'} -> {seg}" in out
        # the same as the one-movie call
        assert main(["tirf", "annotate", str(experiment / name / "movie.zarr"),
                     str(experiment / name / "expert_annotation.xml"), "-o", str(experiment / name / "one.zarr")]) == 0
        np.testing.assert_array_equal(np.asarray(tc.open_volume(seg)),
                                      np.asarray(tc.open_volume(experiment / name / "one.zarr")))
        assert main(["tirf", "detect", str(experiment / name / "movie.zarr"), "-o", str(experiment / name)]) == 0
    # names in each folder, '{name}' for the folder's name, outputs in each folder by default
    assert main(["tirf", "merge", "--batch", str(experiment), "--spots", "movie_spots.csv",
                 "--max-spots", "5"]) == 0
    for name in ("cell1", "cell2"):
        objs = tc.read_objects(experiment / name / "merged_annotation.xml")
        n_ev = len(tc.read_objects(experiment / name / "expert_annotation.xml"))
        assert (objs.class_label == 2).sum() == n_ev and (objs.class_label == 1).sum() <= 5
        assert (experiment / name / "merged_segmentation.zarr").exists()
    assert main(["tirf", "merge", "--batch", str(experiment), "--spots", "movie_spots.csv",
                 "-o", str(experiment.parent / "merged_{name}"), "--overwrite"]) == 0
    assert (experiment.parent / "merged_cell2" / "merged_annotation.xml").exists()


def test_batch_bad_arguments(experiment, tmp_path, capsys, one_line):
    one_line(["tirf", "annotate", "m.zarr"], "ANNOTATION", "--batch")
    one_line(["tirf", "merge", "m.zarr", "--events", "e.xml", "-o", "o"], "--spots")
    one_line(["tirf", "annotate", "--batch", tmp_path / "nowhere"], "nowhere", "folder")
    (tmp_path / "empty").mkdir()
    one_line(["tirf", "merge", "--batch", tmp_path / "empty"], "empty", "no movie folder")
    one_line(["tirf", "annotate", "--batch", experiment, "--annotation", "x"], "unrecognized")
    one_line(["tirf", "annotate", "--batch", experiment, "movie.zarr", "missing.xml"], "missing.xml")
    one_line(["tirf", "merge", "--batch", experiment, "--max-spots", "0"], "--max-spots")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import keras

    from tomochunk.nn.models import deepfinder_unet, save_model

    d = tmp_path_factory.mktemp("tirfnet")
    keras.utils.set_random_seed(0)
    save_model(deepfinder_unet(3, filters="small", anisotropic=True), d / "w.keras")
    return d / "w.keras"


def test_segment_visualization_and_remote_equals_local(experiment, net, tmp_path, client, capsys):
    movies = [str(experiment / "cell1" / "movie.zarr")]
    common = ["tirf", "segment", *movies, "-m", str(net), "--patch", "32", "--crop", "4"]
    assert main([*common, "-o", str(tmp_path / "local"), "--visualization"]) == 0
    out = capsys.readouterr().out
    for stem in ("movie",):
        for kind in ("data", "prediction"):
            png = tmp_path / "local" / f"{stem}_{kind}.png"
            assert png.read_bytes()[1:4] == b"PNG" and str(png) in out
    # the same maps computed on a running scheduler's worker processes
    assert main([*common, "-o", str(tmp_path / "remote"), "--scheduler", client.scheduler.address]) == 0
    for stem in ("movie",):
        a = np.asarray(tc.open_volume(tmp_path / "local" / f"{stem}_segmentation.zarr"))
        b = np.asarray(tc.open_volume(tmp_path / "remote" / f"{stem}_segmentation.zarr"))
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "remote").glob("*.png"))
