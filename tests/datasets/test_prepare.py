"""``openood-ext data prepare`` / ``status``: local archives, published formats, downloads, errors.

Real data: ../shared/data (or $OPENOOD_EXT_SHARED), read in small subsets; tests that need it skip with
the reason when it is absent. Everything else runs on small archives built here.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openood_ext import cli as cli_module
from openood_ext.datasets import prepare as prep
from openood_ext.datasets.cli import load_benchmark, split_status
from openood_ext.datasets.sources import RemoteFile, SetSource, download, verify
from openood_ext.errors import DataError

from conftest import REPO
from data_helpers import cifar_like_tars, make_tar, need_shared, png_bytes

FMNIST_DEB = Path("/usr/share/datasets/fashion-mnist")


def read_list(path: Path) -> list[tuple[str, int]]:
    return [(p, int(l)) for p, l in (line.rsplit(" ", 1) for line in path.read_text().splitlines())]


# ------------------------------------------------------------------------------------------ shared data
def test_shared_cifar10_tar_subset_is_streamed_byte_for_byte(tmp_path):
    tar_path = need_shared("cifar10_test.tar")
    counts = prep.extract_image_archive(tar_path, tmp_path / "images_classic", limit=200)
    assert counts == {"cifar10": 200}
    with tarfile.open(tar_path) as tf:
        members = [m for m in tf.getmembers() if m.isfile()][:200]
        for m in (members[0], members[137], members[-1]):
            assert (tmp_path / "images_classic" / m.name).read_bytes() == tf.extractfile(m).read()


def test_shared_texture_and_mnist_subsets_land_in_openood_layout(tmp_path):
    tex, mnist = need_shared("texture.tar"), need_shared("mnist_test.tar")
    root = tmp_path / "data"
    assert prep.ingest(tex, root, limit=150) == {"texture": 150}
    assert prep.ingest(mnist, root, limit=50) == {"mnist": 50}
    # texture/test/<class>/<file> -> texture/<class>/<file>, which is how OpenOOD's lists name DTD images
    texture = prep.lists.all_images(root / "images_classic", "texture")
    assert len(texture) == 150 and all(p.startswith("texture/") and p.count("/") == 2 and l == -1
                                       for p, l in texture)
    assert (root / "images_classic" / "mnist" / "test" / "7" / "00000.png").is_file()
    marker = root / "images_classic" / "texture" / prep.archives.MARKER_DIR / "texture.tar.json"
    assert marker.is_file() and '"complete": false' in marker.read_text()


def test_committed_cifar10_lists_match_the_shared_archives():
    """The committed lists name exactly the archives' images, labels in CIFAR-10's class order."""
    train_tar, test_tar = need_shared("cifar10_train.tar"), need_shared("cifar10_test.tar")
    lists = REPO / "benchmark_imglist" / "cifar10"
    with tarfile.open(test_tar) as tf:
        test_names = {m.name for m in tf.getmembers() if m.isfile()}
    val, test = read_list(lists / "val_cifar10.txt"), read_list(lists / "test_cifar10.txt")
    assert len(val) == 1000 and len(test) == 9000
    assert {p for p, _ in val} | {p for p, _ in test} == test_names
    assert not {p for p, _ in val} & {p for p, _ in test}
    for p, label in val + test:
        assert prep.archives.CIFAR10_CLASSES[label] == p.split("/")[2]
    assert np.bincount([l for _, l in val]).tolist() == [100] * 10
    with tarfile.open(train_tar) as tf:
        train_names = sorted(m.name for m in tf.getmembers() if m.isfile())
    assert [p for p, _ in read_list(lists / "train_cifar10.txt")] == train_names


@pytest.mark.slow
def test_full_prepare_from_shared_data_reproduces_committed_lists(tmp_path):
    sources = [need_shared(n) for n in ("cifar10_train.tar", "cifar10_test.tar", "mnist_test.tar", "texture.tar")]
    report = prep.prepare("cifar10", tmp_path / "data", sources, allow_download=False)
    assert report.lists["train_cifar10.txt"] == 50000 and report.lists["test_mnist.txt"] == 10000
    for f in (REPO / "benchmark_imglist" / "cifar10").glob("*.txt"):
        assert (tmp_path / "data" / "benchmark_imglist" / "cifar10" / f.name).read_text() == f.read_text(), f.name


# ------------------------------------------------------------------------------------------ prepare
def test_prepare_from_local_archives_writes_deterministic_lists(tmp_path):
    train, test = cifar_like_tars(tmp_path)
    texture = make_tar(tmp_path / "tex.tar.gz", {f"texture/test/{c}/{c}_{i}.jpg": png_bytes(i)
                                                 for c in ("banded", "woven") for i in range(4)}, "gz")
    root = tmp_path / "data"
    report = prep.prepare("cifar10", root, [train, test, texture], allow_download=False)
    lists = root / "benchmark_imglist" / "cifar10"
    assert report.lists["train_cifar10.txt"] == 30
    assert report.lists["val_cifar10.txt"] == 1000 and report.lists["test_cifar10.txt"] == 50  # 100/class held out
    assert report.lists["test_texture.txt"] == 8
    assert set(report.absent) == {"test_cifar100.txt", "test_mnist.txt", "test_svhn.txt", "test_places365.txt",
                                  "val_tin.txt", "test_tin.txt", "test_cifar10c.txt"}
    assert "OpenOOD" in report.absent["test_tin.txt"] and "tin" in report.absent["test_tin.txt"]
    # the covariate-shifted ID list (fsood) needs OpenOOD's data directory, like its filtered TIN
    assert "OpenOOD's test_cifar10c.txt" in report.absent["test_cifar10c.txt"]
    assert f"{root}/downloads/svhn" in report.absent["test_svhn.txt"]
    first = {f.name: f.read_text() for f in lists.glob("*.txt")}
    for p, label in read_list(lists / "train_cifar10.txt"):
        assert p.split("/")[2] == prep.archives.CIFAR10_CLASSES[label]
    # a second run (images already there) changes nothing
    prep.prepare("cifar10", root, [train, test], allow_download=False)
    assert {f.name: f.read_text() for f in lists.glob("*.txt")} == first
    status = {s.name: split_status(b, s) for b in [load_benchmark("cifar10", root)] for s in b.splits()}
    assert (status["id_val"]["present"], status["id_val"]["expected"]) == (1000, 1000)
    assert status["tin"]["state"] == "no image list"


def test_prepare_without_id_data_is_one_line_error_naming_what_and_where(tmp_path, capsys):
    _, test = cifar_like_tars(tmp_path)
    root = tmp_path / "data"
    code = cli_module.main(["data", "prepare", "cifar10", "--root", str(root), "--from", str(test), "--no-download"])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("openood-ext:")]
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert err[0].startswith("openood-ext: error: cannot prepare cifar10: cifar10 (train) images not found")
    assert "cifar-10-python.tar.gz" in err[0] and f"{root}/downloads/cifar10" in err[0] and "--from" in err[0]


def test_prepare_with_unreachable_network_says_what_failed(tmp_path, monkeypatch):
    """No network: the download error (URL tried) and where to put the file, in one line."""
    monkeypatch.setitem(prep.archives.SOURCES, "cifar10", SetSource("cifar10", (RemoteFile(
        "cifar-10-python.tar.gz", ("http://127.0.0.1:9/cifar-10-python.tar.gz",), "sha256:" + "0" * 64),)))
    with pytest.raises(DataError) as exc:
        prep.prepare("cifar10_ad", tmp_path / "data", timeout=2)
    msg = str(exc.value)
    assert "\n" not in msg and "could not download cifar-10-python.tar.gz" in msg
    assert "127.0.0.1:9" in msg and f"{tmp_path}/data/downloads/cifar10/" in msg


def test_unsafe_archive_member_is_refused(tmp_path):
    bad = make_tar(tmp_path / "bad.tar", {"../evil/x.png": png_bytes(0)})
    with pytest.raises(DataError, match="unsafe path"):
        prep.extract_image_archive(bad, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_archive_without_images_is_refused(tmp_path):
    junk = make_tar(tmp_path / "junk.tar", {"notes/readme.txt": b"hello"})
    with pytest.raises(DataError, match="no image files"):
        prep.ingest(junk, tmp_path / "data")


def test_cifar_python_archive_converts_to_openood_names(tmp_path):
    """The published pickled format -> PNG, numbered 1-based per class like OpenOOD's lists."""
    rng = np.random.default_rng(0)
    batch = lambda labels: pickle.dumps({b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),  # noqa: E731
                                         b"labels": labels})
    members = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": [c.encode() for c in prep.archives.CIFAR10_CLASSES]})}
    for i in range(1, 6):
        members[f"cifar-10-batches-py/data_batch_{i}"] = batch([0, 3, 3])
    members["cifar-10-batches-py/test_batch"] = batch([9, 0])
    archive = make_tar(tmp_path / "cifar-10-python.tar.gz", members, "gz")
    counts = prep.archives.convert_cifar_python(archive, tmp_path / "img", "cifar10")
    assert counts == {"cifar10": 17}
    cats = sorted(p.name for p in (tmp_path / "img/cifar10/train/cat").iterdir())
    assert cats == [f"{i:04d}.png" for i in range(1, 11)]
    with Image.open(tmp_path / "img/cifar10/test/truck/0001.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_convert_losslessly_and_unknown_checksums_are_refused(tmp_path):
    src = tmp_path / "idx"
    src.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (12, 28, 28))
    labels = np.arange(12) % 3
    write_idx(src / "t10k-images-idx3-ubyte.gz", images)
    write_idx(src / "t10k-labels-idx1-ubyte.gz", labels)
    assert prep.archives.convert_idx_dir(src, tmp_path / "img", "mnist") == {"mnist": 12}
    png = tmp_path / "img/mnist/test/2/00005.png"
    assert np.array_equal(np.asarray(Image.open(png)), images[5])
    with pytest.raises(DataError, match="neither the published MNIST nor Fashion-MNIST"):
        prep.ingest(src, tmp_path / "data")


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="truncated"):
        prep.archives._read_idx(path)


def test_debian_fashion_mnist_is_recognised_by_content_checksum():
    if not (FMNIST_DEB / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{FMNIST_DEB} absent (apt-get install dataset-fashion-mnist)")
    assert prep.archives.identify_idx_dir(FMNIST_DEB) == "fashionmnist"


# ------------------------------------------------------------------------------------------ download
class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload; honours Range unless ``ignore_range``; records the Range headers it saw."""

    payload = b""
    ignore_range = False
    seen_ranges: list = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).seen_ranges.append(rng)
        data, status = self.payload, 200
        if rng and not self.ignore_range:
            start = int(rng.split("=")[1].rstrip("-"))
            data, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("H", (RangeHandler,), {"payload": os.urandom(300_000), "seen_ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()


def remote_for(handler, url, name="file.bin", digest=None):
    return RemoteFile(name, (url,), "sha256:" + (digest or hashlib.sha256(handler.payload).hexdigest()),
                      len(handler.payload))


def test_download_resumes_a_partial_file_with_range(server, tmp_path):
    handler, url = server
    (tmp_path / "file.bin.part").write_bytes(handler.payload[:123_456])
    path = download(remote_for(handler, url), tmp_path, show_progress=False)
    assert path.read_bytes() == handler.payload and not (tmp_path / "file.bin.part").exists()
    assert handler.seen_ranges == ["bytes=123456-"]
    # verified file already there: no request at all
    download(remote_for(handler, url), tmp_path, show_progress=False)
    assert len(handler.seen_ranges) == 1


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    handler, url = server
    handler.ignore_range = True
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)
    path = download(remote_for(handler, url), tmp_path, show_progress=False)
    assert path.read_bytes() == handler.payload


def test_download_with_wrong_checksum_keeps_nothing(server, tmp_path):
    handler, url = server
    with pytest.raises(DataError, match="checksum mismatch") as exc:
        download(remote_for(handler, url, digest="0" * 64), tmp_path, show_progress=False)
    assert str(tmp_path) in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_hand_placed_file_is_verified_not_trusted(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"not the published bytes")
    remote = RemoteFile("file.bin", ("http://127.0.0.1:9/x",), "sha256:" + "1" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        download(remote, tmp_path, show_progress=False)
    assert verify(tmp_path / "file.bin", RemoteFile("file.bin", (), None)) is None


def test_prepare_downloads_a_missing_set(server, tmp_path, monkeypatch):
    """cifar10 from --from, Textures fetched from a (local) canonical URL, checked and extracted."""
    handler, url = server
    payload_tar = make_tar(tmp_path / "dtd.tar", {f"dtd/images/{c}/{c}_000{i}.jpg": png_bytes(i)
                                                  for c in ("banded", "zigzagged") for i in range(3)}
                           | {"dtd/labels/train1.txt": b"banded/banded_0000.jpg\n"})
    handler.payload = payload_tar.read_bytes()
    remote = RemoteFile("dtd-r1.0.1.tar.gz", (url,), "sha256:" + hashlib.sha256(handler.payload).hexdigest())
    monkeypatch.setitem(prep.archives.SOURCES, "texture", SetSource("texture", (remote,)))
    monkeypatch.setitem(prep.archives.KNOWN_ARCHIVES, "dtd-r1.0.1.tar.gz", "texture")
    for name in ("mnist", "svhn", "cifar100"):
        monkeypatch.setitem(prep.archives.SOURCES, name, SetSource(name))  # no network for the others
    train, test = cifar_like_tars(tmp_path)
    report = prep.prepare("cifar10", tmp_path / "data", [train, test])
    assert report.lists["test_texture.txt"] == 6 and report.ingested["texture"] == 6
    assert (tmp_path / "data/downloads/texture/dtd-r1.0.1.tar.gz").is_file()
    assert (tmp_path / "data/images_classic/texture/zigzagged/zigzagged_0002.jpg").is_file()


def test_openood_data_directory_is_linked_and_its_lists_are_kept(tmp_path):
    """--from <OpenOOD data dir>: images linked (not copied), OpenOOD's own splits win over ours."""
    oo = tmp_path / "openood_data"
    lines = {"train_cifar10.txt": [], "val_cifar10.txt": [], "test_cifar10.txt": [], "test_tin.txt": []}
    for k, c in enumerate(prep.archives.CIFAR10_CLASSES):
        for i in range(1, 4):
            rel = f"cifar10/train/{c}/{i:04d}.png"
            (oo / "images_classic" / rel).parent.mkdir(parents=True, exist_ok=True)
            (oo / "images_classic" / rel).write_bytes(png_bytes(i))
            lines["train_cifar10.txt"].append(f"{rel} {k}")
            rel = f"cifar10/test/{c}/{i:04d}.png"
            (oo / "images_classic" / rel).parent.mkdir(parents=True, exist_ok=True)
            (oo / "images_classic" / rel).write_bytes(png_bytes(50 + i))
            lines["val_cifar10.txt" if i == 1 else "test_cifar10.txt"].append(f"{rel} {k}")
    for i in range(4):
        (oo / "images_classic/tin/val/images").mkdir(parents=True, exist_ok=True)
        (oo / f"images_classic/tin/val/images/val_{i}.JPEG").write_bytes(png_bytes(90 + i))
        lines["test_tin.txt"].append(f"tin/val/images/val_{i}.JPEG -1")
    (oo / "benchmark_imglist/cifar10").mkdir(parents=True)
    for name, ls in lines.items():
        (oo / "benchmark_imglist/cifar10" / name).write_text("\n".join(ls) + "\n")
    root = tmp_path / "data"
    report = prep.prepare("cifar10", root, [oo], allow_download=False)
    assert (root / "images_classic/cifar10").is_symlink()
    assert report.lists["val_cifar10.txt"] == 10 and report.lists["test_tin.txt"] == 4  # OpenOOD's, not ours
    ours = root / "benchmark_imglist/cifar10"
    assert (ours / "val_cifar10.txt").read_text() == (oo / "benchmark_imglist/cifar10/val_cifar10.txt").read_text()
    bench = load_benchmark("cifar10", root)
    assert bench.missing_reason(bench.split("tin")) is None
    assert split_status(bench, bench.split("id_train"))["present"] == 30


def _one_line_exit_2(capsys, argv) -> str:
    code = cli_module.main(argv)
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("openood-ext:")]
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr, stderr
    return err[0]


def test_archive_of_a_set_the_benchmark_does_not_read_is_refused_before_extracting(tmp_path, capsys):
    """``data prepare mnist --from cifar10_test.tar`` used to extract CIFAR-10 into the data root first."""
    _, test = cifar_like_tars(tmp_path, n_test=2)
    root = tmp_path / "data"
    err = _one_line_exit_2(capsys, ["data", "prepare", "mnist", "--root", str(root), "--from", str(test), "--no-download"])
    assert f"{test}: holds cifar10 (20 images), which mnist does not use (it reads mnist)" in err
    assert not (root / "images_classic" / "cifar10").exists()
    assert not (root / "images_classic" / prep.archives.JOURNAL).exists()
    mixed = make_tar(tmp_path / "mixed.tar", {"cifar10/test/cat/0001.png": png_bytes(1),
                                              "mnist/test/3/0001.png": png_bytes(2, mode="L")})
    assert prep.ingest(mixed, root, wanted=("mnist", frozenset({"mnist"}))) == {"mnist": 1}
    assert not (root / "images_classic" / "cifar10").exists()  # only the sets the benchmark reads


def test_truncated_archive_is_named_as_truncated(tmp_path, capsys):
    _, test = cifar_like_tars(tmp_path, n_test=4)
    data = test.read_bytes()
    for name, cut in (("cut_mid.tar", len(data) // 2), ("cut_head.tar", 300)):
        (tmp_path / name).write_bytes(data[:cut])
        err = _one_line_exit_2(capsys, ["data", "prepare", "cifar10", "--root", str(tmp_path / "data"),
                                        "--from", str(tmp_path / name), "--no-download"])
        assert str(tmp_path / name) in err and "truncated" in err, err
    gz = make_tar(tmp_path / "c.tar.gz", {f"cifar10/test/cat/{i:04d}.png": png_bytes(i, size=32) for i in range(20)}, "gz")
    (tmp_path / "cut.tar.gz").write_bytes(gz.read_bytes()[:gz.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz: the archive ends early: truncated"):
        prep.ingest(tmp_path / "cut.tar.gz", tmp_path / "data2")
