"""openood_ext: out-of-distribution and anomaly detection research toolkit.

Parts (networks, trainers, postprocessors, synthesizers, evaluators, pipelines, benchmarks) live in
registries and are wired together from YAML configs; see README.md.
"""

__version__ = "0.1.0"

#: names served lazily from :mod:`openood_ext.api` so that ``import openood_ext`` stays light
_API = ("Evaluator", "Detector", "ModelAdapter")


def __getattr__(name: str):
    if name in _API:  # imported by name: the root sits below every layer and must not import the top one
        import importlib
        return getattr(importlib.import_module("openood_ext.api"), name)
    raise AttributeError(f"module 'openood_ext' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
