"""The CLI commands of issue 22 (evaluate, objects, view, train-slices, target --heatmap) and the
CLI behaviour of issue 25 (one-line failures, defaults in --help, quiet output), on small real files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tomochunk as tc
from tomochunk._quiet import native_log_line as _native_log_line
from tomochunk.cli import _parser, main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv, cwd=None):
    """Run the installed command in a fresh process, as a user's shell does (stdout is not a terminal)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must quieten TensorFlow by itself
    return subprocess.run([sys.executable, "-m", "tomochunk.cli", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(capsys, argv, *words):
    """``main(argv)`` fails with exit status 2 and a single stderr line containing ``words``."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tomochunk"), err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 32x64x64 phantom with two classes: tomogram, and its label map and truth list in truth/ (the CLI)."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["phantom", str(d / "p.mrc"), "--shape", "32,64,64", "--classes", "2", "--snr", "2",
                 "--seed", "1"]) == 0
    return d


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_table_csv_and_curve(data, tmp_path, capsys):
    truth = tc.read_objects(data / "truth" / "p_objects.csv")
    pred = truth.copy()
    pred.attrs = dict(truth.attrs)
    pred.loc[pred.index[0], "x"] += 30          # one miss and one false positive
    pred["score"] = np.linspace(0.1, 0.9, len(pred))
    tc.write_objects(pred, tmp_path / "pred.csv")
    rc = main(["evaluate", str(tmp_path / "pred.csv"), str(data / "truth" / "p_objects.csv"), "--max-dist", "3",
               "-o", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "curve.png")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "f1" in out and "all" in out
    import pandas as pd

    table = pd.read_csv(tmp_path / "t.csv", index_col=0)
    n = len(truth)
    assert table.loc["all", "tp"] == n - 1 and table.loc["all", "fp"] == 1 and table.loc["all", "fn"] == 1
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_evaluate_czii_and_deepfinder(data, capsys):
    t = str(data / "truth" / "p_objects.csv")
    assert main(["evaluate", t, t, "--method", "czii", "--radii", "1:5,2:8"]) == 0
    assert "fbeta" in capsys.readouterr().out
    assert main(["evaluate", t, t, "--method", "deepfinder", "--max-dist", "2"]) == 0


def test_evaluate_bad_arguments(data, tmp_path, capsys):
    t = data / "truth" / "p_objects.csv"
    _one_line_error(capsys, ["evaluate", t, t], "max_dist")
    _one_line_error(capsys, ["evaluate", t, t, "--method", "czii", "--radii", "1:5,2:x"], "--radii")
    _one_line_error(capsys, ["evaluate", t, t, "--method", "czii", "--radii", "1:5"], "radii")
    _one_line_error(capsys, ["evaluate", t, t, "--max-dist", "3", "--radii", "1:5"], "czii")
    _one_line_error(capsys, ["evaluate", tmp_path / "none.xml", t, "--max-dist", "3"], "none.xml")
    _one_line_error(capsys, ["evaluate", t, t, "--method", "nearest"], "--method")
    _one_line_error(capsys, ["evaluate", t, t, "--max-dist", "3", "-o", tmp_path / "no" / "dir" / "t.csv"],
                    str(tmp_path / "no" / "dir"))


# --- objects ---------------------------------------------------------------------------------

def test_objects_convert_filter_merge_split_scale(data, tmp_path, capsys):
    src = str(data / "truth" / "p_objects.csv")
    truth = tc.read_objects(src, voxel_size=10.0)
    star, xml = tmp_path / "p.star", tmp_path / "p.xml"
    assert main(["objects", "convert", src, "-o", str(star), "--voxel-size", "10"]) == 0
    assert main(["objects", "convert", str(star), "-o", str(xml)]) == 0
    back = tc.read_objects(xml)
    assert np.allclose(back[["x", "y", "z"]].to_numpy(), truth[["x", "y", "z"]].to_numpy())
    assert back["class_label"].tolist() == truth["class_label"].tolist()

    assert main(["objects", "filter", str(xml), "-o", str(tmp_path / "c1.xml"), "--classes", "1"]) == 0
    c1 = tc.read_objects(tmp_path / "c1.xml")
    assert set(c1["class_label"]) == {1} and len(c1) == int((truth["class_label"] == 1).sum())
    assert main(["objects", "filter", str(xml), "-o", str(tmp_path / "nms.xml"), "--nms", "1000"]) == 0
    assert len(tc.read_objects(tmp_path / "nms.xml")) == truth["class_label"].nunique()  # one per class

    two = tmp_path / "two.csv"
    assert main(["objects", "merge", str(xml), str(tmp_path / "c1.xml"), "-o", str(two)]) == 0
    assert len(tc.read_objects(two)) == len(truth) + len(c1)

    a = truth.copy()
    a["tomo"] = "TS_01"
    b = truth.copy()
    b["tomo"] = "../TS_02"   # a name from data never leaves the folder
    both = tc.merge_objects(a, b)
    tc.write_objects(both, tmp_path / "both.star")
    assert main(["objects", "split", str(tmp_path / "both.star"), "-o", str(tmp_path / "split"),
                 "--format", "xml"]) == 0
    files = sorted(p.name for p in (tmp_path / "split").iterdir() if p.suffix == ".xml")
    assert files == ["TS_01.xml", "TS_02.xml"]  # each beside its tomo_idx name map (.tomos.json)
    assert len(tc.read_objects(tmp_path / "split" / "TS_01.xml")) == len(truth)

    assert main(["objects", "scale", str(star), "-o", str(tmp_path / "bin2.star"), "--factor", "0.5"]) == 0
    bin2 = tc.read_objects(tmp_path / "bin2.star")
    assert bin2.attrs["voxel_size"] == pytest.approx(20.0)
    assert np.allclose(bin2["x"].to_numpy(), truth["x"].to_numpy() * 0.5)
    assert "voxel size 20 A" in capsys.readouterr().out


def test_objects_bad_arguments(data, tmp_path, capsys):
    src = data / "truth" / "p_objects.csv"
    _one_line_error(capsys, ["objects", "convert", src, "-o", tmp_path / "p.foo"], "p.foo", "extension")
    _one_line_error(capsys, ["objects", "scale", src, "-o", tmp_path / "s.xml", "--factor", "-1"], "factor")
    _one_line_error(capsys, ["objects", "scale", src, "-o", tmp_path / "s.xml"], "--factor")
    _one_line_error(capsys, ["objects", "split", src, "-o", tmp_path / "a.xml"], "folder")
    _one_line_error(capsys, ["objects", "filter", src, "-o", tmp_path / "f.xml", "--classes", "ribosome"],
                    "ribosome")
    _one_line_error(capsys, ["objects", "filter", src, "-o", tmp_path / "f.xml", "--min-score", "0.5"], "score")
    _one_line_error(capsys, ["objects", "merge", tmp_path / "none.csv", src, "-o", tmp_path / "m.csv"],
                    "none.csv")
    _one_line_error(capsys, ["objects", "convert", src, "-o", tmp_path / "missing" / "p.xml"], "missing")
    _one_line_error(capsys, ["objects", "frobnicate", src], "frobnicate")
    (tmp_path / "exists.xml").write_text("<objlist/>")
    _one_line_error(capsys, ["objects", "convert", src, "-o", tmp_path / "exists.xml"], "exists.xml")


# --- view ------------------------------------------------------------------------------------

def test_view_picture(data, tmp_path, capsys):
    out = tmp_path / "view.png"
    assert main(["view", str(data / "p.mrc"), "--labels", str(data / "truth" / "p_labels.mrc"), "--objects",
                 str(data / "truth" / "p_objects.csv"), "--truth", str(data / "truth" / "p_objects.csv"), "--slices", "16,30,30",
                 "-o", str(out)]) == 0
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 600
    # picks are drawn in pure yellow, a colour no label (tab10) uses
    rgb = img[..., :3]
    assert np.any((rgb[..., 0] > 0.95) & (rgb[..., 1] > 0.95) & (rgb[..., 2] < 0.1))


def test_orthoslices_legend_axes_and_slab(data, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomochunk.viz import orthoslices

    vol = tc.open_volume(data / "p.mrc")
    lab = tc.open_volume(data / "truth" / "p_labels.mrc")
    objs = tc.read_objects(data / "truth" / "p_objects.csv")
    saved = {}
    real = plt.close

    def keep(fig):
        saved["fig"] = fig

    plt.close = keep
    try:
        orthoslices(vol, tmp_path / "o.png", labels=lab, objects=objs, truth=objs, slab=4,
                    classes={1: "sphere", 2: "ellipsoid"}, voxel_size=10.0)
    finally:
        plt.close = real
    fig = saved["fig"]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"picks", "truth"} <= set(texts) and set(texts) & {"sphere", "ellipsoid"}
    assert any("±4 slices" in t.get_text() for t in fig.texts)
    labels = [a.get_xlabel() for ax in fig.axes for a in [ax, *ax.child_axes]]
    assert "x (voxels)" in labels and "x (Å)" in labels
    real(fig)


def test_view_bad_arguments(data, tmp_path, capsys):
    tomo = data / "p.mrc"
    _one_line_error(capsys, ["view", tomo, "--slices", "99,1,1", "-o", tmp_path / "v.png"], "--slices")
    _one_line_error(capsys, ["view", tomo, "--slices", "1,1", "-o", tmp_path / "v.png"], "--slices")
    _one_line_error(capsys, ["view", tmp_path / "none.mrc", "-o", tmp_path / "v.png"], "none.mrc")
    small = tmp_path / "small.mrc"
    tc.write_volume(np.zeros((8, 8, 8), np.uint8), small, voxel_size=10.0)
    _one_line_error(capsys, ["view", tomo, "--labels", small, "-o", tmp_path / "v.png"], "small.mrc", "shape")
    _one_line_error(capsys, ["view", tomo], "-o")


# --- target --heatmap ------------------------------------------------------------------------

def test_target_heatmap(data, tmp_path, capsys):
    lab, heat = tmp_path / "lab.mrc", tmp_path / "heat.mrc"
    assert main(["target", str(data / "truth" / "p_objects.csv"), "--like", str(data / "p.mrc"), "--heatmap", "2",
                 "-o", str(lab), "--heat-out", str(heat)]) == 0
    lv, hv = np.asarray(tc.open_volume(lab).data), np.asarray(tc.open_volume(heat).data)
    assert set(np.unique(lv)) == {0, 1, 2}
    assert hv.max() == pytest.approx(1.0, abs=0.05)
    assert np.all(lv[hv >= 0.5] == 1) and np.all(lv[hv < 0.1] == 0)
    t = data / "truth" / "p_objects.csv"
    _one_line_error(capsys, ["target", t, "--like", data / "p.mrc", "--heatmap", "2", "--soft", "0.9",
                             "--hard", "0.5", "-o", tmp_path / "h.mrc"], "soft")
    _one_line_error(capsys, ["target", t, "--like", data / "p.mrc", "--heatmap", "2", "--radii", "5",
                             "-o", tmp_path / "h.mrc"], "--radii")
    _one_line_error(capsys, ["target", t, "--like", data / "p.mrc", "--heatmap", "x", "-o", tmp_path / "h.mrc"],
                    "--heatmap")


# --- train-slices -> segment-features -> pick (real TensorFlow, real LocalCluster) -----------

def test_train_slices_segment_features_pick(data, tmp_path):
    model = tmp_path / "sphere.tcm"
    r = _cli("train-slices", data / "p.mrc", "--mask", data / "truth" / "p_labels.mrc", "--label", "1", "--box", "32",
             "--n-tiles", "8", "--copies", "1", "--epochs", "1", "--batch", "4", "--valid", "0.25",
             "--title", "sphere", "--threshold", "0.4", "-o", model)
    assert r.returncode == 0, r.stderr
    info = tc.load_archive(model).info
    assert info.title == "sphere" and info.pixel_size == 10.0 and info.threshold == 0.4 and info.box_size == 32
    r2 = _cli("segment-features", data / "p.mrc", "-m", model, "-o", tmp_path / "feat", "--workers", "1")
    assert r2.returncode == 0, r2.stderr
    store = tmp_path / "feat" / "p.zarr"
    assert store.exists()
    r3 = _cli("pick", store, "--method", "cc", "-o", tmp_path / "picks.csv")
    assert r3.returncode == 0, r3.stderr
    tc.read_objects(tmp_path / "picks.csv")
    for res in (r, r2, r3):
        # quiet by default: no distributed or TensorFlow lines, no progress bar in a non-terminal stdout
        lines = res.stderr.splitlines()
        assert not [ln for ln in lines if "distributed" in ln or _native_log_line(ln) or "tensorflow" in ln], \
            res.stderr
        assert "\r" not in res.stdout and "[#" not in res.stdout


def test_train_slices_bad_arguments(data, tmp_path, capsys):
    tomo, mask = data / "p.mrc", data / "truth" / "p_labels.mrc"
    out = tmp_path / "m.tcm"
    _one_line_error(capsys, ["train-slices", tomo, "-o", out], "--mask")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "--box", "128", "-o", out], "tile size")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "--label", "7", "-o", out], "label 7")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "--slices", "40:50", "-o", out], "--slices")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "--arch", "nonet", "--box", "32",
                             "--n-tiles", "2", "-o", out], "nonet")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "--valid", "1.5", "-o", out], "--valid")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "-o", tmp_path / "no" / "m.tcm"], "no")
    out.write_bytes(b"")
    _one_line_error(capsys, ["train-slices", tomo, "--mask", mask, "-o", out], "exists")


# --- issue 25: one-line failures, defaults, one bfloat16 flag, -m phantom, quiet output -------

def test_missing_output_folder_is_made_and_a_file_in_the_way_is_one_line(tmp_path, capsys):
    # a missing output folder is created (as mkdir -p); a file where a folder must be is one line
    assert main(["phantom", str(tmp_path / "missing" / "dir" / "p.mrc"), "--shape", "16,32,32",
                 "--n-objects", "1"]) == 0
    assert (tmp_path / "missing" / "dir" / "p.mrc").exists()
    (tmp_path / "file").write_text("x")
    err = _one_line_error(capsys, ["phantom", tmp_path / "file" / "p.mrc", "--shape", "16,32,32",
                                   "--n-objects", "1"], str(tmp_path / "file"))
    assert "Traceback" not in err


def test_usage_errors_are_one_line(capsys):
    _one_line_error(capsys, ["evaluate"], "PRED")
    _one_line_error(capsys, ["nosuchcommand"], "nosuchcommand")


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "(default: hungarian)" in out and "example:" in out
    with pytest.raises(SystemExit):
        main(["train-slices", "--help"])
    out = capsys.readouterr().out
    assert "(default: unet2d)" in out and "(default: 64)" in out


def test_one_bfloat16_flag():
    base = ["train", "--volumes", "v.mrc", "--targets", "t.mrc", "--train", "a.xml", "--valid", "b.xml",
            "--n-classes", "2", "-o", "out"]
    p = _parser()
    assert p.parse_args(base).precision == "auto"
    assert p.parse_args(base + ["--precision", "float32"]).precision == "float32"
    assert p.parse_args(base + ["--precision", "bfloat16"]).precision == "bfloat16"
    assert p.parse_args(base + ["--bf16"]).precision == "bfloat16"
    assert p.parse_args(["segment", "t.mrc", "-m", "phantom", "-o", "o", "--precision", "bfloat16"]).precision \
        == "bfloat16"


def test_segment_takes_the_shipped_model_name(data, tmp_path, capsys):
    from tomochunk.cli import _model_file

    assert Path(_model_file("phantom")).name == "phantom_unet.keras"
    assert Path(_model_file("phantom")).exists()
    _one_line_error(capsys, ["segment", data / "p.mrc", "-m", "nosuch", "-o", tmp_path / "seg"],
                    "nosuch", "phantom")


def test_progress_is_one_line_off_a_terminal(capsys):
    from tomochunk.cli import _progress

    import dask.array as da

    with _progress("adding"):
        da.ones(10, chunks=2).sum().compute()
    out = capsys.readouterr().out
    assert out.startswith("adding: done in") and len(out.splitlines()) == 1


def test_native_log_filter_keeps_our_lines():
    assert _native_log_line("I0000 00:00:1796161219.804098   26506 port.cc:153] oneDNN custom operations")
    assert _native_log_line("E0000 00:00:1796161243.380565   26506 util.cc:131] oneDNN supports DT_INT32")
    assert _native_log_line("WARNING: All log messages before absl::InitializeLog() is called are written")
    assert not _native_log_line("tomochunk: error: p.mrc: no such file")
    assert not _native_log_line("WARNING tomochunk.phantom: placed only 0 of 1 objects")


def test_unreachable_scheduler_is_one_line(data, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "2s")
    r = _cli("segment", data / "p.mrc", "-m", "phantom", "-o", tmp_path / "seg", "--scheduler", "tcp://127.0.0.1:1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "tcp://127.0.0.1:1" in r.stderr


def test_segment_with_the_shipped_model_then_pick_and_evaluate(data, tmp_path):
    r = _cli("segment", data / "p.mrc", "-m", "phantom", "-o", tmp_path / "seg", "--patch", "32", "--crop", "4",
             "--tiling", "blocks", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert not r.stderr.strip(), r.stderr            # quiet: no distributed, TensorFlow or progress lines
    assert "\n\n" not in r.stdout
    r = _cli("pick", tmp_path / "seg" / "p.zarr", "--method", "cc", "--min-size", "20", "-o", tmp_path / "picks.xml")
    assert r.returncode == 0, r.stderr
    r = _cli("evaluate", tmp_path / "picks.xml", data / "truth" / "p_objects.csv", "--max-dist", "5", "--voxel-size", "10")
    assert r.returncode == 0, r.stderr
    assert "f1" in r.stdout


def test_train_slices_from_tiles(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tiles = rng.normal(size=(6, 32, 32)).astype(np.float32)
    masks = np.zeros((6, 32, 32), np.uint8)
    masks[:3, 10:20, 10:20] = 1
    tiles[masks > 0] += 3
    tc.write_volume(tiles, tmp_path / "tiles.mrc", voxel_size=8.0)
    tc.write_volume(masks, tmp_path / "masks.mrc", voxel_size=8.0, label=True)
    out = tmp_path / "carbon.tcm"
    assert main(["train-slices", "--tiles", str(tmp_path / "tiles.mrc"), "--tile-masks", str(tmp_path / "masks.mrc"),
                 "--arch", "eman2", "--copies", "1", "--epochs", "1", "--valid", "0", "--title", "carbon",
                 "--emit", "-o", str(out)]) == 0
    info = tc.load_archive(out).info
    assert (info.architecture, info.title, info.pixel_size, info.box_size, info.emit) == ("eman2", "carbon", 8.0, 32,
                                                                                         True)
    assert "carbon.tcm" in capsys.readouterr().out
    _one_line_error(capsys, ["train-slices", "--tiles", tmp_path / "tiles.mrc", "-o", tmp_path / "x.tcm"],
                    "--tile-masks")
