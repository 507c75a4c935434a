"""`segment-features --save-scores`, picking feature maps, and the CLI's threshold / emit / absorb
overrides of the archives' metadata (issue 22): train-slices -> segment-features -> pick on small files."""

import json
from pathlib import Path

import numpy as np
import pytest

import tomochunk as tc
from tomochunk.cli import main


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    """A volume of bright spheres (label 1) and cubes (label 2) in noise, and two one-feature 2D models
    trained on it with `train-slices` (briefly: they are weak, and overlap, which the competition needs)."""
    d = tmp_path_factory.mktemp("feat")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:32, 0:64, 0:64]
    vol = rng.normal(size=(32, 64, 64)).astype(np.float32)
    lab = np.zeros((32, 64, 64), np.uint8)
    for cz, cy, cx in [(8, 12, 12), (8, 40, 20), (20, 20, 44), (24, 50, 50), (16, 30, 30)]:
        m = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 25
        vol[m] += 2.5
        lab[m] = 1
    for cz, cy, cx in [(10, 50, 10), (22, 10, 50), (8, 30, 54)]:
        m = (abs(z - cz) < 4) & (abs(y - cy) < 4) & (abs(x - cx) < 4)
        vol[m] += 2.5
        lab[m] = 2
    tc.write_volume(vol, d / "p.mrc", voxel_size=10.0)
    tc.write_volume(lab, d / "p_labels.mrc", voxel_size=10.0, label=True)
    for label, title in ((1, "sphere"), (2, "cube")):
        assert main(["train-slices", str(d / "p.mrc"), "--mask", str(d / "p_labels.mrc"), "--label", str(label),
                     "--box", "32", "--n-tiles", "16", "--copies", "1", "--epochs", "6", "--lr", "3e-3",
                     "--batch", "8", "--valid", "0.25", "--title", title, "--threshold", "0.2",
                     "-o", str(d / f"{title}.tcm")]) == 0
    return d


def _run(feats, out, client, *extra):
    argv = ["segment-features", str(feats / "p.mrc"), "-m", str(feats / "sphere.tcm"), str(feats / "cube.tcm"),
            "-o", str(out), "--scheduler", client.scheduler.address, *map(str, extra)]
    assert main(argv) == 0
    return out / "p.zarr"


@pytest.fixture(scope="module")
def base(feats, tmp_path_factory, client):
    """segment-features --save-scores with the archives' own metadata (threshold 0.2, no emit/absorb)."""
    return _run(feats, tmp_path_factory.mktemp("base"), client, "--save-scores")


def test_save_scores_then_pick_the_features(feats, base, tmp_path, client, capsys):
    scores = tc.open_volume(base / "labels" / "scores")
    labels = np.asarray(tc.open_volume(base))
    s = np.asarray(scores, np.float32)
    assert scores.dims == ("c", "z", "y", "x") and s.shape == (3, 32, 64, 64)
    assert scores.attrs["voxel_size"] == 10.0
    assert scores.attrs["classes"] == {"0": "background", "1": "sphere", "2": "cube"}
    np.testing.assert_allclose(s[0], np.clip(1 - s[1:].max(0), 0, 1), atol=2e-3)
    # the label map is the competition of these very maps: argmax among those over their threshold
    over = s[1:] >= 0.2
    expect = np.where(over.any(0), 1 + np.argmax(np.where(over, s[1:], -1), axis=0), 0)
    assert (labels > 0).sum() > 100 and (expect == labels).mean() > 0.999
    # peaks and heatmap on the feature scores (class label = model label), cc on the label map
    for method in ("peaks", "heatmap", "cc"):
        assert main(["pick", str(base), "--method", method, "--threshold", "0.2", "--min-size", "5",
                     "--min-spacing", "4", "-o", str(tmp_path / f"{method}.csv")]) == 0
    peaks = tc.read_objects(tmp_path / "peaks.csv")
    assert len(peaks) > 0 and set(peaks["class_label"]) <= {1, 2}
    assert len(tc.read_objects(tmp_path / "heatmap.csv")) > 0 and len(tc.read_objects(tmp_path / "cc.csv")) > 0
    # the picks sit on the features: each pick's own channel is over the threshold there
    z, y, x = (np.rint(peaks[c]).astype(int).to_numpy() for c in ("z", "y", "x"))
    assert (s[peaks["class_label"].to_numpy(), z, y, x] >= 0.19).all()
    # a rerun with --save-scores skips the tomogram
    capsys.readouterr()
    _run(feats, base.parent, client, "--save-scores")
    assert "skipped" in capsys.readouterr().out


def test_overrides_change_the_competition(feats, base, tmp_path, client):
    b_l = np.asarray(tc.open_volume(base))
    b = np.asarray(tc.open_volume(base / "labels" / "scores"), np.float32)
    # emit/absorb and one model's threshold from the command line, overriding the archives
    ea = _run(feats, tmp_path / "ea", client, "--emit", "1", "--absorb", "cube", "--threshold", "sphere:0.4",
              "--save-scores")
    meta = json.loads((ea / ".zattrs").read_text())["models"]
    assert [(m["emit"], m["absorb"], m["threshold"]) for m in meta] == [(True, False, 0.4), (False, True, 0.2)]
    s = np.asarray(tc.open_volume(ea / "labels" / "scores"), np.float32)
    l = np.asarray(tc.open_volume(ea))
    # the absorber's map is zeroed where the emitter is higher; without the override it kept those values
    won = b[1] > b[2] + 1e-2
    assert (b[2][won] > 0).any() and (s[2][won] == 0).all()
    np.testing.assert_allclose(s[1], b[1], atol=1e-3)  # the emitter's own map is untouched
    # the higher sphere threshold leaves fewer sphere voxels: exactly those >= 0.4 that win
    assert 0 < (l == 1).sum() < (b_l == 1).sum()
    assert ((l == 1) <= (s[1] >= 0.4 - 1e-3)).all()
    # one threshold for every model
    hi_l = np.asarray(tc.open_volume(_run(feats, tmp_path / "hi", client, "--threshold", "0.5")))
    assert (hi_l > 0).sum() < (b_l > 0).sum()
    assert [m["threshold"] for m in json.loads((tmp_path / "hi" / "p.zarr" / ".zattrs").read_text())["models"]] \
        == [0.5, 0.5]


def test_feature_overrides_bad_arguments(feats, tmp_path, capsys, one_line):
    base = ["segment-features", feats / "p.mrc", "-m", feats / "sphere.tcm", feats / "cube.tcm",
            "-o", tmp_path / "x", "--workers", "1"]
    one_line(base + ["--threshold", "sphere:high"], "--threshold", "sphere:high")
    one_line(base + ["--threshold", "1.5"], "threshold", "[0, 1]")
    one_line(base + ["--threshold", "ribosome:0.5"], "ribosome", "sphere")
    one_line(base + ["--emit", "3"], "label 3", "1..2")
    one_line(base + ["--absorb", "actin"], "actin")
