"""faiss is optional: one place that finds it, says how to install it, and keeps its GPU resources.

``pip install 'openood_ext[faiss]'`` installs faiss-cpu, ``'openood_ext[gpu]'`` faiss-gpu; never both (the
two wheels write the same ``site-packages/faiss`` folder). Without either, every KNN search runs on the
torch backend (same distances; on the data's device).

A faiss-gpu index borrows a ``StandardGpuResources`` (scratch memory, streams) that must outlive it;
:func:`gpu_resources` creates one per GPU on first use and keeps it for the process, so an index never
holds a dangling pointer and repeated searches (NPOS every training step) reuse the same allocation.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Any

from ..errors import ConfigError

INSTALL_HINT = "pip install 'openood_ext[faiss]' (CPU) or 'openood_ext[gpu]' (faiss-gpu), or use backend: torch"

FAISS_WHEELS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12")

_RESOURCES: dict[int, Any] = {}
_GPU_INDEXES: dict[tuple[int, int, Any], Any] = {}


def installed_faiss_wheels() -> list[str]:
    """The faiss distributions pip has installed (more than one: they overwrote each other's files)."""
    found = []
    for name in FAISS_WHEELS:
        try:
            importlib.metadata.distribution(name)
            found.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def import_faiss(key: str = "backend"):
    """The faiss module, or a one-line ConfigError naming ``key`` and how to install it (or how to
    repair two faiss wheels installed over each other)."""
    if not faiss_available():
        raise ConfigError(f"{key}: faiss is not installed ({INSTALL_HINT})")
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        wheels = installed_faiss_wheels()
        if len(wheels) > 1:
            raise ConfigError(f"{key}: faiss does not import because {' and '.join(wheels)} are both installed "
                              f"and overwrote each other; pip uninstall -y {' '.join(wheels)}, then install one "
                              f"({INSTALL_HINT})") from None
        raise ConfigError(f"{key}: faiss is installed but does not import ({exc}); {INSTALL_HINT}") from None


def faiss_has_gpu() -> bool:
    """Whether the installed faiss is a GPU build (faiss-gpu); False without faiss."""
    try:
        return faiss_available() and hasattr(importlib.import_module("faiss"), "StandardGpuResources")
    except ImportError:  # a broken install: the faiss path reports it when it is used
        return False


def gpu_resources(device_index: int):
    """This process's ``StandardGpuResources`` for GPU ``device_index`` (created once, then reused)."""
    if device_index not in _RESOURCES:
        _RESOURCES[device_index] = import_faiss().StandardGpuResources()
    return _RESOURCES[device_index]


def flat_l2_index(dim: int, device_index: int | None = None, slot: Any = None):
    """An empty exact ``IndexFlatL2`` of ``dim``-vectors: on GPU ``device_index`` (faiss-gpu), else on
    the host. ``slot`` (GPU only): a key under which the index is kept and handed back emptied on the
    next call with the same key, so a search repeated every step (NPOS: one index per class) does not
    allocate new GPU indexes each time; the previous holder of that slot must be done with it."""
    faiss = import_faiss()
    key = (int(device_index), int(dim), slot) if device_index is not None and slot is not None else None
    if key is not None and key in _GPU_INDEXES:
        index = _GPU_INDEXES[key]
        index.reset()
        return index
    index = faiss.IndexFlatL2(int(dim))
    if device_index is not None:
        index = faiss.index_cpu_to_gpu(gpu_resources(device_index), int(device_index), index)
    if key is not None:
        _GPU_INDEXES[key] = index
    return index
