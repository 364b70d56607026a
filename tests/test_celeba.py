"""CelebA: a tiny folder in the real format (JPEGs, attribute and partition files), the
splits, labels, decoded images, the uint8 cache, the per-epoch tasks and the errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lit_bioplaus.data.celeba as celeba
from lit_bioplaus.cli import main
from lit_bioplaus.data import CelebA, DatasetCorruptError, DatasetNotFoundError
from tests.fake_data import PARTITION, write_celeba

QUICKSTART_GUIDED = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart_guided.yaml")


def pil_images(root: Path, names: list[str], size: tuple[int, int] | None = None) -> torch.Tensor:
    """The JPEGs decoded by PIL (resized to ``size`` = (H, W) bilinearly), normalised as
    the official code: ``(x / 255 - 0.5) / 0.5``, ``(N, 3, H, W)``."""
    images = []
    for name in names:
        with Image.open(root / "celeba" / "img_align_celeba" / name) as image:
            image = image.convert("RGB")
            if size is not None:
                image = image.resize(size[::-1], Image.Resampling.BILINEAR)
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return (torch.stack(images).float() / 255 - 0.5) / 0.5


@pytest.fixture
def celeba_dir(tmp_path):
    names, values = write_celeba(tmp_path)
    return tmp_path, names, values


@pytest.fixture
def count_decodes(monkeypatch):
    """The JPEGs decoded so far (each call of the decoder appends its path)."""
    decoded: list[Path] = []
    read_image = celeba.read_image

    def counting(path, shape):
        decoded.append(path)
        return read_image(path, shape)

    monkeypatch.setattr(celeba, "read_image", counting)
    return decoded


def mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux ``/proc/self/maps``), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, _, _, _, _, *path = line.split(maxsplit=5)
        start, end = (int(bound, 16) for bound in span.split("-"))
        if start <= address < end:
            return path[0] if path else None
    return None


def split_names(names: list[str], code: int) -> list[str]:
    return [name for name, c in zip(names, PARTITION, strict=True) if c == code]


def test_class_attributes_known_without_touching_disk(tmp_path):
    assert (CelebA.num_tasks, CelebA.num_classes, CelebA.classes) == (40, 1, ("absent", "present"))
    assert len(CelebA.attributes) == 40 and CelebA.attributes[0] == "5_o_Clock_Shadow"
    assert CelebA.attributes[20] == "Male" and CelebA.attributes[-1] == "Young"
    assert CelebA(data_dir=str(tmp_path / "absent")).input_shape == (3, 218, 178)
    assert CelebA(image_size=(64, 48)).input_shape == (3, 64, 48)
    assert not (tmp_path / "absent").exists()
    for bad in ((0, 64), (64,), (64, -1)):
        with pytest.raises(ValueError, match="image_size"):
            CelebA(image_size=bad)
    with pytest.raises(ValueError, match="pad must be 0"):
        CelebA(pad=2)


def test_splits_labels_and_images_as_the_official_code(celeba_dir):
    root, names, values = celeba_dir
    data = CelebA(data_dir=str(root), batch_size=4)
    data.prepare_data()
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (6, 3, 3)
    for dataset, code in ((data.train_set, 0), (data.val_set, 1), (data.test_set, 2)):
        rows = [i for i, c in enumerate(PARTITION) if c == code]  # the partition file's, not a random split
        assert dataset.targets.shape == (len(rows), 40) and dataset.targets.dtype == torch.int64
        assert torch.equal(dataset.targets, torch.from_numpy((values[rows] + 1) // 2))

    x, labels, task = data.on_before_batch_transfer(next(iter(data.test_dataloader())), 0)
    assert x.shape == (3, 3, 218, 178) and x.dtype == torch.float32
    torch.testing.assert_close(x, pil_images(root, split_names(names, 2)), rtol=0, atol=0)
    assert torch.equal(labels, data.test_set.targets) and task.tolist() == [0, 0, 0]  # evaluation: task 0

    x, labels, rows = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 218, 178) and labels.shape == (4, 40) and rows.shape == (4,)
    torch.testing.assert_close(x, pil_images(root, [split_names(names, 0)[r] for r in rows.tolist()]))


def test_image_size_resizes_the_whole_image_bilinearly(celeba_dir):
    root, names, _ = celeba_dir
    data = CelebA(data_dir=str(root), image_size=(64, 64))
    data.setup("test")
    assert data.train_set is None and data.input_shape == (3, 64, 64)
    x, *_ = data.test_set.__getitems__([0, 1, 2])
    torch.testing.assert_close(x, pil_images(root, split_names(names, 2), (64, 64)), rtol=0, atol=0)
    assert (root / "celeba" / "cache" / "test_64x64.npy").is_file()


def test_cache_is_built_once_as_a_memory_map(celeba_dir, count_decodes):
    root, *_ = celeba_dir
    CelebA(data_dir=str(root)).prepare_data()
    assert len(count_decodes) == 12  # each image once, in prepare_data
    cache = root / "celeba" / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["test_218x178.npy", "train_218x178.npy", "val_218x178.npy"]
    array = np.load(cache / "train_218x178.npy", mmap_mode="r")
    assert array.shape == (6, 3, 218, 178) and array.dtype == np.uint8
    mtime = (cache / "train_218x178.npy").stat().st_mtime_ns

    again = CelebA(data_dir=str(root))
    again.prepare_data()
    again.setup()
    assert len(count_decodes) == 12 and (cache / "train_218x178.npy").stat().st_mtime_ns == mtime  # reused
    images = again.train_set.images
    assert images.shape == (6, 3, 218, 178) and images.dtype == torch.uint8
    if Path("/proc/self/maps").is_file():  # Linux: the tensor's memory is the file, mapped
        assert mapped_file(images.data_ptr()) == str((cache / "train_218x178.npy").resolve())

    copy = pickle.loads(pickle.dumps(again.train_set))  # spawned workers map the file again
    assert len(pickle.dumps(again.train_set)) < 50_000
    assert torch.equal(copy.__getitems__([5, 0])[0], again.train_set.__getitems__([5, 0])[0])

    CelebA(data_dir=str(root), image_size=(32, 32)).setup("validate")  # another size: its own cache
    assert len(count_decodes) == 15 and (cache / "val_32x32.npy").is_file()


def test_cache_dir_option(celeba_dir, tmp_path):
    root, *_ = celeba_dir
    data = CelebA(data_dir=str(root), cache_dir=str(tmp_path / "elsewhere"), image_size=(8, 8))
    data.setup("validate")
    assert data.cache_path("val") == tmp_path / "elsewhere" / "val_8x8.npy" and data.cache_path("val").is_file()
    assert not (root / "celeba" / "cache").exists()


@pytest.mark.parametrize(
    "write_bad",
    [
        lambda path: np.save(path, np.zeros((5, 3, 8, 8), dtype=np.uint8)),  # one image short
        lambda path: np.save(path, np.zeros((6, 3, 8, 8), dtype=np.float32)),  # another type
        lambda path: path.write_bytes(b"not a numpy file"),
        lambda path: path.write_bytes(path.read_bytes()[:500]),  # truncated
    ],
)
def test_a_bad_cache_is_rebuilt_with_a_warning(celeba_dir, count_decodes, write_bad):
    root, names, _ = celeba_dir
    data = CelebA(data_dir=str(root), image_size=(8, 8))
    path = data.cache_path("train")
    data.prepare_data()
    write_bad(path)
    decodes = len(count_decodes)
    fresh = CelebA(data_dir=str(root), image_size=(8, 8))
    with pytest.warns(UserWarning, match=r"the CelebA cache .*train_8x8\.npy .*: rebuilding it"):
        fresh.setup("fit")
    assert len(count_decodes) == decodes + 6  # the training split only
    torch.testing.assert_close(
        fresh.train_set.__getitems__(list(range(6)))[0], pil_images(root, split_names(names, 0), (8, 8))
    )


def test_tasks_are_drawn_per_sample_per_epoch_from_the_seed(celeba_dir):
    root, *_ = celeba_dir
    data = CelebA(data_dir=str(root), image_size=(8, 8), seed=5)
    data.setup("fit")
    rows = torch.arange(6)
    epochs = torch.stack([data.tasks(rows, epoch) for epoch in range(20)])
    assert epochs.dtype == torch.int64 and int(epochs.min()) >= 0 and int(epochs.max()) < 40
    assert len(set(epochs.flatten().tolist())) > 20  # uniform over the 40 tasks
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(data.tasks(rows.flip(0), 3), epochs[3].flip(0))  # by position, whatever the order
    other = CelebA(data_dir=str(root), image_size=(8, 8), seed=5)
    other.setup("fit")
    assert torch.equal(other.tasks(rows, 7), epochs[7])
    data.trainer = type("TrainerStub", (), {"training": True, "current_epoch": 7})()
    _, labels, tasks = data.on_before_batch_transfer(data.train_set.__getitems__([4, 2]), 0)
    assert tasks.tolist() == epochs[7, [4, 2]].tolist() and labels.shape == (2, 40)


def test_missing_files_give_the_usual_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        CelebA(data_dir=str(tmp_path)).prepare_data()
    message = str(error.value)
    assert message.startswith("CelebA not found: looked for list_attr_celeba.txt, list_eval_partition.txt, ")
    assert "img_align_celeba/" in message and str(tmp_path / "celeba") in message
    assert "--data.download true" in message and "gdown" in message
    write_celeba(tmp_path, n=2)
    for image in (tmp_path / "celeba" / "img_align_celeba").iterdir():
        image.unlink()
    with pytest.raises(DatasetCorruptError, match=r"000001\.jpg, listed in list_attr_celeba\.txt, is missing"):
        CelebA(data_dir=str(tmp_path)).prepare_data()
    assert not list((tmp_path / "celeba" / "cache").iterdir())  # no half-written cache left behind
    (tmp_path / "celeba" / "img_align_celeba" / "000001.jpg").write_bytes(b"not a JPEG")
    with pytest.raises(DatasetCorruptError, match=r"000001\.jpg: not a readable image"):
        CelebA(data_dir=str(tmp_path)).prepare_data()


def test_download_uses_torchvision_with_every_split(tmp_path, monkeypatch):
    assert CelebA.torchvision_dataset.func is celeba.torchvision.datasets.CelebA
    assert CelebA.torchvision_dataset.keywords == {"split": "all"}

    def unavailable(*args, **kwargs):
        raise RuntimeError("To download files from GDrive, 'gdown' is required.")

    monkeypatch.setattr("torchvision.datasets.celeba.download_file_from_google_drive", unavailable)
    with pytest.raises(
        DatasetNotFoundError, match=r"Downloading from .*CelebA.* failed: To download files from GDrive"
    ):
        CelebA(data_dir=str(tmp_path), download=True).prepare_data()

    calls = []
    fake = staticmethod(lambda root, download: calls.append(root) or write_celeba(root))
    monkeypatch.setattr(CelebA, "torchvision_dataset", fake)
    data = CelebA(data_dir=str(tmp_path), download=True, image_size=(8, 8))
    data.prepare_data()
    data.prepare_data()  # found: not downloaded again
    assert calls == [tmp_path.absolute()]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda text: text.replace("Young", "Old"), "does not name CelebA's 40 attributes"),
        (lambda text: "13" + text[2:], "says 13 images, but 12 are listed"),
        (lambda text: text.replace("000003.jpg -1", "000003.jpg  0").replace("000003.jpg  1", "000003.jpg  0"),
         "line of 000003.jpg is not 40 values"),
    ],
)  # fmt: skip
def test_corrupt_attribute_file_is_refused(celeba_dir, edit, problem):
    root, *_ = celeba_dir
    path = root / "celeba" / "list_attr_celeba.txt"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DatasetCorruptError, match=problem):
        CelebA(data_dir=str(root)).setup()


def test_partition_must_list_the_attribute_files_images(celeba_dir):
    root, *_ = celeba_dir
    path = root / "celeba" / "list_eval_partition.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]))
    with pytest.raises(DatasetCorruptError, match=r"1 of the 12 in list_attr_celeba.txt missing \(first: 000012.jpg\)"):
        CelebA(data_dir=str(root)).setup()


def test_cli_data_celeba_links_its_shapes_into_the_model(celeba_dir):
    root, *_ = celeba_dir
    cli = main(
        [
            *("--config", QUICKSTART_GUIDED, "--trainer.logger", "false", "--model.init_args.loss", "bce"),
            *("--data", "CelebA", "--data.data_dir", str(root), "--data.image_size", "[28, 28]"),
        ],
        run=False,
    )
    assert isinstance(cli.datamodule, CelebA) and cli.datamodule.image_size == (28, 28)
    assert (cli.model.num_tasks, cli.model.num_classes, cli.model.input_shape) == (40, 1, (3, 28, 28))
