"""Image data: CIFAR-10 from a fake folder in the real pickle layout, synthetic determinism,
and the training augmentation."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gradsweep.data import augment, load
from gradsweep.data.cifar10 import ENV_VAR, MEAN, STD, TEST_FILE, TRAIN_FILES, load_cifar10
from gradsweep.seeding import generator


def write_fake_cifar(root: Path, per_file: int = 20) -> Path:
    """``root/cifar-10-batches-py`` with six pickled batches; pixel values encode file and index."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        data[:, 0] = f  # red channel, top-left pixel: the file number
        labels = [int(v) for v in rng.integers(0, 10, size=per_file)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_file}, fh)
    return folder


def test_loader_reads_the_pickle_layout_and_normalises(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path)
    data = load_cifar10(folder)
    assert data.train_x.shape == (100, 3, 32, 32) and data.train_y.shape == (100,)
    assert data.val_x.shape == (20, 3, 32, 32) and data.val_y.dtype == torch.int64
    # top-left red pixel of the test batch holds 5 (the sixth file)
    torch.testing.assert_close(data.val_x[:, 0, 0, 0], torch.full((20,), (5 / 255 - MEAN[0]) / STD[0]))
    with open(folder / TEST_FILE, "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert data.val_y.tolist() == raw[b"labels"]
    pixel = raw[b"data"][3, 1024 + 32 * 7 + 9]  # green channel, row 7, column 9 of image 3
    torch.testing.assert_close(data.val_x[3, 1, 7, 9], torch.tensor((pixel / 255 - MEAN[1]) / STD[1], dtype=torch.float32))


def test_loader_finds_the_folder_from_its_parent_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cifar(tmp_path)
    assert len(load_cifar10(tmp_path).val_y) == 20
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert len(load({"source": "cifar10", "path": None}, seed=0).train_y) == 100


def test_missing_copy_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=r"problem.data.path or \$GRADSWEEP_CIFAR10"):
        load({"source": "cifar10", "path": None}, seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    folder = write_fake_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / TEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3, test_batch"):
        load_cifar10(folder)


def test_cifar_probe_batches_come_from_the_test_batch(tmp_path: Path) -> None:
    from builders import build_xnor as build

    folder = write_fake_cifar(tmp_path)
    cfg = {"kind": "xnor_resnet18", "channels": 2, "weights": "fp",
           "data": {"source": "cifar10", "path": str(folder), "batch_size": 8, "batches": 2}}
    problem = build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=tmp_path)
    batches = list(problem.batches())
    assert [tuple(x.shape) for x, _ in batches] == [(8, 3, 32, 32)] * 2
    top_left = (5 / 255 - MEAN[0]) / STD[0]
    assert all(torch.allclose(x[:, 0, 0, 0], torch.tensor(top_left)) for x, _ in batches)
    cfg["data"]["batches"] = 3
    with pytest.raises(ValueError, match="exceeds the 20 validation images"):
        build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=tmp_path)


def test_synthetic_data_is_a_function_of_the_seed() -> None:
    cfg = {"source": "synthetic", "image_size": 8, "train_size": 300, "batch_size": 10, "batches": 2}
    a, b, c = load(cfg, seed=3), load(cfg, seed=3), load(cfg, seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (300, 3, 8, 8) and len(a.val_y) == 1000
    assert len(torch.unique(a.train_y)) >= 5  # the centred teacher uses many classes
    assert abs(float(a.train_x.mean())) < 0.05 and abs(float(a.train_x.std()) - 1) < 0.05


def test_augmentation_crops_and_flips_deterministically() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    one = augment(x, generator("aug"), pad=2)
    assert torch.equal(one, augment(x, generator("aug"), pad=2))
    assert one.shape == x.shape
    for img, src in zip(one, x):
        # every output is a shifted window of the zero-padded image, maybe mirrored
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        windows = [padded[:, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(-1)) for w in windows)


def test_a_probe_without_pretraining_draws_no_synthetic_training_set() -> None:
    cfg = {"source": "synthetic", "image_size": 8, "train_size": 300, "batch_size": 128, "batches": 10}
    data = load(cfg, seed=3, train=False)
    assert len(data.train_x) == 0 and len(data.train_y) == 0
    assert torch.equal(data.val_x, load(cfg, seed=3).val_x)


# -- reading never runs code; both standard layouts -------------------------------------------------


def _batches(per_file: int = 20) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The arrays of the six batches: pixel values encode file and index (as write_fake_cifar)."""
    rng = np.random.default_rng(1)
    out = {}
    for f, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        data[:, 0] = f
        out[name] = (data, [int(v) for v in rng.integers(0, 10, size=per_file)])
    return out


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2's cPickle wrote its ``str`` (BINSTRING), as in the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _pickled(entry: dict, how: str) -> bytes:
    if how == "python2":
        buffer = io.BytesIO()
        _Python2Pickler(buffer, protocol=2).dump(entry)
        # numpy 1.x (and the original files) name the array rebuilder numpy.core.multiarray
        return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return pickle.dumps(entry, protocol=int(how))


@pytest.mark.parametrize("how", ["2", "4", "5", "python2"])
def test_pickles_of_every_protocol_read_the_same_as_the_binary_layout(tmp_path: Path, how: str) -> None:
    py, binary = tmp_path / "cifar-10-batches-py", tmp_path / "bin" / "cifar-10-batches-bin"
    py.mkdir()
    binary.mkdir(parents=True)
    for name, (data, labels) in _batches().items():
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
        (py / name).write_bytes(_pickled(entry, how))
        # the binary layout: per image a label byte, then its 3072 pixels
        (binary / f"{name}.bin").write_bytes(np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1).tobytes())
    from_pickles, from_bytes = load_cifar10(tmp_path), load_cifar10(tmp_path / "bin")
    for field in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(from_pickles, field), getattr(from_bytes, field)), field
    data, labels = _batches()[TEST_FILE]
    assert from_bytes.val_y.tolist() == labels
    torch.testing.assert_close(from_bytes.val_x[:, 0, 0, 0], torch.full((20,), (5 / 255 - MEAN[0]) / STD[0]))
    assert len(from_bytes.train_y) == 100


class _WritesMarker:
    """A pickle that, when loaded by a plain unpickler, runs a shell command creating ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _poisoned_entries(marker: Path) -> dict[str, object]:
    data, labels = _batches()[TEST_FILE]
    evil = _WritesMarker(marker)
    return {
        "the whole file": evil,
        "the data": {b"data": evil, b"labels": labels},
        "a label": {b"data": data, b"labels": [*labels[:-1], evil]},
        "an object array": {b"data": np.array([evil], dtype=object), b"labels": labels},
        "an unused key": {b"data": data, b"labels": labels, b"batch_label": evil},
    }


@pytest.mark.parametrize("where", list(_poisoned_entries(Path("m"))))
def test_a_poisoned_batch_is_refused_naming_the_file_and_nothing_runs(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "marker"
    folder = write_fake_cifar(tmp_path)
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump(_poisoned_entries(marker)[where], fh)
    # the bait is real: a plain unpickler runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_WritesMarker(probe)))
    assert probe.exists()
    with pytest.raises(ValueError, match=r"data_batch_2'.*refused, nothing in it was run"):
        load({"source": "cifar10", "path": str(tmp_path)}, seed=0)
    assert not marker.exists()


def test_a_corrupt_or_misshapen_batch_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path)
    (folder / TEST_FILE).write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(ValueError, match=r"test_batch' is not a readable pickle"):
        load_cifar10(folder)
    (folder / TEST_FILE).write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(ValueError, match=r"test_batch': expected data \(N, 3072\)"):
        load_cifar10(folder)
    (folder / TEST_FILE).write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}))
    with pytest.raises(ValueError, match=r"test_batch' is not a CIFAR-10 batch: it asks for an array of dtype 'f4'"):
        load_cifar10(folder)
    binary = tmp_path / "b" / "cifar-10-batches-bin"
    binary.mkdir(parents=True)
    for name in (*TRAIN_FILES, TEST_FILE):
        (binary / f"{name}.bin").write_bytes(bytes(3073 * 2))
    (binary / "test_batch.bin").write_bytes(bytes(3073 * 2 - 5))
    with pytest.raises(ValueError, match=r"test_batch.bin' holds 6141 bytes, not a whole number of 3073-byte records"):
        load_cifar10(tmp_path / "b")
    (binary / "test_batch.bin").write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(ValueError, match=r"test_batch.bin': labels must be 0..9, got 12..12"):
        load_cifar10(binary)
    (binary / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks data_batch_4.bin"):
        load_cifar10(binary)
