"""DataModules: on-disk readers (tiny files in the real formats), splits, loaders, errors."""

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from lit_bioplaus.data import (
    CIFAR10,
    CIFAR100,
    DATAMODULES,
    MNIST,
    STL10,
    DatasetNotFoundError,
    Digits,
    FashionMNIST,
    InMemoryImageDataset,
    VisionDataModule,
    get_datamodule,
)
from lit_bioplaus.data.datasets import read_idx
from tests.fake_data import N_TEST, N_TRAIN, write_cifar, write_idx, write_mnist, write_stl10


def normalised(images: np.ndarray, dm: VisionDataModule) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    return (torch.from_numpy(images).float() / 255 - mean) / std


@pytest.mark.parametrize("cls", DATAMODULES.values())
def test_shapes_known_without_touching_disk(cls, tmp_path):
    dm = cls(data_dir=str(tmp_path / "absent"))
    channels = dm.input_shape[0]
    assert len(dm.input_shape) == 3
    assert dm.num_classes in (10, 100)
    assert len(dm.mean) == len(dm.std) == channels
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize(
    ("cls", "subfolder", "suffix"),
    [
        (MNIST, ".", ".gz"),  # flat, as dataset-fashion-mnist installs it
        (MNIST, "MNIST/raw", ""),  # torchvision's layout, extracted
        (FashionMNIST, ".", ""),
        (FashionMNIST, "FashionMNIST/raw", ".gz"),
    ],
)
def test_mnist_layouts(cls, subfolder, suffix, tmp_path):
    splits = write_mnist(tmp_path / subfolder, suffix)
    dm = cls(data_dir=str(tmp_path), batch_size=8, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, N_TEST)

    x, y = next(iter(dm.test_dataloader()))
    images, labels = splits[False]
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, normalised(images[:8, None], dm))
    assert torch.equal(y, torch.from_numpy(labels[:8]))


def test_fashion_mnist_searches_debian_package_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = FashionMNIST().candidate_folders
    assert folders[0] == Path("/usr/share/datasets/fashion-mnist/FashionMNIST/raw")
    assert Path("/usr/share/datasets/fashion-mnist") in folders
    assert folders[-1] == Path("data")


def test_idx_reader_rejects_corrupt_files(tmp_path):
    good = tmp_path / "good.gz"
    write_idx(good, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert read_idx(good).shape == (2, 3, 4)

    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x00\x01\x08\x01\x00\x00\x00\x01\x07")
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good.read_bytes()[:-12])
    too_short = tmp_path / "too-short"
    write_idx(too_short, np.zeros(5, np.uint8))
    too_short.write_bytes(too_short.read_bytes()[:-1])
    cases = [(bad_magic, "not an IDX file"), (truncated, "corrupt"), (too_short, "shorter")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            read_idx(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("cls", "folder", "train_files", "test_files", "label_key"),
    [
        (
            CIFAR10,
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            b"labels",
        ),
        (CIFAR100, "cifar-100-python", ["train"], ["test"], b"fine_labels"),
    ],
)
def test_cifar(cls, folder, train_files, test_files, label_key, tmp_path):
    sizes = {name: 4 for name in train_files} | {name: 6 for name in test_files}
    written = write_cifar(tmp_path / folder, sizes, label_key, cls.num_classes)
    dm = cls(data_dir=str(tmp_path), val_fraction=0.0)
    dm.setup()
    assert len(dm.train_set) == 4 * len(train_files) and len(dm.val_set) == 0

    images = np.concatenate([written[name][0] for name in train_files])
    labels = np.concatenate([written[name][1] for name in train_files])
    assert torch.equal(dm.train_set.images, torch.from_numpy(images))
    assert torch.equal(dm.train_set.targets, torch.from_numpy(labels))
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 32, 32)
    torch.testing.assert_close(x, normalised(written[test_files[0]][0], dm))


def test_stl10_reads_column_major_images(tmp_path):
    written = write_stl10(tmp_path / "stl10_binary")
    dm = STL10(data_dir=str(tmp_path), val_fraction=0.0)
    dm.setup()
    for dataset, split in [(dm.train_set, "train"), (dm.test_set, "test")]:
        images, labels = written[split]
        assert torch.equal(dataset.images, torch.from_numpy(images))
        assert torch.equal(dataset.targets, torch.from_numpy(labels))


def test_stl10_unlabeled_trains_on_unlabeled_set(tmp_path):
    written = write_stl10(tmp_path / "stl10_binary")
    (tmp_path / "stl10_binary" / "train_X.bin").unlink()  # not needed
    dm = STL10(data_dir=str(tmp_path), unlabeled=True, val_fraction=0.2)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 1, 4)
    assert torch.equal(dm.train_set.images, torch.from_numpy(written["unlabeled"][0]))
    assert (dm.train_set.targets == -1).all()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 96, 96) and (y == -1).all()


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    write_mnist(tmp_path, ".gz")

    def split(seed: int) -> tuple[set[int], set[int]]:
        dm = MNIST(data_dir=str(tmp_path), seed=seed, val_fraction=0.25)
        dm.setup("fit")
        return set(dm.train_set.indices.tolist()), set(dm.val_set.indices.tolist())

    train, val = split(seed=3)
    assert len(val) == 10 and not train & val and train | val == set(range(N_TRAIN))
    assert split(seed=3) == (train, val)
    assert split(seed=4) != (train, val)


@pytest.mark.parametrize("cls", [MNIST, CIFAR10, CIFAR100, STL10])
def test_missing_files_raise_one_clear_error(cls, tmp_path):
    dm = cls(data_dir=str(tmp_path))
    for load in (dm.prepare_data, dm.setup):
        with pytest.raises(DatasetNotFoundError) as info:
            load()
        message = str(info.value)
        assert isinstance(info.value, FileNotFoundError)
        assert cls.name in message and str(tmp_path) in message
        assert "--data.download true" in message and cls.url in message


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        FashionMNIST(data_dir=str(tmp_path)).prepare_data()
    assert "train-images-idx3-ubyte[.gz]" in str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(info.value)


def test_failed_download_raises_dataset_not_found(tmp_path, monkeypatch):
    def offline(root, download):
        raise URLError("no network")

    monkeypatch.setattr(MNIST, "torchvision_dataset", staticmethod(offline))
    with pytest.raises(DatasetNotFoundError, match="no network") as info:
        MNIST(data_dir=str(tmp_path), download=True).prepare_data()
    assert isinstance(info.value.__cause__, URLError)


def test_get_datamodule():
    dm = get_datamodule("Fashion-MNIST", batch_size=7)
    assert isinstance(dm, FashionMNIST) and dm.batch_size == dm.eval_batch_size == 7
    with pytest.raises(ValueError, match="choose one of digits, mnist, fashion_mnist, cifar10"):
        get_datamodule("imagenet")


def test_digits_end_to_end():
    dm = Digits(batch_size=32, eval_batch_size=100)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1294, 144, 359)
    loaders = [
        (dm.train_dataloader(), 32),
        (dm.val_dataloader(), 100),
        (dm.test_dataloader(), 100),
        (dm.predict_dataloader(), 100),
    ]
    for loader, batch_size in loaders:
        x, y = next(iter(loader))
        assert x.shape == (batch_size, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (batch_size,) and y.dtype == torch.int64 and 0 <= y.min() <= y.max() < 10

    x, _ = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_digits_test_split_ignores_seed():
    test_sets = []
    for seed in (0, 1):
        dm = Digits(seed=seed)
        dm.setup()
        test_sets.append(dm.test_set)
    assert torch.equal(test_sets[0].images, test_sets[1].images)


def test_dataloader_fetches_batches_through_getitems(monkeypatch):
    dm = Digits(batch_size=16)
    dm.setup("fit")

    def no_per_sample_access(self, index):
        raise AssertionError("__getitem__ called: batches should come from __getitems__")

    monkeypatch.setattr(InMemoryImageDataset, "__getitem__", no_per_sample_access)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)


def test_single_sample_access_matches_batch():
    dm = Digits()
    dm.setup("test")
    x, y = dm.test_set[5]
    xs, ys = dm.test_set.__getitems__([4, 5])
    assert x.shape == (1, 8, 8) and y.shape == ()
    assert torch.equal(x, xs[1]) and y == ys[1]


def test_worker_processes():
    dm = Digits(batch_size=50, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    assert sum(len(y) for _, y in loader) == 1294
