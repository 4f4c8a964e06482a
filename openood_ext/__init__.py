"""openood_ext: out-of-distribution and anomaly detection research toolkit.

Parts (networks, trainers, postprocessors, synthesizers, evaluators, pipelines, benchmarks) live in
registries and are wired together from YAML configs; see README.md.
"""

__version__ = "0.1.0"
