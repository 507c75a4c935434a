"""nnPU loss, masked Dice+CE, labelled-region patch sampling and PU training (tiny)."""

import keras
import numpy as np
import pandas as pd
import pytest

from tomochunk.errors import ValueProblem
from tomochunk.nn.pu import MaskedDiceCELoss, NNPULoss, make_loss, masked_dice_ce_loss, nnpu_loss
from tomochunk.nn.train import PatchSampler


def _ref_nnpu(lab, p, tau, beta=0.0, gamma=1.0, balanced=False):
    pos, unl = lab == 1, lab == 0
    r_pp = (1 - p[pos]).sum() / max(pos.sum(), 1)
    r_pn = p[pos].sum() / max(pos.sum(), 1)
    r_un = p[unl].sum() / max(unl.sum(), 1)
    neg = r_un - tau * r_pn
    w_p, w_n = (0.5, 0.5 / (1 - tau)) if balanced else (tau, 1.0)
    return -gamma * w_n * neg if neg < -beta else w_p * r_pp + w_n * neg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nnpu_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    lab = rng.choice([0, 1, 2], size=(2, 6, 6, 6), p=[0.8, 0.1, 0.1])
    p1 = rng.uniform(size=lab.shape).astype(np.float32)
    if seed == 2:  # drive the non-negative branch: positives scored high, unlabeled low
        p1 = np.where(lab == 1, 0.99, 0.001).astype(np.float32)
    y_pred = np.stack([1 - p1, p1], -1)
    y_true = np.eye(3, dtype=np.float32)[lab]
    for tau in (0.05, 0.5):
        got = float(nnpu_loss(y_true, y_pred, tau))
        np.testing.assert_allclose(got, _ref_nnpu(lab, p1, tau), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(nnpu_loss(y_true, y_pred, tau, balanced=True)),
                                   _ref_nnpu(lab, p1, tau, balanced=True), rtol=1e-5, atol=1e-6)
    # a single sigmoid channel gives the same
    np.testing.assert_allclose(float(nnpu_loss(y_true, p1[..., None], 0.1)), _ref_nnpu(lab, p1, 0.1),
                               rtol=1e-5, atol=1e-6)
    # ignored voxels do not matter
    p2 = np.where(lab == 2, rng.uniform(size=lab.shape), p1).astype(np.float32)
    np.testing.assert_allclose(float(nnpu_loss(y_true, np.stack([1 - p2, p2], -1), 0.1)),
                               float(nnpu_loss(y_true, y_pred, 0.1)), rtol=1e-6)


def test_logistic_surrogate_and_loss_classes_serialise():
    y = np.eye(2, dtype=np.float32)[np.array([[0, 1, 0, 0]])]
    p = np.array([[[0.8, 0.2], [0.3, 0.7], [0.9, 0.1], [0.6, 0.4]]], np.float32)
    tau = 0.2
    r_pp, r_pn, r_un = -np.log(0.7), -np.log(0.3), -np.mean(np.log([0.8, 0.9, 0.6]))
    neg = r_un - tau * r_pn
    expected = tau * r_pp + neg if neg >= 0 else -neg
    np.testing.assert_allclose(float(nnpu_loss(y, p, tau, surrogate="logistic")), expected, rtol=1e-5)
    for loss in (NNPULoss(tau=0.03, beta=0.01, surrogate="logistic", balanced=True),
                 MaskedDiceCELoss(ce_weight=0.5)):
        cfg = keras.saving.serialize_keras_object(loss)
        back = keras.saving.deserialize_keras_object(cfg)
        assert type(back) is type(loss) and back.get_config() == loss.get_config()
    with pytest.raises(ValueProblem):
        NNPULoss(tau=1.5)
    with pytest.raises(ValueProblem):
        make_loss("pu")
    with pytest.raises(ValueProblem):
        make_loss("focal")


def test_masked_dice_ce_ignores_extra_channel():
    rng = np.random.default_rng(0)
    lab = rng.choice([0, 1, 2], size=(1, 8, 8, 8), p=[0.7, 0.2, 0.1])
    y_true = np.eye(3, dtype=np.float32)[lab]
    p1 = rng.uniform(0.01, 0.99, size=lab.shape).astype(np.float32)
    p2 = np.where(lab == 2, 1 - p1, p1).astype(np.float32)
    a = float(masked_dice_ce_loss(y_true, np.stack([1 - p1, p1], -1)))
    b = float(masked_dice_ce_loss(y_true, np.stack([1 - p2, p2], -1)))
    assert a == pytest.approx(b, rel=1e-6)
    perfect = np.eye(2, dtype=np.float32)[np.where(lab == 1, 1, 0)]
    assert float(masked_dice_ce_loss(y_true, np.clip(perfect, 1e-6, 1))) < 1e-3


def test_patch_sampler_region_box_and_mask():
    shape = (24, 24, 32)
    vol = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tgt = np.zeros(shape, np.uint8)
    objs = (np.array(["0"], dtype=object), np.array([1]), np.array([[12, 12, 10]]))
    box = ((0, 24), (0, 24), (0, 20))
    s = PatchSampler({"0": vol}, {"0": tgt}, objs, 2, (8, 8, 8), shift=8, region={"0": box}, ignore_label=2)
    rng = np.random.default_rng(1)
    for _ in range(10):
        x, y = s.batch(rng, 2, augment=False)
        assert x.shape == (2, 8, 8, 8, 1) and (y < 2).all()  # patches stay inside the box
    assert s.onehot(y).shape[-1] == 3
    mask = np.zeros(shape, bool)
    mask[:, :, :11] = True
    s = PatchSampler({"0": vol}, {"0": tgt}, objs, 2, (8, 8, 8), shift=0, region={"0": mask}, ignore_label=2)
    x, y = s.patch_at(0, rng)
    # patch x range 6..14: columns >= 11 are outside the mask
    assert (y[:, :, 5:] == 2).all() and (y[:, :, :5] == 0).all()
    with pytest.raises(ValueProblem):
        PatchSampler({"0": vol}, {"0": tgt}, objs, 2, (8, 8, 8), region={"0": box})  # no ignore label


def test_train_pu_from_cli_on_zarr(tmp_path):
    from tomochunk.cli import main
    from tomochunk.io.objects import write_objects
    from tomochunk.io.volume import write_volume
    from tomochunk.nn.models import load_model
    from tomochunk.ops.heatmap import heatmap_targets

    shape = (16, 32, 32)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=shape).astype(np.float32)
    objs = pd.DataFrame({"tomo": ["t"] * 2, "class_label": [1, 1], "x": [8.0, 10.0], "y": [8.0, 20.0],
                         "z": [8.0, 8.0]})
    for _, o in objs.iterrows():
        vol[int(o.z) - 2:int(o.z) + 3, int(o.y) - 2:int(o.y) + 3, int(o.x) - 2:int(o.x) + 3] += 3
    _, lab = heatmap_targets(objs, shape, sigma=1.5, chunks=16)
    write_volume(vol, tmp_path / "t.zarr", voxel_size=10.0, chunks=16)
    write_volume(lab, tmp_path / "t_heat.zarr", voxel_size=10.0, chunks=16, label=True)
    write_objects(objs, tmp_path / "lab.csv")
    out = tmp_path / "run"
    rc = main(["train", "--volumes", str(tmp_path / "t.zarr"), "--targets", str(tmp_path / "t_heat.zarr"),
               "--train", str(tmp_path / "lab.csv"), "--valid", str(tmp_path / "lab.csv"), "--n-classes", "2",
               "--patch", "16", "--batch", "3", "--micro-batch", "1", "--epochs", "1", "--steps", "2", "--valid-steps", "1",
               "--filters", "small", "--loss", "pu", "--tau", "0.05", "--region", "0:16,0:32,0:16",
               "--workers", "1", "-o", str(out)])
    assert rc == 0
    model = load_model(out / "model_final.keras")
    assert model.output_shape[-1] == 2
    hist = pd.read_csv(out / "history.csv")
    assert np.isfinite(hist["loss"]).all() and np.isfinite(hist["val_loss"]).all()
    # the PU loss without --tau is a one-line user error
    rc = main(["train", "--volumes", str(tmp_path / "t.zarr"), "--targets", str(tmp_path / "t_heat.zarr"),
               "--train", str(tmp_path / "lab.csv"), "--valid", str(tmp_path / "lab.csv"), "--n-classes", "2",
               "--patch", "16", "--loss", "pu", "-o", str(tmp_path / "run2")])
    assert rc == 2
