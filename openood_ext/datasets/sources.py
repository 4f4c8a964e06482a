"""Where each image set comes from: canonical download URLs with checksums, and a resumable downloader.

A :class:`RemoteFile` is one file as published by its authors (``cifar-10-python.tar.gz`` on the
CIFAR site, MNIST's idx files, ...). :func:`download` fetches it into ``<root>/downloads/`` with

* a ``.part`` file that a later call resumes with an HTTP ``Range`` request (a server that ignores the
  range gets a fresh download, never a corrupt concatenation),
* a tqdm progress bar,
* a checksum check (sha256 unless the authors only published another digest) before the file is renamed
  to its final name; a mismatch deletes the bad file and raises :class:`~openood_ext.errors.DataError`.

A file that is already in ``<root>/downloads/`` (copied there by hand) is verified and used as is, so the
fix for a machine without network is always "put FILE there".

Sets without a stable public URL (OpenOOD's filtered Tiny-ImageNet, Places365 and ImageNet subsets,
which it distributes through Google Drive) have no RemoteFile; :data:`MANUAL_HINTS` says where to get
them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..utils.io import check_replaceable

CHUNK = 1 << 20
USER_AGENT = "openood-ext-data/1"


@dataclass(frozen=True)
class RemoteFile:
    """One published file.

    Attributes:
        filename: name on disk (under ``<root>/downloads/``).
        urls: the canonical URL first, then mirrors.
        checksum: ``"<algorithm>:<hex digest>"`` of the file as published (``sha256:...`` where known).
        size: size in bytes when known (checked before hashing, so a truncated file fails fast).
        content_sha256: sha256 of the *gunzipped* payload of a ``.gz`` file. Repackaged copies (Debian's
            ``dataset-fashion-mnist`` recompresses the upstream files) differ in their gzip header but
            not in their payload; either digest is accepted.
    """

    filename: str
    urls: tuple[str, ...]
    checksum: str | None = None
    size: int | None = None
    content_sha256: str | None = None

    @property
    def algorithm(self) -> str:
        return (self.checksum or "sha256:").split(":", 1)[0]

    @property
    def digest(self) -> str | None:
        return self.checksum.split(":", 1)[1] if self.checksum else None


@dataclass(frozen=True)
class SetSource:
    """How to obtain one image set (e.g. ``cifar10``): its published files and what they hold."""

    name: str
    files: tuple[RemoteFile, ...] = ()
    description: str = ""
    licence: str = ""
    manual: str = ""  # where to get it when there is no stable URL
    optional_files: tuple[str, ...] = field(default_factory=tuple)  # filenames not needed for a usable set


def _idx(name: str, sha256: str | None, content: str | None, mirrors: tuple[str, ...]) -> RemoteFile:
    return RemoteFile(name, tuple(m + name for m in mirrors), f"sha256:{sha256}" if sha256 else None,
                      content_sha256=content)


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/")
FMNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                  "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/")

SOURCES: dict[str, SetSource] = {
    "cifar10": SetSource(
        "cifar10",
        (RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                    "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071),),
        "CIFAR-10, 50,000 train + 10,000 test 32x32 images", "Krizhevsky 2009"),
    "cifar100": SetSource(
        "cifar100",
        (RemoteFile("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                    "sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169001437),),
        "CIFAR-100, 50,000 train + 10,000 test 32x32 images", "Krizhevsky 2009"),
    "mnist": SetSource(
        "mnist",
        (_idx("train-images-idx3-ubyte.gz",
              "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", None, MNIST_MIRRORS),
         _idx("train-labels-idx1-ubyte.gz",
              "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", None, MNIST_MIRRORS),
         _idx("t10k-images-idx3-ubyte.gz",
              "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", None, MNIST_MIRRORS),
         _idx("t10k-labels-idx1-ubyte.gz",
              "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", None, MNIST_MIRRORS)),
        "MNIST, 60,000 train + 10,000 test 28x28 digits", "LeCun, Cortes, Burges"),
    "fashionmnist": SetSource(
        "fashionmnist",
        # Upstream publishes md5 digests only; the payload sha256s below identify the idx content whatever
        # the gzip wrapper (Debian's dataset-fashion-mnist package recompresses the files).
        (_idx("train-images-idx3-ubyte.gz", None,
              "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", FMNIST_MIRRORS),
         _idx("train-labels-idx1-ubyte.gz", None,
              "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", FMNIST_MIRRORS),
         _idx("t10k-images-idx3-ubyte.gz", None,
              "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", FMNIST_MIRRORS),
         _idx("t10k-labels-idx1-ubyte.gz", None,
              "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", FMNIST_MIRRORS)),
        "Fashion-MNIST, 60,000 train + 10,000 test 28x28 images", "Xiao, Rasul, Vollgraf 2017 (MIT)",
        manual="Debian/Ubuntu: apt-get install dataset-fashion-mnist, then --from /usr/share/datasets/fashion-mnist"),
    "texture": SetSource(
        "texture",
        (RemoteFile("dtd-r1.0.1.tar.gz", ("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                                          "https://thor.robots.ox.ac.uk/dtd/dtd-r1.0.1.tar.gz"),
                    "sha256:e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"),),
        "Describable Textures Dataset, 5,640 images in 47 classes", "Cimpoi et al. 2014 (research use)"),
    "svhn": SetSource(
        "svhn",
        # The SVHN site publishes no sha256; torchvision/gluon pin these digests of the same file.
        (RemoteFile("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                    "sha1:29b312382ca6b9fba48d41a7b5c19ad9a5462b20"),),
        "SVHN test split, 26,032 32x32 images", "Netzer et al. 2011 (non-commercial)"),
}

_OPENOOD_DRIVE = ("OpenOOD distributes it as images_{kind}/{name}.zip through the Google Drive links in its "
                  "scripts/download/download.py (github Jingkang50/OpenOOD); unzip it and pass "
                  "--from DIR/{name}, or point --root at an OpenOOD data directory")
CLASSIC_MANUAL = ("tin", "places365", "cifar10c", "cifar100c")
LARGESCALE_SETS = ("imagenet_1k", "ssb_hard", "ninco", "inaturalist", "openimage_o", "species_sub", "places",
                   "sun", "imagenet_v2", "imagenet_c", "imagenet_r")
MANUAL_HINTS: dict[str, str] = {
    **{name: _OPENOOD_DRIVE.format(name=name, kind="classic") for name in CLASSIC_MANUAL},
    **{name: _OPENOOD_DRIVE.format(name=name, kind="largescale") for name in LARGESCALE_SETS},
}


# ---------------------------------------------------------------------------------------------- checks
def file_digest(path: Path, algorithm: str = "sha256", gunzip: bool = False) -> str:
    h = hashlib.new(algorithm)
    opener = gzip.open if gunzip else open
    try:
        with opener(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> str | None:
    """None when ``path`` is the published file, else why not."""
    if not path.is_file():
        return "missing"
    if remote.size is not None and path.stat().st_size != remote.size:
        return f"size {path.stat().st_size} bytes, expected {remote.size}"
    if remote.digest is None and remote.content_sha256 is None:
        return None
    if remote.digest is not None and file_digest(path, remote.algorithm) == remote.digest:
        return None
    if remote.content_sha256 is not None and path.suffix == ".gz":
        try:
            if file_digest(path, "sha256", gunzip=True) == remote.content_sha256:
                return None
        except DataError:
            pass
    wanted = remote.checksum or f"gunzipped sha256:{remote.content_sha256}"
    return f"checksum mismatch (expected {wanted})"


# ---------------------------------------------------------------------------------------------- download
def _fetch(url: str, part: Path, timeout: float, show_progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with Range when ``part`` has bytes)."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the .part file is complete
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            have = 0  # the server ignored the range: start over rather than append a second copy
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name.removesuffix(".part"),
                                           disable=not show_progress, leave=False) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                bar.update(len(block))


def download(remote: RemoteFile, dest_dir: str | os.PathLike, timeout: float = 60.0,
             show_progress: bool | None = None) -> Path:
    """``dest_dir/remote.filename``, verified; fetched (resuming a ``.part`` file) only when needed.

    Raises DataError naming the file, the URLs tried and where to put the file by hand.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / remote.filename
    if target.is_file():
        problem = verify(target, remote)
        if problem is None:
            return target
        raise DataError(f"{target}: {problem}; delete it (or replace it with the published file) and retry")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest_dir}: cannot create the download directory ({exc.strerror or exc})") from None
    part = dest_dir / (remote.filename + ".part")
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    errors = []
    for url in remote.urls:
        try:
            _fetch(url, part, timeout, show_progress)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url}: {reason}")
            continue
        problem = verify(part, remote)
        if problem is None:
            check_replaceable(target)  # a rename would replace a directory, link or device there
            os.replace(part, target)
            return target
        part.unlink(missing_ok=True)  # a complete but wrong file: never resume from it
        errors.append(f"{url}: {problem}")
    raise DataError(f"could not download {remote.filename} ({'; '.join(errors)}); put the file "
                    f"({remote.checksum or 'published version'}) in {dest_dir}/ or pass --from PATH")
