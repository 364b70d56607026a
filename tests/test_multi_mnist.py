"""Multi-MNIST generation: the official geometry, seeded partners, the split sizes, and
the per-epoch task draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lit_bioplaus.data import DatasetNotFoundError, MultiMNIST
from lit_bioplaus.data.multi_mnist import overlay_pairs, upscale_digits
from tests.fake_data import N_TEST, N_TRAIN, write_mnist


def reference_overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """ALGORITHMS.md 4.2 written out: a zero 36x36 canvas, the left digit at [0:28, 0:28],
    the right one at [6:34, 6:34], pixelwise max, resized to 28x28 by PIL NEAREST."""
    canvas = np.zeros((36, 36), dtype=np.uint8)
    canvas[0:28, 0:28] = left
    canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], right)
    return np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))


def test_overlay_matches_the_official_geometry_on_random_arrays():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 1, 28, 28), dtype=np.uint8)
    partners = torch.tensor([3, 0, 5, 5, 1, 2])
    combined = overlay_pairs(torch.from_numpy(images), partners).numpy()
    assert combined.shape == (6, 1, 28, 28) and combined.dtype == np.uint8
    for n, j in enumerate(partners.tolist()):
        np.testing.assert_array_equal(combined[n, 0], reference_overlay(images[n, 0], images[j, 0]))


def test_digits_are_upscaled_and_padded_to_28():
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    up = upscale_digits(images)
    assert up.shape == (1, 1, 28, 28)
    expected = np.pad(np.kron(images[0, 0].numpy(), np.ones((3, 3), dtype=np.uint8)), 2)
    np.testing.assert_array_equal(up[0, 0].numpy(), expected)


@pytest.fixture
def mnist_dir(tmp_path):
    written = write_mnist(tmp_path / "MNIST" / "raw", ".gz")
    return tmp_path, written


def test_fake_idx_files_through_the_generator(mnist_dir):
    root, written = mnist_dir
    data = MultiMNIST(source="mnist", data_dir=str(root), train_size=30)
    data.prepare_data()
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (30, N_TRAIN - 30, N_TEST)
    train_images, train_labels = written[True]
    labels = data.train_set.targets
    assert labels.shape == (30, 2)
    np.testing.assert_array_equal(labels[:, 0].numpy(), train_labels[:30])  # every image is the left digit once
    partners = data.train_set.partners
    assert int(partners.min()) >= 0 and int(partners.max()) < 30  # partners from the same split range
    np.testing.assert_array_equal(labels[:, 1].numpy(), train_labels[:30][partners.numpy()])
    for n, j in enumerate(partners.tolist()):
        np.testing.assert_array_equal(
            data.train_set.images[n, 0].numpy(), reference_overlay(train_images[n], train_images[j])
        )
    x, batch_labels, rows = data.train_set.__getitems__([0, 5])
    assert x.shape == (2, 1, 28, 28) and batch_labels.shape == (2, 2) and rows.tolist() == [0, 5]
    assert int(data.test_set.partners.max()) < N_TEST


def test_generation_is_deterministic_for_a_seed(mnist_dir):
    root, _ = mnist_dir

    def images(seed: int) -> torch.Tensor:
        data = MultiMNIST(source="mnist", data_dir=str(root), train_size=30, generator_seed=seed)
        data.setup("fit")
        return data.train_set.images

    assert torch.equal(images(0), images(0))
    assert not torch.equal(images(0), images(1))


def test_multi_digits_split_sizes():
    data = MultiMNIST(source="digits")
    data.setup()
    assert (len(data.train_set), data.val_set, len(data.test_set)) == (1438, None, 359)
    assert data.val_dataloader() == []
    assert data.input_shape == (1, 28, 28) and data.num_tasks == 2


def test_tasks_are_drawn_per_sample_per_epoch_from_the_seed():
    data = MultiMNIST(source="digits", seed=3)
    data.setup("fit")
    rows = torch.arange(len(data.train_set))
    epoch0, epoch1 = data.tasks(rows, 0), data.tasks(rows, 1)
    assert set(epoch0.tolist()) == {0, 1} and not torch.equal(epoch0, epoch1)
    assert 0.45 < float(epoch0.float().mean()) < 0.55
    shuffled = torch.randperm(len(rows))
    assert torch.equal(data.tasks(rows[shuffled], 0), epoch0[shuffled])  # the same whatever the order
    other = MultiMNIST(source="digits", seed=3)
    other.setup("fit")
    assert torch.equal(other.tasks(rows, 1), epoch1)
    data.trainer = type("TrainerStub", (), {"training": True, "current_epoch": 1})()
    *_, tasks = data.on_before_batch_transfer(data.train_set.__getitems__([4, 2, 9]), 0)
    assert tasks.tolist() == epoch1[[4, 2, 9]].tolist()
    data.trainer.training = False  # evaluation batches: task 0, unused
    assert data.on_before_batch_transfer(data.train_set.__getitems__([4, 2]), 0)[2].tolist() == [0, 0]
    image, labels, row = data.train_set[7]
    assert image.shape == (1, 28, 28) and labels.shape == (2,) and int(row) == 7


def test_missing_mnist_files_give_the_usual_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MNIST not found"):
        MultiMNIST(source="mnist", data_dir=str(tmp_path)).prepare_data()
    with pytest.raises(ValueError, match="source"):
        MultiMNIST(source="emnist")
