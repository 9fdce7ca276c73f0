"""data.xflip=true: the data set doubled by left-right mirrors, resident and streamed."""

from __future__ import annotations

import pytest
import torch

from gantrain.data import StreamingImageDataset, build_dataset
from gantrain.errors import UserError

from .conftest import MNIST_TRAIN


@pytest.mark.parametrize("streamed", [False, True])
def test_xflip_doubles_the_set_with_mirrors(data_cfg, mnist_root, streamed):
    extra = {"max_device_bytes": 1000} if streamed else {}
    plain = build_dataset(data_cfg("mnist", root=str(mnist_root)), device="cpu", seed=3)
    flip = build_dataset(data_cfg("mnist", root=str(mnist_root), xflip=True, **extra), device="cpu", seed=3)
    assert isinstance(flip, StreamingImageDataset) == streamed
    try:
        assert flip.num_examples == 2 * plain.num_examples == 2 * MNIST_TRAIN
        originals = plain.real_samples(MNIST_TRAIN)[torch.argsort(plain._fixed_indices(MNIST_TRAIN))]
        seen = []
        for step in range(flip.batches_per_epoch(16)):  # one epoch: every image once each way round
            idx, x = flip.indices(step, 16), flip.batch(step, 16)
            for i, img in zip(idx.tolist(), x):
                want = originals[i % MNIST_TRAIN]
                assert torch.equal(img, want.flip(-1) if i >= MNIST_TRAIN else want)
            seen += idx.tolist()
        assert sorted(seen) == list(range(2 * MNIST_TRAIN))
        assert not torch.equal(originals[0], originals[0].flip(-1))  # the mirrors differ from the originals
    finally:
        flip.close()


def test_xflip_is_refused_for_sine_data(data_cfg):
    with pytest.raises(UserError, match="data.xflip") as e:
        build_dataset(data_cfg("sine", xflip=True), device="cpu")
    assert "\n" not in str(e.value)
