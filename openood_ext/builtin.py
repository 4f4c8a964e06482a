"""Importing this module registers every built-in part in its registry."""

from . import datasets, evaluators, networks, pipelines, postprocessors, synthesizers, trainers  # noqa: F401
