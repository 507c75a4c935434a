"""`pick` and `train` on a running scheduler (a real multi-process LocalCluster, the session's `client`)
give what the local run gives (issue 22); `tirf segment`'s check is in test_cli_tirf.py."""

import numpy as np
import pytest

import tomochunk as tc
from tomochunk.cli import main


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("sched")
    assert main(["phantom", str(d / "p.zarr"), "--shape", "32,48,48", "--classes", "2", "--snr", "2",
                 "--seed", "4", "--levels", "2"]) == 0
    return d


def test_pick_score_and_label_methods_remote_equals_local(phantom, tmp_path, client):
    # a score map [c, z, y, x] from the truth: smooth per-class blobs
    from scipy import ndimage as ndi

    lab = np.asarray(tc.open_volume(phantom / "truth" / "p_labels.zarr"))
    sc = np.stack([ndi.gaussian_filter((lab == k).astype(np.float32), 1.5) for k in range(3)])
    import xarray as xr

    tc.write_volume(xr.DataArray(sc, dims=("c", "z", "y", "x")), tmp_path / "scores.zarr", voxel_size=10.0,
                    levels=1)
    runs = [(phantom / "truth" / "p_labels.zarr", ["--method", "meanshift", "--radius", "4", "--min-size", "5"]),
            (phantom / "truth" / "p_labels.zarr", ["--method", "cc", "--level", "1", "--min-size", "2"]),
            (tmp_path / "scores.zarr", ["--method", "peaks", "--threshold", "0.2", "--min-spacing", "4"]),
            (tmp_path / "scores.zarr", ["--method", "heatmap", "--threshold", "0.2", "--min-spacing", "3"])]
    for i, (src, opts) in enumerate(runs):
        common = ["pick", str(src), *opts]
        assert main([*common, "-o", str(tmp_path / f"local{i}.csv")]) == 0
        assert main([*common, "-o", str(tmp_path / f"remote{i}.csv"), "--scheduler", client.scheduler.address]) == 0
        local, remote = (tc.read_objects(tmp_path / f"{n}{i}.csv") for n in ("local", "remote"))
        assert len(local) > 0, opts
        assert local.equals(remote), opts


def test_train_remote_equals_local(phantom, tmp_path, client):
    """Patches are drawn from a generator seeded per (epoch, step) and the network trains in this process
    (the scheduler's workers read the patches), so with the same seed the runs are bit-identical."""
    import pandas as pd

    truth = phantom / "truth" / "p_objects.csv"
    common = ["train", "--volumes", str(phantom / "p.zarr"), "--targets", str(phantom / "truth" / "p_labels.zarr"),
              "--train", str(truth), "--valid", str(truth), "--n-classes", "3", "--patch", "16", "--batch", "2",
              "--epochs", "2", "--steps", "2", "--valid-steps", "1", "--filters", "small", "--seed", "7",
              "--checkpoint-every", "1"]
    assert main([*common, "-o", str(tmp_path / "local")]) == 0
    assert main([*common, "-o", str(tmp_path / "remote"), "--scheduler", client.scheduler.address]) == 0
    import keras

    a, b = (keras.saving.load_model(tmp_path / n / "model_final.keras", compile=False) for n in ("local", "remote"))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    ha, hb = (pd.read_csv(next((tmp_path / n).glob("history*.csv"))) for n in ("local", "remote"))
    cols = [c for c in ha.columns if c == "epoch" or "loss" in c or c.startswith("val_")]  # not timings
    assert {"loss", "val_loss", "val_f1_1"} <= set(cols)
    pd.testing.assert_frame_equal(ha[cols], hb[cols], check_exact=True)
