"""Training from lazy arrays: outputs, resume, metrics, clear errors."""

import dask.array as da
import keras
import numpy as np
import pandas as pd
import pytest
import zarr

import tomochunk
from tomochunk.errors import ShapeError, ValueProblem
from tomochunk.nn.losses import TverskyLoss
from tomochunk.nn.train import PatchSampler, _micro_batches, _objects, class_scores, train
from tomochunk.targets import spheres


@pytest.fixture(scope="module")
def data(tmp_path_factory, sphere_phantom):
    d = tmp_path_factory.mktemp("train")
    vols, tgts, objs = {}, {}, []
    for i, tomo in enumerate(("a", "b")):
        vol, lab, o = sphere_phantom(i, (32, 40, 40), 12)
        z = zarr.open_array(str(d / f"{tomo}.zarr"), mode="w", shape=vol.shape, chunks=(16, 16, 16),
                            dtype="f4")
        z[:] = vol
        vols[tomo] = da.from_zarr(str(d / f"{tomo}.zarr"))          # lazy
        tgts[tomo] = zarr.open_array(str(d / f"{tomo}_t.zarr"), mode="w", shape=lab.shape,
                                     chunks=(16, 16, 16), dtype="u1")
        tgts[tomo][:] = lab
        objs.append(o.assign(tomo=tomo))
    return vols, tgts, objs[0], objs[1]


KW = dict(n_classes=3, patch_size=16, batch_size=2, steps_per_epoch=3, valid_steps=1,
          filters=(4, 4, 8), progress=False, lr=1e-3)


def test_train_outputs_and_resume(data, tmp_path):
    vols, tgts, otrain, ovalid = data
    model, hist = train(vols, tgts, otrain, ovalid, epochs=1, checkpoint_every=1, out_dir=tmp_path, **KW)
    assert list(hist["epoch"]) == [1]
    for c in range(3):
        assert hist[f"val_f1_{c}"].between(0, 1).all()
    assert (hist["patches_per_s"] > 0).all()
    for name in ("history.csv", "history.png", "checkpoint_epoch0001.keras",
                 "model_final.keras", "net_weights_FINAL.h5"):
        assert (tmp_path / name).exists(), name
    legacy = tomochunk.load_model(tmp_path / "net_weights_FINAL.h5")
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 1)).astype("f4")
    np.testing.assert_allclose(legacy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    # resume: continues at epoch 2 and keeps the first row
    _, hist2 = train(vols, tgts, otrain, ovalid, epochs=2, checkpoint_every=5, out_dir=tmp_path,
                     resume=True, **KW)
    assert list(hist2["epoch"]) == [1, 2]
    np.testing.assert_allclose(hist2["loss"][:1], hist["loss"])
    assert (tmp_path / "checkpoint_epoch0002.keras").exists()
    assert tomochunk.train is train


def _twin_nets(seed, optimizer=None):
    """Two identical untrained nets (seeded: the test must not depend on a lucky draw)."""
    keras.utils.set_random_seed(seed)
    nets = [tomochunk.deepfinder_unet(3, filters=KW["filters"]) for _ in range(2)]
    nets[1].set_weights(nets[0].get_weights())
    if optimizer is not None:  # a compiled model keeps its optimiser in train()
        for net in nets:
            net.compile(optimizer=optimizer(), loss=TverskyLoss(3))
    return nets


def test_micro_batches_same_step(data, tmp_path):
    """Micro-batching is the same optimiser step as one call on the whole batch."""
    vols, tgts, otrain, ovalid = data
    kw = {**KW, "batch_size": 5, "epochs": 1, "checkpoint_every": 1, "legacy_h5": False}
    # the gradient itself: one plain SGD step (lr 1) moves each weight by exactly -gradient, so
    # the two moves agree to float32 round-off of the reductions (measured: <= 9e-5 of each
    # array's largest move over 8 initialisations), where a wrongly weighted micro-batch is off by ~10%
    nets = _twin_nets(1, lambda: keras.optimizers.SGD(learning_rate=1.0))
    w0 = nets[0].get_weights()
    one = {**kw, "steps_per_epoch": 1}
    whole, h1 = train(vols, tgts, otrain, ovalid, out_dir=tmp_path / "sgd_whole", micro_batch=None,
                      model=nets[0], **one)
    micro, h2 = train(vols, tgts, otrain, ovalid, out_dir=tmp_path / "sgd_micro", micro_batch=2,
                      model=nets[1], **one)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-5)
    for a, b, o in zip(whole.get_weights(), micro.get_weights(), w0):
        np.testing.assert_allclose(b - o, a - o, atol=1e-3 * np.abs(a - o).max())
    # (any optimiser's step, Adam's too, is a function of these gradients, so its trajectory follows)
    # the micro-batched run's checkpoint carries its optimiser's state, and resuming continues it
    ckpt = keras.saving.load_model(tmp_path / "sgd_micro" / "checkpoint_epoch0001.keras", compile=True,
                                   custom_objects={"TverskyLoss": TverskyLoss})
    assert int(ckpt.optimizer.iterations) == 1
    train(vols, tgts, otrain, ovalid, out_dir=tmp_path / "sgd_micro", micro_batch=2, resume=True,
          **{**one, "epochs": 2, "checkpoint_every": 2})
    ckpt = keras.saving.load_model(tmp_path / "sgd_micro" / "checkpoint_epoch0002.keras", compile=True,
                                   custom_objects={"TverskyLoss": TverskyLoss})
    assert int(ckpt.optimizer.iterations) == 2
    assert _micro_batches(5, 2) == [2, 4] and _micro_batches(2, 2) == _micro_batches(4, None) == []


def test_sampler_augment_and_normalise(data):
    vols, tgts, otrain, _ = data
    objs = _objects(otrain.assign(tomo="a"), ["a", "b"], "objects")
    s = PatchSampler(vols, tgts, objs, 3, (16, 16, 16), shift=3, augment="tomo")
    x, y = s.batch(np.random.default_rng(0), 4)
    assert x.shape == (4, 16, 16, 16, 1) and x.dtype == np.float32 and y.shape == (4, 16, 16, 16)
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3, 4)), 0, atol=1e-4)
    assert s.onehot(y).shape == (4, 16, 16, 16, 3)
    # a 180° turn about y keeps each patch consistent with its target (same data/label pairing)
    rng = np.random.default_rng(5)
    xa, ya = s.patch_at(0, np.random.default_rng(1))
    xr, yr = s._augment(xa, ya, np.random.default_rng(2))
    assert {(xr == xa).all(), (xr == xa[::-1, :, ::-1]).all()} >= {True}
    m = PatchSampler(vols, tgts, objs, 3, (4, 16, 16), shift=0, augment="movie")
    xm, ym = m.batch(rng, 3)
    assert xm.shape == (3, 4, 16, 16, 1)


def test_class_scores():
    p, r, f = class_scores(np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]]))
    assert p[1] == pytest.approx(0.6) and r[1] == pytest.approx(0.75) and f[2] == 0


def test_errors(data, tmp_path):
    vols, tgts, otrain, ovalid = data
    with pytest.raises(ValueProblem, match="multiple of 4"):
        train(vols, tgts, otrain, ovalid, epochs=1, out_dir=tmp_path, **{**KW, "patch_size": 18})
    with pytest.raises(ValueProblem, match=r"\['c'\]"):
        train(vols, tgts, otrain.assign(tomo="c"), ovalid, epochs=1, out_dir=tmp_path, **KW)
    with pytest.raises(ValueProblem, match="n_classes"):
        train(vols, tgts, otrain, ovalid, epochs=1, out_dir=tmp_path, **{**KW, "n_classes": 2})
    # labels in the target beyond n_classes (object list fine)
    bad = {k: np.asarray(v[:]) * 2 for k, v in tgts.items()}
    with pytest.raises(ValueProblem, match="n_classes"):
        train(vols, bad, otrain.assign(class_label=1), ovalid.assign(class_label=1), epochs=1,
              out_dir=tmp_path, **KW)
    with pytest.raises(ShapeError):
        train(vols, {k: np.zeros((8, 8, 8)) for k in tgts}, otrain, ovalid, epochs=1, out_dir=tmp_path, **KW)
    with pytest.raises(ValueProblem, match="micro_batch"):
        train(vols, tgts, otrain, ovalid, epochs=1, out_dir=tmp_path, micro_batch=-1, **KW)


def test_cli_train_bad_patch(data, tmp_path, capsys):
    from tomochunk.cli import main

    vols, tgts, otrain, ovalid = data
    tomochunk.write_objects(otrain, tmp_path / "tr.csv")
    tomochunk.write_objects(ovalid, tmp_path / "va.csv")
    paths = []
    for k in ("a", "b"):
        tomochunk.write_volume(vols[k], tmp_path / f"{k}.zarr", levels=1)
        tomochunk.write_volume(np.asarray(tgts[k][:]), tmp_path / f"{k}_t.zarr", levels=1)
        paths.append(k)
    rc = main(["train", "--volumes", *[str(tmp_path / f"{k}.zarr") for k in paths],
               "--targets", *[str(tmp_path / f"{k}_t.zarr") for k in paths],
               "--train", str(tmp_path / "tr.csv"), "--valid", str(tmp_path / "va.csv"),
               "--n-classes", "3", "--patch", "18", "-o", str(tmp_path / "run")])
    assert rc == 2 and "multiple of 4" in capsys.readouterr().err


def test_train_movie_anisotropic(tmp_path):
    rng = np.random.default_rng(3)
    shape = (6, 32, 32)                           # [t, y, x]
    n = 8
    objs = pd.DataFrame({"class_label": np.ones(n, int), "x": rng.uniform(3, 29, n),
                         "y": rng.uniform(3, 29, n), "z": rng.uniform(0, 6, n)})
    lab = spheres(objs, shape, 2).compute()
    movie = da.from_array(lab + rng.normal(0, 0.3, shape).astype(np.float32), chunks=(2, 16, 16))
    model, hist = train(movie, lab, objs, objs, n_classes=2, patch_size=(3, 16, 16), batch_size=2,
                        steps_per_epoch=2, valid_steps=1, epochs=1, filters=(4, 4, 4), anisotropic=True,
                        out_dir=tmp_path, progress=False, legacy_h5=False)
    assert tomochunk.nn.models.model_info(model)["anisotropic"]
    assert len(hist) == 1 and (tmp_path / "model_final.keras").exists()
    with pytest.raises(ValueProblem, match="multiple of 4"):
        train(movie, lab, objs, objs, n_classes=2, patch_size=(3, 18, 16), anisotropic=True,
              epochs=1, out_dir=tmp_path)


def test_tversky_loss_matches_numpy():
    from tomochunk.nn.losses import TverskyLoss, tversky_loss, tversky_numpy

    rng = np.random.default_rng(0)
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, (2, 8, 8, 8))]
    p = rng.dirichlet(np.ones(3), size=(2, 8, 8, 8)).astype("float32")
    assert float(tversky_loss(y, p)) == pytest.approx(tversky_numpy(y, p), rel=1e-5)
    assert float(tversky_loss(y, y)) == pytest.approx(0, abs=1e-6)
    assert float(TverskyLoss(ce_weight=1.0)(y, p)) > float(TverskyLoss()(y, p))


def test_tversky_loss_class_weights():
    import keras

    from tomochunk.nn.losses import TverskyLoss

    rng = np.random.default_rng(1)
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, (2, 4, 4, 4))]
    p = rng.dirichlet(np.ones(3), size=(2, 4, 4, 4)).astype("float32")
    plain = float(TverskyLoss(ce_weight=1.0)(y, p))
    assert float(TverskyLoss(ce_weight=1.0, class_weights=(1, 1, 1))(y, p)) == pytest.approx(plain, rel=1e-6)
    # the CE of class 2 counted 5 times: the difference is 4 x its share of the CE
    ce2 = -np.mean(y[..., 2] * np.log(p[..., 2]))
    heavy = float(TverskyLoss(ce_weight=1.0, class_weights=(1, 1, 5))(y, p))
    assert heavy - plain == pytest.approx(4 * ce2, rel=1e-4)
    # saved with checkpoints: the weights survive a config round trip
    cfg = keras.saving.serialize_keras_object(TverskyLoss(ce_weight=1.0, class_weights=(1, 2, 3)))
    assert keras.saving.deserialize_keras_object(cfg).class_weights == [1.0, 2.0, 3.0]
