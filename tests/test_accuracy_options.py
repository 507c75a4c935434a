"""Accuracy options (issue 23): losses, wedge-safe augmentation, EMA, lr schedule, sampling balance,
best checkpoint, wall-clock budget; TTA and ensembles in segment."""

import json

import dask.array as da
import keras
import numpy as np
import pandas as pd
import pytest

from tomochunk.errors import ValueProblem
from tomochunk.nn._augment import lr_at, wedge_augment
from tomochunk.nn._trainsteps import WeightAverage
from tomochunk.nn.train import PatchSampler, _objects, train


@pytest.fixture(scope="module")
def data(sphere_phantom):
    vol, lab, objs = sphere_phantom(0, (32, 32, 32), 10)
    return {"a": da.from_array(vol, chunks=16)}, {"a": lab}, objs.assign(tomo="a")


KW = dict(n_classes=3, patch_size=16, batch_size=2, steps_per_epoch=2, valid_steps=1,
          filters=(4, 4, 8), progress=False, lr=1e-3, legacy_h5=False)


def test_wedge_augment_moves_labels_with_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 12, 12)).astype("f4")
    seen = set()
    for _ in range(40):
        xa, ya = wedge_augment(x, x.copy(), rng, scale=0, shift=0)
        np.testing.assert_array_equal(xa, ya)           # labels follow the data exactly
        assert xa.shape == x.shape and xa.flags.c_contiguous
        seen.add(xa.tobytes())
    assert len(seen) > 8                                # flips x rotations vary
    # z stays z: the set of values in each z slice is kept up to a z flip
    xa, _ = wedge_augment(x, x, np.random.default_rng(2), scale=0, shift=0)
    slices = {tuple(np.sort(s.ravel())) for s in x}
    assert all(tuple(np.sort(s.ravel())) in slices for s in xa)
    # intensity jitter: affine, bounded
    xj, _ = wedge_augment(x, x, np.random.default_rng(3), flips=False, rot90=False, scale=0.2, shift=0.3)
    a, b = np.polyfit(x.ravel(), xj.ravel(), 1)
    assert 0.8 <= a <= 1.2 and abs(b) <= 0.3


def test_lr_schedule():
    assert lr_at(0.0, 1.0) == 0.0 and lr_at(0.05, 1.0) == pytest.approx(1.0)
    vals = [lr_at(p, 1.0) for p in np.linspace(0.05, 1, 20)]
    assert all(a >= b for a, b in zip(vals, vals[1:])) and vals[-1] == pytest.approx(0.01)


def test_sqrt_class_balance(data):
    vols, tgts, objs = data
    o = pd.concat([objs[objs.class_label == 1].iloc[:1]] + [objs[objs.class_label == 2]] * 8)
    s = PatchSampler(vols, tgts, _objects(o, ["a"], "o"), 3, (16, 16, 16), bootstrap="sqrt")
    rng = np.random.default_rng(0)
    picked = np.array([s.labels[s._pick(rng)] for _ in range(2000)])
    n1, n2 = (o.class_label == 1).sum(), (o.class_label == 2).sum()
    expect = np.sqrt(n1) / (np.sqrt(n1) + np.sqrt(n2))
    assert abs((picked == 1).mean() - expect) < 0.04


def test_weight_average_tracks():
    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    avg = WeightAverage(m, 0.5)
    w0 = [np.array(v) for v in m.trainable_weights]
    m.trainable_weights[1].assign([2.0])
    for _ in range(30):
        avg.update()
    assert avg.average[1][0] == pytest.approx(2.0, abs=1e-3)
    avg.swap_in()
    avg.swap_out()
    np.testing.assert_array_equal(np.array(m.trainable_weights[0]), w0[0])


def test_train_czii_options(data, tmp_path):
    vols, tgts, objs = data
    model, hist = train(vols, tgts, objs, objs, epochs=2, out_dir=tmp_path, pos_weight=256, ema=0.9,
                        lr_schedule="cosine", augment="wedge", bootstrap="sqrt", shift=2, **KW)
    assert list(hist["epoch"]) == [1, 2] and np.isfinite(hist["loss"]).all()
    assert (tmp_path / "model_best.keras").exists() and (tmp_path / "model_final.keras").exists()
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["mean_val_f1"] == pytest.approx(
        max(hist[["val_f1_1", "val_f1_2"]].mean(axis=1)), abs=1e-9)
    assert float(model.optimizer.learning_rate) < 1e-3        # cosine decayed
    sizes = json.loads((tmp_path / "sizes.json").read_text())["classes"]
    assert set(sizes) == {"1", "2"} and all(0 < v["p5"] <= v["p50"] <= v["p95"] for v in sizes.values())


def test_train_ema_model_is_average(data, tmp_path):
    vols, tgts, objs = data
    model, hist = train(vols, tgts, objs, objs, epochs=1, out_dir=tmp_path, ema=0.5, keep_best=False, **KW)
    final = keras.saving.load_model(tmp_path / "model_final.keras", compile=False)
    ckpt = keras.saving.load_model(tmp_path / "checkpoint_epoch0001.keras", compile=False)
    a, r = final.get_weights(), ckpt.get_weights()        # checkpoint: raw weights; final: the average
    assert any(not np.allclose(x, y) for x, y in zip(a, r))
    assert not (tmp_path / "model_best.keras").exists()


def test_train_minutes_budget(data, tmp_path):
    vols, tgts, objs = data
    _, hist = train(vols, tgts, objs, objs, epochs=50, out_dir=tmp_path, minutes=1e-4, **KW)
    assert len(hist) == 1            # stopped at the budget, validated, saved
    assert (tmp_path / "model_final.keras").exists()


def test_train_option_errors(data, tmp_path):
    vols, tgts, objs = data
    for kw, msg in (({"ema": 1.5}, "ema"), ({"lr_schedule": "step"}, "lr_schedule"),
                    ({"minutes": 0}, "minutes"), ({"pos_weight": -1}, "pos_weight"),
                    ({"augment": "spin"}, "augment")):
        with pytest.raises(ValueProblem, match=msg):
            train(vols, tgts, objs, objs, epochs=1, out_dir=tmp_path, **kw, **KW)


def test_cli_train_recipe_czii(tmp_path, sphere_phantom):
    from tomochunk.cli import main
    from tomochunk.io.objects import write_objects
    from tomochunk.io.volume import write_volume

    vol, lab, objs = sphere_phantom(1, (32, 32, 32), 10)
    write_volume(vol, tmp_path / "a.mrc", voxel_size=10)
    write_volume(lab.astype(np.uint8), tmp_path / "a_lab.mrc", voxel_size=10, label=True)
    write_objects(objs, tmp_path / "o.csv")
    rc = main(["train", "--volumes", str(tmp_path / "a.mrc"), "--targets", str(tmp_path / "a_lab.mrc"),
               "--train", str(tmp_path / "o.csv"), "--valid", str(tmp_path / "o.csv"), "--n-classes", "3",
               "--patch", "16", "--batch", "2", "--epochs", "1", "--steps", "2", "--valid-steps", "1",
               "--filters", "4,4,8", "--recipe", "czii", "--minutes", "5", "--no-bootstrap", "--shift", "3",
               "-o", str(tmp_path / "run")])
    assert rc in (0, None)
    assert (tmp_path / "run" / "model_best.keras").exists()


# --- inference: TTA and ensembles -----------------------------------------------------------

@pytest.fixture(scope="module")
def net():
    import tomochunk

    keras.utils.set_random_seed(0)
    return tomochunk.deepfinder_unet(3, filters=(4, 4, 8))


def _sym(shape=(32, 32, 32)):
    a = np.random.default_rng(0).normal(size=shape).astype("f4")
    return sum(np.flip(a, ax) for ax in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)])


def test_tta_flip_symmetric_input(net):
    from tomochunk.nn.segment import segment

    v = _sym()
    s = segment(v, net, tiling="blocks", block_shape=32, crop=8, tta=True).values
    for ax in (1, 2, 3, (1, 2, 3)):
        np.testing.assert_allclose(s, np.flip(s, ax), atol=1e-5)
    plain = segment(v, net, tiling="blocks", block_shape=32, crop=8).values
    assert np.abs(plain - np.flip(plain, 3)).max() > 1e-4     # the network alone is not symmetric


def test_tta_blockwise_equals_whole(net):
    from tomochunk.nn.segment import segment

    # split along z and y (x whole): the flips of both split axes cross block borders
    v = np.random.default_rng(1).normal(size=(64, 64, 32)).astype("f4")
    whole = segment(v, net, tiling="blocks", block_shape=64, crop=25, tta=True).values
    blocks = segment(da.from_array(v, chunks=32), net, tiling="blocks", block_shape=32, crop=25, tta=True)
    assert np.abs(blocks.values - whole).max() <= 1e-4
    xy = segment(v[:32, :32, :32], net, tiling="blocks", block_shape=32, crop=8, tta="xy")
    assert "TTA x4" in xy.attrs["segment"]["model"]
    with pytest.raises(ValueProblem, match="tta"):
        segment(v, net, tiling="blocks", tta="spin")


def test_ensemble_of_itself_equals_model(net, tmp_path):
    from tomochunk.nn.segment import segment

    path = tmp_path / "m.keras"
    net.save(path)
    v = np.random.default_rng(2).normal(size=(32, 32, 32)).astype("f4")
    one = segment(v, str(path), patch_size=32, crop=4).values
    two = segment(v, [str(path), net], patch_size=32, crop=4).values
    np.testing.assert_allclose(two, one, atol=1e-6)


# --- picking: per-class size filters from the model's sizes.json ----------------------------

def test_size_filter_keeps_classes_it_lacks():
    from tomochunk.workflows.picking import size_filter

    objs = pd.DataFrame({"class_label": [1, 1, 2], "size": [10, 100, 5], "x": 0.0, "y": 0.0, "z": 0.0})
    assert size_filter(objs, {"1": {"p5": 100.0}}, 0.5)["size"].tolist() == [100, 5]
    assert len(size_filter(objs, None)) == 3 and len(size_filter(objs, {"1": {"p5": 1e9}}, 0)) == 3


def test_pick_uses_the_models_sizes(net, tmp_path):
    from tomochunk.cli import main
    from tomochunk.io.objects import read_objects
    from tomochunk.nn.segment import segment
    from tomochunk.workflows.picking import model_sizes, pick_inputs
    from tomochunk.workflows.segment import write_segmentation

    model = tmp_path / "run" / "m.keras"
    model.parent.mkdir()
    net.save(model)
    v = np.random.default_rng(3).normal(size=(32, 32, 32)).astype("f4")
    store = tmp_path / "seg.zarr"
    write_segmentation(segment(v, str(model), patch_size=32, crop=4), store)
    assert model_sizes(store) is None                       # no sizes.json beside the model: no filter
    every = pick_inputs(store, method="cc")
    assert len(every) > 0
    big = {c: {"n": 1, "p5": 1e9, "p50": 1e9, "p95": 1e9} for c in ("1", "2")}
    (model.parent / "sizes.json").write_text(json.dumps({"classes": big}))
    assert model_sizes(store) == big
    assert len(pick_inputs(store, method="cc")) == 0        # auto: the model's sizes drop every object
    assert len(pick_inputs(store, method="cc", sizes=None)) == len(every)
    assert len(pick_inputs(store, method="cc", size_factor=0)) == len(every)
    # centroids of a thresholded score map carry voxel counts too: the same filter applies
    assert len(pick_inputs(store, method="centroid", threshold=0.3, sizes=None)) > 0
    assert len(pick_inputs(store, method="centroid", threshold=0.3)) == 0
    out = tmp_path / "o.csv"
    assert main(["pick", str(store), "--method", "cc", "-o", str(out)]) in (0, None)
    assert len(read_objects(out)) == 0
    assert main(["pick", str(store), "--method", "cc", "--sizes", "none", "-o", str(out), "--overwrite"]) in (0, None)
    assert len(read_objects(out)) == len(every)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"classes": {"1": {"p5": 1.0}, "2": {"p5": 1.0}}}))
    assert len(pick_inputs(store, method="cc", sizes=small)) == len(every)


def test_train_recipe_default_is_czii_and_deepfinder_one_flag_away():
    from tomochunk.cli import _accuracy_options, _parser
    from tomochunk.nn.train import RECIPES

    base = ["train", "--volumes", "v.mrc", "--targets", "t.mrc", "--train", "a.xml", "--valid", "b.xml",
            "--n-classes", "3", "-o", "out"]
    p = _parser()
    args = p.parse_args(base)
    kw = _accuracy_options(args)
    assert args.recipe == "czii" and args.ce_weight == 1.0
    assert {k: kw[k] for k in ("pos_weight", "augment", "ema", "lr_schedule", "lr")} == \
        {k: RECIPES["czii"].get(k) for k in ("pos_weight", "augment", "ema", "lr_schedule", "lr")}
    assert kw["lr"] == 1e-3 and _accuracy_options(p.parse_args(base + ["--lr", "3e-4"]))["lr"] == 3e-4
    assert kw["patch_size"] == RECIPES["czii"]["patch_size"] == 24
    assert _accuracy_options(p.parse_args(base + ["--patch", "40"]))["patch_size"] == 40
    assert kw["batch_size"] == 4 and kw["filters"] == (16, 24, 32)
    kw2 = _accuracy_options(p.parse_args(base + ["--batch", "8", "--filters", "default"]))
    assert kw2["batch_size"] == 8 and kw2["filters"] == "default"
    assert _accuracy_options(p.parse_args(base + ["--filters", "8,16,24"]))["filters"] == (8, 16, 24)
    assert _accuracy_options(p.parse_args(base + ["--pos-weight", "256"]))["pos_weight"] == 256.0
    args = p.parse_args(base + ["--recipe", "deepfinder"])
    kw = _accuracy_options(args)
    assert args.ce_weight == 0.0 and kw["pos_weight"] is None and kw["ema"] is None
    assert kw["augment"] == "tomo" and kw["lr_schedule"] == "constant" and kw["bootstrap"] and kw["shift"] == 13
    assert kw["lr"] == 1e-4 and not {"patch_size", "batch_size", "filters"} & set(kw)   # train()'s own 48, 8, 32-48-64
    # explicit options override the recipe's parts; PU losses and movies keep what suits them
    kw = _accuracy_options(p.parse_args(base + ["--ema", "0.99", "--lr-schedule", "constant"]))
    assert kw["ema"] == 0.99 and kw["lr_schedule"] == "constant"
    assert _accuracy_options(p.parse_args(base + ["--ema", "0"]))["ema"] is None
    args = p.parse_args(base + ["--loss", "pu", "--tau", "0.1"])
    kw = _accuracy_options(args)
    assert kw["pos_weight"] is None and args.ce_weight == 0.0
    kw = _accuracy_options(p.parse_args(base + ["--class-weights", "1,2,3", "--ce-weight", "1"]))
    assert kw["pos_weight"] is None and kw["class_weights"] == [1.0, 2.0, 3.0]
    kw = _accuracy_options(p.parse_args(base + ["--anisotropic"]))
    assert kw["augment"] is None and not {"patch_size", "batch_size", "filters"} & set(kw)


def test_train_precision_auto_follows_the_cpu_flags(tmp_path):
    # emulated bfloat16 trained ~10x fewer steps than float32 (Zen 3): auto must pick it only on real units
    from tomochunk.errors import ValueProblem
    from tomochunk.nn import _trainsteps as steps
    from tomochunk.nn._predict import resolve_precision

    plain, bf16 = tmp_path / "plain", tmp_path / "bf16"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert resolve_precision("auto", cpuinfo=str(plain)) == "float32"
    assert resolve_precision("auto", cpuinfo=str(bf16)) == "bfloat16"
    assert resolve_precision("auto", gpu=True, cpuinfo=str(plain)) == "bfloat16"
    assert steps.check_args(4, 24, False, "wedge", None, "auto")[1] == (24, 24, 24)
    with pytest.raises(ValueProblem, match="auto"):
        steps.check_args(4, 24, False, "wedge", None, "float16")
    from tomochunk.cli import _parser

    base = ["train", "--volumes", "v.mrc", "--targets", "t.mrc", "--train", "a.xml", "--valid", "b.xml",
            "--n-classes", "3", "-o", "out"]
    assert _parser().parse_args(base).precision == "auto"
    assert _parser().parse_args(base + ["--bf16"]).precision == "bfloat16"
