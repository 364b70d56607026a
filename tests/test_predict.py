"""Predict writes: the most probable classes beside the probabilities, and ImageFiles, a
folder of one's own images preprocessed as the built-in DataModules preprocess theirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from lit_bioplaus.cli import main
from lit_bioplaus.data import DatasetNotFoundError, Digits, ImageFiles
from lit_bioplaus.data.multi_mnist import upscale_digits

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FAST = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3759


def digits_test_images(n: int) -> Tensor:
    """The first ``n`` images of the Digits test split, ``(n, 1, 8, 8)`` uint8."""
    return Digits().load_split(train=False)[0][:n]


def save_image(image: Tensor, path: Path) -> None:
    """Write a ``(C, H, W)`` uint8 image (C = 1 or 3) as an image file, by PIL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(path)


def predict(tmp_path: Path, folder: Path, *flags: str, config: str | None = QUICKSTART) -> tuple[dict, dict, object]:
    """Run ``lit-bioplaus predict`` on ``folder`` with ``config`` (None: none) and ``flags``;
    the written tensors, the file's metadata and the CLI."""
    cli = main(["predict", *(["--config", config] if config else []), "--data", "lit_bioplaus.data.ImageFiles",
                "--data.root", str(folder), *FAST, "--trainer.default_root_dir", str(tmp_path), *flags])  # fmt: skip
    path = tmp_path / "predictions.safetensors"
    with safe_open(path, "pt") as written:
        metadata = written.metadata()
    return load_file(path), metadata, cli


def test_predict_on_a_folder_writes_classes_in_sorted_file_order(tmp_path):
    """12 digits saved as 8x8 PNGs in a scrambled order: the rows follow the sorted file
    names, and equal the model's probabilities on the Digits DataModule's own test batch."""
    images = digits_test_images(12)
    folder = tmp_path / "images"
    for i in torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist():
        save_image(images[i], folder / f"{i:02d}.png")

    written, metadata, cli = predict(tmp_path, folder, "--data.like", "digits", "--data.batch_size", "5")

    predictions = written["predictions"]
    assert predictions.shape == (12, 10) and written["indices"].tolist() == list(range(12))
    assert written["classes"].dtype == torch.int64 and torch.equal(written["classes"], predictions.argmax(-1))
    assert json.loads(metadata["files"]) == [f"{i:02d}.png" for i in range(12)]
    digits = Digits()
    digits.setup("test")
    x, _ = digits.test_set.__getitems__(list(range(12)))
    with torch.no_grad():
        expected = cli.model.eval()(x).softmax(-1)
    torch.testing.assert_close(predictions, expected)


def test_guided_predict_writes_the_classes_under_every_task(tmp_path):
    folder = tmp_path / "images"
    for i, image in enumerate(upscale_digits(digits_test_images(3))):
        save_image(image, folder / f"{i}.png")

    written, _, _ = predict(tmp_path, folder, "--data.like", "mnist", "--data.num_tasks", "2",
                            config=str(ROOT / "configs" / "quickstart_guided.yaml"))  # fmt: skip

    assert written["predictions"].shape == (3, 2, 10) and written["classes"].shape == (3, 2)
    assert torch.equal(written["classes"], written["predictions"].argmax(-1))


def test_autoencoder_predict_writes_images_and_no_classes(tmp_path):
    folder = tmp_path / "images"
    for i, image in enumerate(digits_test_images(3)):
        save_image(image, folder / f"{i}.png")

    written, _, _ = predict(tmp_path, folder, "--model", "lit_bioplaus.CounterCurrent", "--model.init_args.task",
                            "autoencoder", "--model.init_args.network", "lit_bioplaus.nn.ConvAutoencoder",
                            "--model.init_args.network.init_args.channels", "[4, 8]", "--data.like", "digits",
                            config=None)  # fmt: skip

    assert set(written) == {"predictions", "indices"} and written["predictions"].shape == (3, 1, 8, 8)


def test_folder_batches_equal_the_librarys_preprocessing(tmp_path):
    """PNGs of the Digits test images give Digits' own normalised batch bit for bit, i.e.
    ``(x / 255 - mean) / std``; ``pad`` zero-pads before normalising, as ``fit`` did."""
    images = digits_test_images(7)
    for i, image in enumerate(images):
        save_image(image, tmp_path / f"{i}.png")
    digits = Digits()
    digits.setup("test")
    expected = digits.test_set.__getitems__(list(range(7)))[0]

    files = ImageFiles(str(tmp_path), like="digits")
    files.prepare_data()
    files.setup("predict")
    x, labels = next(iter(files.predict_dataloader()))

    assert torch.equal(x, expected) and torch.equal(labels, torch.full((7,), -1))
    torch.testing.assert_close(x, (images.float() / 255 - DIGITS_MEAN) / DIGITS_STD)
    padded = ImageFiles(str(tmp_path), like="digits", pad=1)
    padded.setup("predict")
    x = padded.predict_set.__getitems__(list(range(7)))[0]
    assert padded.input_shape == (1, 10, 10) and x.shape == (7, 1, 10, 10)
    torch.testing.assert_close(x[:, :, 1:-1, 1:-1], expected)
    torch.testing.assert_close(x[:, :, 0], torch.full((7, 1, 10), -DIGITS_MEAN / DIGITS_STD))


def test_images_are_converted_to_the_channels_and_resized(tmp_path):
    """A 12x16 RGB image of one colour becomes an 8x8 grey one of its luma
    ``(299 R + 587 G + 114 B) / 1000`` (resizing keeps a constant image constant); a grey
    image read as RGB repeats its value in every channel."""
    Image.new("RGB", (16, 12), (200, 100, 50)).save(tmp_path / "colour.png")
    Image.new("L", (8, 8), 90).save(tmp_path / "grey.jpg", quality=100)

    grey = ImageFiles(str(tmp_path), like="digits")
    grey.setup("predict")
    colour = ImageFiles(str(tmp_path), input_shape=(3, 4, 4), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), num_classes=3)
    colour.setup("predict")

    assert grey.files == colour.files == ["colour.png", "grey.jpg"]
    luma = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    x = grey.predict_set.images
    assert x.shape == (2, 1, 8, 8) and torch.equal(x[0], torch.full((1, 8, 8), luma, dtype=torch.uint8))
    x = colour.predict_set.__getitems__([0, 1])[0]
    pixels = torch.tensor([[200, 100, 50], [90, 90, 90]]) / 255
    expected = (pixels - torch.tensor([0.5, 0.4, 0.3])) / 0.2
    torch.testing.assert_close(x, expected[:, :, None, None].expand(2, 3, 4, 4))
    assert colour.input_shape == (3, 4, 4) and colour.classes == ("0", "1", "2")


def test_images_are_found_at_any_depth_in_sorted_path_order(tmp_path):
    for name in ["b/1.png", "a/2.PNG", "10.png", "9.jpg", ".hidden/3.png", "._4.png"]:
        save_image(torch.zeros(1, 8, 8, dtype=torch.uint8), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")

    files = ImageFiles(str(tmp_path), like="digits")
    files.setup("predict")

    assert files.files == ["10.png", "9.jpg", "a/2.PNG", "b/1.png"] and len(files.predict_set) == 4


def test_like_takes_the_shapes_and_statistics_and_arguments_override_them(tmp_path):
    files = ImageFiles(str(tmp_path), like="Fashion-MNIST", pad=2)
    assert (files.image_shape, files.input_shape) == ((1, 28, 28), (1, 32, 32))
    assert (files.mean, files.std) == ((0.2860,), (0.3530,))
    assert files.num_classes == 10 and files.classes[0] == "T-shirt/top" and files.num_tasks == 1
    files = ImageFiles(str(tmp_path), like="mnist", input_shape=(1, 16, 16), num_tasks=2)
    assert files.input_shape == (1, 16, 16) and files.mean == (0.1307,) and files.num_tasks == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "needs `like`, or all of"),
        ({"like": "imagenet"}, "unknown data set 'imagenet' for `like`; choose one of digits, mnist"),
        ({"like": "cifar10", "input_shape": (2, 8, 8)}, "C = 1 or 3"),
        ({"like": "cifar10", "input_shape": (1, 8, 8)}, "one value per channel"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        ImageFiles(str(tmp_path), **arguments)


def test_a_missing_or_empty_folder_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"image folder .*missing does not exist") as info:
        predict(tmp_path, tmp_path / "missing", "--data.like", "digits")
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match=r"no images in .*empty: looked at any depth for .bmp, .jpeg"):
        ImageFiles(str(tmp_path / "empty"), like="digits").prepare_data()


def test_fit_validate_and_test_are_refused(tmp_path):
    folder = tmp_path / "images"
    save_image(torch.zeros(1, 8, 8, dtype=torch.uint8), folder / "0.png")
    with pytest.raises(ValueError, match=r"ImageFiles serves `predict` only .* not fit"):
        main(["fit", "--config", QUICKSTART, *FAST, "--data", "lit_bioplaus.data.ImageFiles", "--data.like",
              "digits", "--data.root", str(folder), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    files = ImageFiles(str(folder), like="digits")
    for refused in (files.train_dataloader, files.val_dataloader, files.test_dataloader, lambda: files.setup("test")):
        with pytest.raises(ValueError, match="serves `predict` only"):
            refused()


def test_read_pixels_are_the_files_pixels(tmp_path):
    """An 8x8 image already at the model's size is read unresized, pixel for pixel."""
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    files = ImageFiles(str(tmp_path), like="cifar10", input_shape=(3, 8, 8))
    files.setup("predict")
    assert torch.equal(files.predict_set.images[0], torch.from_numpy(pixels).permute(2, 0, 1))
