"""Helpers shared by the per-registry sweeps (``tests/*/test_registered_*.py``)."""

from __future__ import annotations

from pathlib import Path

# the tiny random Stable Diffusion generation of the OAML outlier sources (works offline; see test_oaml.py)
TINY_SD = dict(model="tiny-random", classes=["cat", "dog"], id_features="synthetic", K=5, select=4, candidates=20,
               keep=2, repeats=2, images_per_class=2, chunk=2, steps=2, size=16, save_size=16, seed=3)


def builtin_names(registry) -> list[str]:
    """The registry's names whose factory lives in the package: entries that test plugins register (demo
    plugins, deliberately broken parts) are left out. Imports every built-in part first."""
    from openood_ext.cli import all_registries
    all_registries()
    return [n for n in registry.names() if registry.get(n).__module__.startswith("openood_ext.")]


def tiny_sd_root(tmp_path_factory) -> Path:
    """A tiny SD outlier generation (text outliers + latents), made once per test session (about 10 s on a CPU)
    and shared by every module that asks: the generation resumes/validates what is already there."""
    from openood_ext.synthesizers.sd_pipeline import SDConfig, ensure_generated
    root = tmp_path_factory.getbasetemp() / "registry_sweep_tiny_sd"
    ensure_generated(root, SDConfig(**TINY_SD))
    return root
