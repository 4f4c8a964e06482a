"""Shared fixtures: repository paths, a subprocess runner for the CLI, the demo plugin on sys.path."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "tests" / "plugin_pkg"
SHARED_DATA = Path(os.environ.get("OPENOOD_EXT_SHARED", REPO.parent / "shared" / "data"))


def install_demo_plugin(site: Path) -> Path:
    """Make the demo plugin importable and discoverable from ``site`` the way pip would.

    Writes an ``.dist-info`` directory whose ``entry_points.txt`` is taken from the plugin's setup.cfg,
    so ``importlib.metadata`` finds its entry points exactly as for an installed package.
    """
    parser = configparser.ConfigParser()
    parser.read(PLUGIN_SRC / "setup.cfg")
    dist = site / "openood_ext_demo_plugin-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: openood_ext_demo_plugin\nVersion: 0.1\n")
    lines = []
    for group, body in parser["options.entry_points"].items():
        lines.append(f"[{group}]")
        lines += [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def image_loader(images, labels, batch_size: int = 16):
    """A loader in the pipeline's format: (images, labels, n_skipped) batches, unshuffled."""
    import torch
    data = list(zip(images, labels.tolist()))
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False,
        collate_fn=lambda batch: (torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch]), 0))


MAIN_CONFIG = REPO / "configs" / "pipelines" / "test_ood.yml"


def cli(*args: str, cwd: Path, env: dict | None = None, module: str | None = None, timeout: int = 300):
    """Run ``python main.py ARGS`` (or ``python -m MODULE ARGS``) in ``cwd``; returns CompletedProcess.

    Data is materialised under ``cwd/data`` unless ``env`` says otherwise.
    """
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(PLUGIN_SRC)]),
                "OPENOOD_EXT_DATA": str(cwd / "data"), **(env or {})}
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, str(REPO / "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def run_cli(tmp_path):
    """``cli`` bound to a fresh temporary working directory."""

    def _run(*args: str, **kwargs):
        kwargs.setdefault("cwd", tmp_path)
        return cli(*args, **kwargs)

    return _run


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """The devices a smoke test runs on: ``cpu`` always, ``cuda`` when a CUDA device is present (skipped
    otherwise), so that ``pytest -m "not slow" -k cuda`` on a GPU machine runs the CUDA paths."""
    import torch
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The main job run once, as on a fresh clone (trains its network): (workdir, CompletedProcess)."""
    work = tmp_path_factory.mktemp("digits_main_job")
    proc = cli("--config", str(MAIN_CONFIG), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


@pytest.fixture(scope="session")
def digits_checkpoint(digits_run) -> Path:
    work, _ = digits_run
    return work / "checkpoints" / "digits_cnn_s0.pt"


def write_class_set(root: Path, style: str, counts, rng) -> None:
    """Write a 3-class toy image set under ``root``: ``img/<split>/<c>_<i>.png`` and ``lists/<split>.txt``.

    ``style`` "band": 28x28 grayscale noise with a bright vertical band at position c;
    "channel": 32x32 RGB noise with channel c brightened. ``counts`` = ((split, images per class), ...);
    ``rng`` is a numpy Generator, consumed in a fixed order so fixtures stay reproducible.
    """
    import numpy as np
    from PIL import Image
    lists: dict[str, list[str]] = {}
    for split, n in counts:
        lists[split] = []
        for c in range(3):
            for i in range(n):
                if style == "band":
                    img = rng.integers(0, 60, (28, 28)).astype(np.uint8)
                    img[:, c * 9:(c + 1) * 9] += 150
                else:
                    img = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
                    img[..., c] += 150
                path = f"img/{split}/{c}_{i}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / path)
                lists[split].append(f"{path} {c}\n")
    (root / "lists").mkdir()
    for split, rows in lists.items():
        (root / "lists" / f"{split}.txt").write_text("".join(rows))


def toy_benchmark(root: Path, name: str, preprocessor: dict) -> dict:
    """``benchmark:`` config of a set written by :func:`write_class_set` (3 classes, normal class 0), read
    through the registered benchmark ``name`` (e.g. mnist, cifar10_ad) with its image lists replaced."""
    return {"name": name, "normal_class": 0, "num_classes": 3, "data_root": str(root),
            "imglist_dir": str(root / "lists"), "preprocessor": preprocessor,
            "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"}}
