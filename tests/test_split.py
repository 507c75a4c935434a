"""A U-Net window with its full-resolution levels in z slabs (nn._split) gives the whole call's scores."""

import numpy as np
import pytest


@pytest.mark.parametrize("anisotropic,precision", [(False, "float32"), (True, "bfloat16")])
def test_slabs_equal_one_network_call(anisotropic, precision):
    from tomochunk.nn._split import SplitUNet
    from tomochunk.nn.models import deepfinder_unet, with_dtype

    net = deepfinder_unet(4, filters=(4, 6, 8), anisotropic=anisotropic)
    if precision != "float32":
        net = with_dtype(net, "mixed_" + precision)
    x = np.random.default_rng(1).normal(size=(24, 20, 16)).astype(np.float32)
    whole = np.moveaxis(np.asarray(net.predict_on_batch(x[None, ..., None]), np.float32)[0], -1, 0)
    split = SplitUNet(net)
    for core in [(slice(0, 24), slice(0, 20), slice(0, 16)), (slice(3, 21), slice(2, 18), slice(4, 12))]:
        for slab in (1, 8 * 320, 10 ** 9):  # the thinnest slabs, a few, the whole window
            got = split.predict_core(x, core, slab_voxels=slab)
            assert np.abs(got - whole[(slice(None),) + core]).max() < 1e-5


@pytest.mark.parametrize("tta", [False, "xy"])
def test_blocks_in_slabs_equal_whole_calls(client, monkeypatch, tta):
    from tomochunk import segment
    from tomochunk.nn import _memory
    from tomochunk.nn.models import deepfinder_unet

    vol = np.random.default_rng(3).normal(size=(48, 64, 40)).astype(np.float32)
    net = deepfinder_unet(3, filters=(2, 3, 4))
    kw = dict(crop=9, tiling="blocks", block_shape=(24, 64, 40), tta=tta)
    monkeypatch.setattr(_memory, "SLAB_BYTES", 0.0)  # no slabs: one call per window
    whole = segment(vol, net, **kw).values
    monkeypatch.setattr(_memory, "SLAB_BYTES", 124.0 * 64 * 40 * 6)  # slabs of 6 planes
    slabs = segment(vol, net, **kw).values
    assert np.abs(slabs - whole).max() < 1e-5
