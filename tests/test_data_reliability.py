"""Data reliability: untrusted and corrupt files, stalled downloads, option validation.

Every corrupt file is written in the real on-disk format and then damaged the way a
cut-off download, a wrong file or a tampered copy would be; each must give one line
naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets

from lit_bioplaus.data import CIFAR10, CIFAR100, MNIST, STL10, DatasetNotFoundError, Digits, FashionMNIST
from lit_bioplaus.data.datasets import DatasetCorruptError, read_cifar, read_idx
from tests.fake_data import N_TRAIN, write_cifar, write_idx, write_mnist, write_stl10

REDOWNLOAD = "download the data set again (`--data.download true`"


def corrupt_error(load, path: Path) -> str:
    """The message of the ``DatasetCorruptError`` that ``load()`` raises, checked to be
    one line naming ``path`` and saying how to get a good copy."""
    with pytest.raises(DatasetCorruptError) as info:
        load()
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert REDOWNLOAD in message
    return message


# --- untrusted CIFAR pickles ---------------------------------------------------------


class RunsCode:
    """Unpickled, calls ``function(*args)``: what a tampered pickle can make any plain
    unpickler do."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, RunsCode]:
    """Objects whose unpickling writes ``marker``, through a shell and through ``exec``."""
    return {
        "os.system": RunsCode(os.system, f"touch {marker}"),
        "exec": RunsCode(exec, f"open({str(marker)!r}, 'w').write('ran')"),
    }


@pytest.mark.parametrize("payload", ["os.system", "exec"])
def test_tampered_cifar_batch_runs_no_code(payload, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, {**{f"data_batch_{i}": 4 for i in range(1, 6)}, "test_batch": 4}, b"labels", 10)
    tampered = folder / "data_batch_3"
    batch = pickle.loads(tampered.read_bytes())
    marker = tmp_path / "code-ran"
    batch[b"labels"] = payloads(marker)[payload]
    tampered.write_bytes(pickle.dumps(batch))

    # the file is a real exploit: a plain unpickler runs it
    pickle.loads(tampered.read_bytes())
    assert marker.exists()
    marker.unlink()

    message = corrupt_error(CIFAR10(data_dir=str(tmp_path)).setup, tampered)
    assert not marker.exists()
    assert "not a CIFAR batch file" in message and "refused to load it" in message
    assert ("system" if payload == "os.system" else "builtins.exec") in message


def test_cifar_reader_admits_numpy_1_pickles(tmp_path):
    """The official batches name numpy's array reconstruction ``numpy.core.multiarray``
    (numpy 1); numpy 2 writes ``numpy._core.multiarray``: both load."""
    images = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 9], b"data": images}
    written = pickle.dumps(batch, protocol=3)
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in written
    old = tmp_path / "numpy1_batch"
    old.write_bytes(written.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    new = tmp_path / "numpy2_batch"
    new.write_bytes(written)

    data, labels = read_cifar([old, new], b"labels", 10)
    assert data.shape == (4, 3, 32, 32)
    assert np.array_equal(data[:2].reshape(2, -1), images) and labels.tolist() == [3, 9, 3, 9]


def cifar_batch(path: Path, **entries) -> Path:
    """A pickled CIFAR-10 batch of two images, ``entries`` replacing or (None) removing keys."""
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"batch_label": b"x"}
    for key, value in entries.items():
        if value is None:
            del batch[key.encode()]
        else:
            batch[key.encode()] = value
    path.write_bytes(pickle.dumps(batch))
    return path


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ({"labels": None}, "CIFAR batch without b'labels' (it has b'data', b'batch_label')"),
        ({"data": None}, "CIFAR batch without b'data'"),
        ({"labels": [0, 10]}, "holds label 10 (entry 1); labels must be 0..9"),
        ({"labels": [-1, 0]}, "holds label -1 (entry 0); labels must be 0..9"),
        ({"labels": [0, 1, 2]}, "holds 2 images but b'labels' of shape (3,)"),
        ({"labels": ["cat", "dog"]}, "b'labels' is not a list of integers"),
        ({"data": np.zeros((2, 3000), np.uint8)}, "uint8 array of shape (N, 3072), got uint8 array of shape (2, 3000)"),
        ({"data": np.zeros((2, 3072), np.float32)}, "got float32 array"),
        ({"data": b"\0" * 6144}, "got bytes"),
    ],
)
def test_cifar_batch_with_wrong_content(entries, problem, tmp_path):
    path = cifar_batch(tmp_path / "data_batch_1", **entries)
    assert problem in corrupt_error(lambda: read_cifar([path], b"labels", 10), path)


def test_cifar_batch_that_is_not_a_pickle(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:-40])
    assert "not a CIFAR batch file" in corrupt_error(lambda: read_cifar([path], b"labels", 10), path)
    path.write_bytes(pickle.dumps([1, 2]))
    assert "holds a list, not a dict" in corrupt_error(lambda: read_cifar([path], b"labels", 10), path)


def test_cifar10_file_in_the_cifar100_folder_names_the_missing_key(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar(folder, {"train": 4, "test": 4}, b"fine_labels", 100)
    cifar_batch(folder / "train")  # a CIFAR-10 batch: b"labels", no b"fine_labels"
    message = corrupt_error(CIFAR100(data_dir=str(tmp_path)).setup, folder / "train")
    assert "CIFAR batch without b'fine_labels'" in message


def test_cifar100_labels_may_reach_99_not_100(tmp_path):
    good = cifar_batch(tmp_path / "good", labels=None, fine_labels=[0, 99])
    assert read_cifar([good], b"fine_labels", 100)[1].tolist() == [0, 99]
    bad = cifar_batch(tmp_path / "bad", labels=None, fine_labels=[100, 0])
    assert "labels must be 0..99" in corrupt_error(lambda: read_cifar([bad], b"fine_labels", 100), bad)


# --- corrupt IDX files ---------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not an IDX file (0 bytes, too short for a header)"),
        (b"<!DOCTYPE html><html>Not Found</html>", "not an IDX file (magic number 0x3c21444f)"),
        (b"\0\0\x08\x03\0\0\0\x02", "corrupt IDX file (unpack requires a buffer of 12 bytes)"),
        (idx_bytes(np.zeros((3, 4), np.uint8))[:-1], "corrupt IDX file (header says shape (3, 4), data is shorter)"),
        (idx_bytes(np.zeros((3, 4), np.uint8)) + b"\0", "header says shape (3, 4), data is longer"),
        (b"\0\0\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff", "header says shape (4294967295, 4294967295), too large"),
    ],
)
def test_malformed_idx_file(content, problem, tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    assert problem in corrupt_error(lambda: read_idx(path), path)


def test_truncated_or_damaged_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(compressed[: len(compressed) // 2])
    assert "corrupt IDX file (Compressed file ended before" in corrupt_error(lambda: read_idx(truncated), truncated)
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(compressed[:-8] + b"\xff" * 8)  # wrong CRC and length trailer
    assert "corrupt IDX file (CRC check failed" in corrupt_error(lambda: read_idx(damaged), damaged)


def test_idx_file_of_the_wrong_shape_or_type(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 27), np.uint8)))
    message = corrupt_error(lambda: read_idx(path, item_shape=(28, 28)), path)
    assert "holds an array of shape (2, 28, 27), expected (N, 28, 28)" in message
    assert "expected (N)" in corrupt_error(lambda: read_idx(path, item_shape=()), path)
    path.write_bytes(idx_bytes(np.zeros(3, ">i4"), type_code=0x0C))
    assert "holds int32 values, expected uint8" in corrupt_error(lambda: read_idx(path, dtype=np.uint8), path)


def mnist_folder(tmp_path: Path) -> Path:
    """Fake uncompressed MNIST files in a flat folder."""
    write_mnist(tmp_path, "")
    return tmp_path


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
def test_mnist_with_swapped_files(cls, tmp_path):
    folder = mnist_folder(tmp_path)
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    images_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(images_bytes)
    message = corrupt_error(cls(data_dir=str(folder)).setup, images)
    assert f"holds an array of shape ({N_TRAIN},), expected (N, 28, 28)" in message


def test_mnist_label_count_differs_from_image_count(tmp_path):
    folder = mnist_folder(tmp_path)
    labels = folder / "train-labels-idx1-ubyte"
    write_idx(labels, read_idx(labels)[:-1])
    message = corrupt_error(MNIST(data_dir=str(folder)).setup, labels)
    assert f"holds {N_TRAIN - 1} labels but {folder / 'train-images-idx3-ubyte'} holds {N_TRAIN} images" in message


def test_mnist_label_out_of_range(tmp_path):
    folder = mnist_folder(tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte"
    values = read_idx(labels)
    values[5] = 10
    write_idx(labels, values)
    message = corrupt_error(MNIST(data_dir=str(folder)).setup, labels)
    assert "holds label 10 (entry 5); labels must be 0..9" in message


def test_mnist_truncated_download(tmp_path):
    """What an interrupted download leaves: a gzip cut short."""
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, ".gz")
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    message = corrupt_error(MNIST(data_dir=str(tmp_path)).setup, images)
    assert "corrupt IDX file" in message


# --- corrupt STL-10 files -----------------------------------------------------------


def test_stl10_labels_out_of_range_or_miscounted(tmp_path):
    folder = tmp_path / "stl10_binary"
    write_stl10(folder)
    labels = folder / "train_y.bin"
    good = labels.read_bytes()
    for stored, shown in [(0, 0), (11, 11)]:
        labels.write_bytes(bytes([stored]) + good[1:])
        message = corrupt_error(STL10(data_dir=str(tmp_path)).setup, labels)
        assert f"holds label {shown} (entry 0); labels must be 1..10" in message
    labels.write_bytes(good[:-1])
    message = corrupt_error(STL10(data_dir=str(tmp_path)).setup, labels)
    assert f"holds 5 labels but {folder / 'train_X.bin'} holds 6 images" in message


def test_stl10_truncated_images(tmp_path):
    folder = tmp_path / "stl10_binary"
    write_stl10(folder)
    images = folder / "test_X.bin"
    images.write_bytes(images.read_bytes()[:-1])
    message = corrupt_error(STL10(data_dir=str(tmp_path)).setup, images)
    assert "110591 bytes is not a whole number of 27648-byte images" in message


def test_corrupt_error_survives_pickling(tmp_path):
    """Errors cross process boundaries (DataLoader workers, DDP) by pickle."""
    err = DatasetCorruptError(tmp_path / "f", "damaged")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.path == err.path


# --- downloads that stall ------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:PORT/`` of a server that accepts connections, reads nothing
    and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def no_proxy(monkeypatch) -> None:
    """Requests go straight to 127.0.0.1, whatever proxy the environment names."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def stalled_download(dm) -> tuple[str, float]:
    """The message of the error ``dm.prepare_data()`` ends with, and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    elapsed = time.monotonic() - start
    assert socket.getdefaulttimeout() is None  # restored
    assert timed_out_chain(info.value)
    return str(info.value), elapsed


def timed_out_chain(err: BaseException) -> bool:
    cause = err.__cause__
    return isinstance(cause, TimeoutError) or isinstance(getattr(cause, "reason", None), TimeoutError)


def test_stalled_mnist_download_times_out_naming_the_url(silent_server, no_proxy, tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [silent_server])
    dm = MNIST(data_dir=str(tmp_path), download=True, download_timeout=0.5)
    message, elapsed = stalled_download(dm)
    assert elapsed < 5
    assert f"Downloading from {silent_server} into {tmp_path} timed out: no answer within 0.5 s" in message
    assert "`--data.download_timeout`" in message and "MNIST not found" in message


def test_stalled_cifar_download_times_out_naming_the_url(silent_server, no_proxy, tmp_path, monkeypatch):
    url = f"{silent_server}cifar-10-python.tar.gz"
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", url)
    dm = CIFAR10(data_dir=str(tmp_path), download=True, download_timeout=0.3)
    message, elapsed = stalled_download(dm)
    assert elapsed < 5
    assert f"Downloading from {url} into {tmp_path} timed out: no answer within 0.3 s" in message


def test_refused_download_names_the_mirror_on_one_line(no_proxy, tmp_path, monkeypatch):
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    closed.close()  # nothing listens there any more: connection refused
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [url])
    with pytest.raises(DatasetNotFoundError) as info:
        MNIST(data_dir=str(tmp_path), download=True, download_timeout=2).prepare_data()
    reason = next(line for line in str(info.value).splitlines() if line.startswith("Downloading"))
    assert reason.startswith(f"Downloading from {url} into {tmp_path} failed: Error downloading")
    assert f"Tried {url}" in reason and "refused" in reason.lower()


# --- option validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be positive, got 0"),
        ("eval_batch_size", -2, "eval_batch_size must be positive, got -2"),
        ("num_workers", -1, "num_workers must be non-negative, got -1"),
        ("pad", -1, "pad must be non-negative, got -1"),
        ("val_fraction", 1.0, r"val_fraction must be in \[0, 1\), got 1.0"),
        ("val_fraction", -0.1, r"val_fraction must be in \[0, 1\), got -0.1"),
        ("val_fraction", float("nan"), r"val_fraction must be in \[0, 1\), got nan"),
        ("download_timeout", 0, "download_timeout must be a positive number of seconds, got 0"),
        ("download_timeout", -5.0, "download_timeout must be a positive number of seconds, got -5.0"),
        ("download_timeout", float("inf"), "download_timeout must be a positive number of seconds, got inf"),
        ("download_timeout", float("nan"), "download_timeout must be a positive number of seconds, got nan"),
    ],
)
@pytest.mark.parametrize("cls", [MNIST, STL10])
def test_numeric_options_are_validated_at_construction(cls, option, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        cls(**{option: value})


def test_val_fraction_that_leaves_no_training_images():
    dm = Digits(val_fraction=0.9999)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value) == "scikit-learn digits: val_fraction 0.9999 leaves no training images out of 1438"


def test_val_fraction_just_below_the_limit_keeps_one_training_image(tmp_path):
    write_mnist(tmp_path, "")
    dm = MNIST(data_dir=str(tmp_path), val_fraction=(N_TRAIN - 1.4) / N_TRAIN)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (1, N_TRAIN - 1)
    with pytest.raises(ValueError, match=f"leaves no training images out of {N_TRAIN}$"):
        MNIST(data_dir=str(tmp_path), val_fraction=(N_TRAIN - 0.4) / N_TRAIN).setup("fit")
