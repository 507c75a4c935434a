"""write_segmentation on a real LocalCluster: no distributed key collisions (issue 21), inputs named
afresh when their store is rewritten."""

import io
import logging

import numpy as np
import pytest

import tomochunk as tc
from tomochunk.workflows.segment import write_segmentation


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import keras

    from tomochunk.nn.models import deepfinder_unet, save_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "net.keras"
    save_model(deepfinder_unet(3, filters=(2, 3, 4)), path)
    return str(path)


@pytest.fixture
def scheduler_log():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    yield buf
    logger.removeHandler(handler)


def test_no_run_spec_collision_in_write_segmentation(client, tmp_path, net, scheduler_log):
    import mrcfile

    vol = np.random.default_rng(0).normal(size=(24, 40, 36)).astype(np.float32)
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(vol)
    store = tmp_path / "t.zarr"
    tc.convert(tmp_path / "t.mrc", store, chunks=16, levels=1)
    for tiling in ("patches", "blocks"):
        v = tc.open_volume(store)
        v.attrs.pop("tomochunk")  # statistics computed on the cluster: one more graph over the same input
        held = client.persist(v.data)  # the input's keys stay on the scheduler meanwhile
        scores = tc.segment(v, net, patch_size=16, crop=4, tiling=tiling, block_shape=16, client=client)
        write_segmentation(scores, store, chunks=16, client=client, overwrite=True)
        del held
    # the store rewritten under the same path and shape: the new read gets new keys
    before = tc.open_volume(store).data.name
    tc.convert(tmp_path / "t.mrc", store, chunks=16, levels=1, overwrite=True)
    assert tc.open_volume(store).data.name != before
    assert "run_spec" not in scheduler_log.getvalue()
