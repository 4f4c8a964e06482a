"""``openood-ext cache list|clean``: each decoded-image cache listed with its image list, size and last use;
clean removes only the files a cache wrote (identified by its sidecar), by age; bad input is one line."""

from __future__ import annotations

import os
import time

import pytest

from openood_ext.cli import main as cli_main
from openood_ext.datasets.cache_cli import find_caches
from openood_ext.datasets.decoded_cache import DecodedCache
from openood_ext.datasets.imglist import ImglistDataset
from openood_ext.datasets.tensor_recipe import geometry
from openood_ext.datasets.transforms import build_transform
from data_helpers import random_png_list

PRE = {"image_size": 8, "channels": 3}


def dataset(root, name, n):
    return ImglistDataset(random_png_list(root, n, classes=1, folder=name, list_name=f"{name}.txt", seed=n), root,
                          build_transform(PRE))


@pytest.fixture
def caches(tmp_path):
    d = tmp_path / "cache" / "decoded"
    for name, n in (("small", 3), ("big", 9)):
        DecodedCache(d).load(dataset(tmp_path / "data", name, n), geometry(PRE))
    # files the cache did not write: kept by every clean
    (d / "notes.json").write_text('{"key": "not a cache: no shape, kept, format"}')
    (d / "notes.npy").write_bytes(b"x")
    (d / "orphan.npy").write_bytes(b"y")
    (d / "readme.txt").write_text("mine")
    return d


def run(capsys, *args):
    code = cli_main(["cache", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_names_each_cache_its_list_size_and_age(caches, capsys):
    old = next(e for e in find_caches(caches) if e.imglist.endswith("big.txt"))
    os.utime(old.sidecar, (time.time() - 3 * 86400,) * 2)
    code, out, _ = run(capsys, "list", "--cache-dir", str(caches))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"2 decoded-image cache(s) under {caches}")
    assert "big.txt (9 images 3x8x8)" in lines[2] and "3.0 days" in lines[2]  # oldest use first
    assert "small.txt (3 images 3x8x8)" in lines[3] and "hours" in lines[3]
    size = sum(p.stat().st_size for p in caches.glob("*") if p.stem not in ("notes", "orphan", "readme"))
    assert f"{size / 2**20:.1f} MiB" in lines[0]


def test_clean_by_age_removes_only_files_the_cache_wrote(caches, tmp_path, capsys):
    entries = {e.imglist.rsplit("/", 1)[-1]: e for e in find_caches(caches)}
    os.utime(entries["big.txt"].sidecar, (time.time() - 10 * 86400,) * 2)
    code, out, _ = run(capsys, "clean", "--older-than", "5", "--cache-dir", str(caches), "--dry-run")
    assert code == 0 and "would remove" in out and entries["big.txt"].array.exists()
    code, out, _ = run(capsys, "clean", "--older-than", "5", "--cache-dir", str(caches))
    assert code == 0 and "removed" in out and "big.txt" in out and "1 kept" in out
    assert not entries["big.txt"].array.exists() and not entries["big.txt"].sidecar.exists()
    assert entries["small.txt"].array.exists()
    # a read marks the cache as used: it survives a clean of caches unused for a day
    os.utime(entries["small.txt"].sidecar, (time.time() - 3 * 86400,) * 2)
    DecodedCache(caches).load(dataset(tmp_path / "again", "small", 3), geometry(PRE))  # another list: its own cache
    hit = DecodedCache(caches).load(ImglistDataset(tmp_path / "data/small.txt", tmp_path / "data",
                                                   build_transform(PRE)), geometry(PRE))
    assert hit.source == "cache"
    run(capsys, "clean", "--older-than", "1", "--cache-dir", str(caches))
    assert entries["small.txt"].array.exists()
    code, out, _ = run(capsys, "clean", "--cache-dir", str(caches))
    assert code == 0 and "0 kept" in out and find_caches(caches) == []
    assert sorted(p.name for p in caches.iterdir()) == ["notes.json", "notes.npy", "orphan.npy", "readme.txt"]


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (("list", "--cache-dir", str(afile)), ("clean", "--cache-dir", str(afile))):
        code, _, err = run(capsys, *args)
        assert code == 2 and "is a file, expected a directory" in err and err.count("\n") == 1
    code, _, err = run(capsys, "clean", "--older-than", "soon", "--cache-dir", str(tmp_path))
    assert code == 2 and "--older-than: expected a number of days >= 0, got 'soon'" in err
    code, _, err = run(capsys, "list", "--older-than", "3", "--cache-dir", str(tmp_path))
    assert code == 2 and "only with 'clean'" in err
    monkeypatch.setattr("openood_ext.datasets.cache_cli.os.access", lambda *a: False)
    code, _, err = run(capsys, "clean", "--cache-dir", str(tmp_path))
    assert code == 2 and "not writable" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "list", "--cache-dir", str(tmp_path / "absent"))
    assert code == 0 and out.startswith("0 decoded-image cache(s)")
