"""Guard rails against wrong inputs (issue 25): each one line, naming the file."""
import warnings

import numpy as np
import pandas as pd
import pytest

from tomochunk.cli import main
from tomochunk.errors import ShapeError, TomochunkError, ValueProblem
from tomochunk.io.convert import convert
from tomochunk.io.volume import is_label_map, open_volume, write_volume


def _labels(shape=(16, 24, 24)):
    lab = np.zeros(shape, np.uint8)
    lab[4:8, 4:8, 4:8] = 1
    return lab


@pytest.mark.parametrize("suffix", [".mrc", ".zarr"])
def test_label_map_refused_as_tomogram(tmp_path, suffix):
    src = write_volume(_labels(), tmp_path / f"t_labels{suffix}", voxel_size=10.0, label=True, levels=1)
    assert is_label_map(open_volume(src).attrs)
    with pytest.raises(ShapeError, match="is a label map") as err:
        convert(src, tmp_path / "out.zarr", levels=1)
    assert str(src) in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="label map"):
        convert(src, tmp_path / "forced.zarr", levels=1, force=True)


def test_tomogram_is_not_a_label_map(tmp_path):
    src = write_volume(np.zeros((8, 8, 8), np.float32), tmp_path / "t.mrc", voxel_size=10.0)
    assert not is_label_map(open_volume(src).attrs)
    convert(src, tmp_path / "t.zarr", levels=1)


def test_cli_segment_refuses_label_map(tmp_path, capsys):
    src = write_volume(_labels(), tmp_path / "t_labels.mrc", voxel_size=10.0, label=True)
    model = tmp_path / "m.keras"
    model.write_bytes(b"")  # never loaded: the input is refused first
    rc = main(["segment", str(src), "-m", str(model), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "t_labels.mrc" in err[0] and "label map" in err[0]


def test_phantom_writes_truth_apart(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "p1.mrc"), "--shape", "16,32,32", "--n-objects", "2",
                 "--classes", "2"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.mrc")) == ["p1.mrc"]
    assert (tmp_path / "truth" / "p1_labels.mrc").exists()
    truth = pd.read_csv(tmp_path / "truth" / "p1_objects.csv")
    assert is_label_map(open_volume(tmp_path / "truth" / "p1_labels.mrc").attrs)
    assert len(truth)


def test_movie_refused_by_tomogram_model():
    keras = pytest.importorskip("keras")
    from tomochunk.nn._model import check_model_dims, model_kind

    tomo = keras.Sequential([keras.Input((8, 8, 8, 1)), keras.layers.MaxPooling3D((2, 2, 2))])
    movie = keras.Sequential([keras.Input((8, 8, 8, 1)), keras.layers.MaxPooling3D((1, 2, 2))])
    assert (model_kind(tomo), model_kind(movie)) == ("tomogram", "movie")
    with pytest.raises(ShapeError, match=r"cell\.zarr: is a \(t, y, x\) movie"):
        check_model_dims(tomo, ("t", "y", "x"), "cell.zarr")
    with pytest.raises(ShapeError, match="tomogram"):
        check_model_dims(movie, ("z", "y", "x"), "t.zarr")
    check_model_dims(movie, ("t", "y", "x"), "cell.zarr")
    check_model_dims(tomo, ("z", "y", "x"), "t.zarr")


def test_cluster_on_unsegmented_store_says_segment_first(tmp_path):
    from tomochunk.ops.cluster import cluster

    src = write_volume(np.zeros((8, 8, 8), np.float32), tmp_path / "t.zarr", voxel_size=10.0, levels=1)
    with pytest.raises(ShapeError, match="segment it first") as err:
        cluster(open_volume(src), radius=3)
    assert str(src) in str(err.value)


def test_pick_refuses_mixed_voxel_sizes(tmp_path, capsys):
    a = write_volume(_labels(), tmp_path / "a.zarr", voxel_size=10.0, label=True, levels=1)
    b = write_volume(_labels(), tmp_path / "b.zarr", voxel_size=1.0, label=True, levels=1)
    out = tmp_path / "picks.star"
    rc = main(["pick", str(a), str(b), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "b.zarr: 1 Å" in err[0] and "different voxel sizes" in err[0]
    assert not out.exists()


def test_evaluate_disjoint_tomograms():
    from tomochunk.ops.evaluate import evaluate

    pred = pd.DataFrame({"tomo": ["phantom"], "class_label": [1], "x": [1.0], "y": [1.0], "z": [1.0]})
    truth = pred.assign(tomo="0")
    with pytest.raises(ValueProblem, match="share no tomogram"):
        evaluate(pred, truth, max_dist=3)
    assert float(evaluate(pred, pred, max_dist=3).loc["all", "f1"]) == 1.0


def test_phantom_truth_and_picks_share_a_name(tmp_path, capsys):
    from tomochunk.io.objects import read_objects
    from tomochunk.ops.pick import pick_inputs

    assert main(["phantom", str(tmp_path / "p1.zarr"), "--shape", "16,32,32", "--n-objects", "2",
                 "--classes", "1", "--levels", "1", "--snr", "none"]) == 0
    truth = read_objects(tmp_path / "truth" / "p1_objects.csv")
    picks = pick_inputs(tmp_path / "truth" / "p1_labels.zarr", radius=3, tomo=None)
    assert set(truth.tomo.astype(str)) == {"p1"}
    assert isinstance(TomochunkError, type)
    assert picks is not None
