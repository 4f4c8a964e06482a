"""Configuration: YAML files merged left to right, dotted overrides, ``${...}`` interpolation.

    python main.py --config a.yml b.yml trainer.epochs=5 postprocessors=[msp,knn] --network.checkpoint x.pt

* A file may start from others with ``_base_: [relative/path.yml, ...]`` (merged first, in order).
* ``key=value`` overrides an existing key (or sets a known top-level one such as ``overwrite``); a key
  that does not exist is an error naming the closest keys; ``+key=value`` adds a new key. ``--key value`` and ``--key=value`` are the same as ``key=value``.
* Values are parsed as YAML (``[a,b]`` is a list, ``5`` an int); a value of the wrong type for the key
  it replaces (text for a number, say) is an error.
* Top-level keys are checked against the known ones (:func:`top_level_keys`: the keys of every run,
  declared with their types by :class:`RunSettings`, plus the sections the registered pipelines declare
  as their own); put your own variables under ``vars:``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .registry import registry_of
from .schema import NonNegativeInt, PositiveInt, Range, check_value
from .utils.io import write_text

BASE_KEY = "_base_"
SEED_MAX = 2**32 - 1  # numpy.random.seed's range
#: the package whose registry lists the pipelines: the sections a config may hold beyond the run keys are
#: declared by the pipelines, so it is imported on first use (the lazy loading of every registry's home)
PIPELINES_HOME = "openood_ext.pipelines"


@dataclass
class RunSettings:
    """The top-level keys every run may set, with their types and ranges: the one place these rules are
    written (the schema reads them). Parts are sections checked by their own registries; a pipeline's
    own sections (``ad:``, ``oe_search:``, ...) are declared by the pipeline (``config_sections``)."""

    pipeline: str
    experiment: str
    seed: Annotated[int, Range(0, SEED_MAX)]
    device: str
    output_dir: str
    cache_dir: str | None
    num_workers: NonNegativeInt
    batch_size: PositiveInt
    plugins: list | None
    vars: dict | None
    # the parts (each checked by its registry)
    benchmark: dict
    network: dict
    trainer: dict
    postprocessors: list | str
    evaluator: str | dict
    data: dict | None  # how training images reach the network (datasets/data_settings.py)
    # how the run behaves (none of these changes its numbers, see pipelines/run_identity.NOT_IDENTITY)
    train_if_missing: bool
    verbose: bool
    resume: bool
    report: bool
    overwrite: bool
    aps: bool
    # the full-spectrum setting (test_ood): covariate-shifted ID sets join the ID side; changes the numbers
    fsood: bool
    # data loading and the evaluation forward pass on GPUs (utils/runtime.py)
    pin_memory: bool | Literal["auto"]
    persistent_workers: bool
    prefetch_factor: PositiveInt | None
    precision: str
    channels_last: bool
    compile: bool | str | None


RUN_KEYS = frozenset(field.name for field in fields(RunSettings))


def pipeline_sections() -> dict[str, Any]:
    """``{section: settings class or None}`` declared by the registered pipelines (``config_sections``)."""
    pipelines = registry_of("pipelines")
    if pipelines is None:
        importlib.import_module(PIPELINES_HOME)
        pipelines = registry_of("pipelines")
    sections: dict[str, Any] = {}
    for name in pipelines.names():
        sections.update(getattr(pipelines.get(name), "config_sections", None) or {})
    return sections


def top_level_keys() -> frozenset[str]:
    """Every key a config may hold at its top level: the run keys and the pipelines' own sections."""
    return RUN_KEYS | frozenset(pipeline_sections())


# ``benchmark=cifar10`` / ``network=resnet18_32x32`` on the command line takes that section from
# ``configs/<dir>/<value>.yml`` (looked up in the working directory, then in the repository).
SECTION_DIRS = {"benchmark": "benchmarks", "network": "networks"}
REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load one YAML file (and its ``_base_`` files) into a DictConfig; ConfigError names file and line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file (e.g. {path}/<name>.yml)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found{override_hint(str(path))}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: _base_ files include each other in a cycle")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    try:
        # Re-load through OmegaConf so its YAML dialect (1e-4 as a float, ...) applies.
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as exc:  # e.g. a duplicate key, which PyYAML's safe_load accepts silently
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = re.sub(r"^found duplicate key (.*)$", r"duplicate key '\1'", problem)
        raise ConfigError(f"{where}: {problem}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    bases = cfg.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, load_yaml(path.parent / base, _seen + (path.resolve(),)))
    return OmegaConf.merge(merged, cfg)


def cli_overrides(tokens: Sequence[str]) -> list[str]:
    """Turn ``--a.b value`` / ``--a.b=value`` / ``a.b=value`` tokens into ``a.b=value`` strings."""
    out, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            body = tok[2:]
            if "=" in body:
                out.append(body)
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                out.append(f"{body}={tokens[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"option '{tok}' needs a value (--key value or key=value)")
        elif "=" in tok:
            out.append(tok)
        else:
            raise ConfigError(f"argument '{tok}' is not an override (expected key=value){override_hint(tok)}")
        i += 1
    return out


def override_hint(token: str) -> str:
    """``"; did you mean seed=5?"`` for a token like ``seed5`` or ``trainer.epochs3``; else ""."""
    if "=" in token or "/" in token or token.endswith((".yml", ".yaml")):
        return ""
    match = re.fullmatch(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*?)[:]?(-?\d[\w.]*|true|false|null)", token)
    if match and (match.group(1).split(".")[0] in RUN_KEYS or "." in match.group(1)):
        return f"; did you mean {match.group(1)}={match.group(2)}?"
    for key in sorted(RUN_KEYS, key=len, reverse=True):
        if token.startswith(key) and len(token) > len(key):
            return f"; did you mean {key}={token[len(key):].lstrip(':')}?"
    return ""


def section_from_file(key: str, value: str) -> Any:
    """The ``key`` section of ``configs/<SECTION_DIRS[key]>/<value>.yml``; ConfigError naming ``value`` if absent."""
    folder = SECTION_DIRS[key]
    candidates = [Path("configs") / folder / f"{value}.yml", REPO_CONFIGS / folder / f"{value}.yml"]
    for path in candidates:
        if path.is_file():
            section = load_yaml(path).get(key)
            if section is None:
                raise ConfigError(f"override '{key}={value}': {path} has no '{key}' section")
            return section
    known = sorted({f.stem for d in (Path("configs") / folder, REPO_CONFIGS / folder) if d.is_dir()
                    for f in d.glob("*.yml")})
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"override '{key}={value}': unknown {key} '{value}'{hint} "
                      f"(known: {', '.join(known) or 'none'}; or give {key}.name=... and its other keys)")


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                keys += _all_keys(node, full + ".")
    return keys


_ABSENT = object()


def declared_type(key: str) -> bool:
    """Whether ``key``'s type is declared (a top-level run key, or a field of a pipeline section such as
    ``ad.seeds``): the schema then checks the new value against the declaration, not against the type of
    the value it replaces (``ad.seeds: 1`` may become ``ad.seeds=[0,3]``)."""
    head, _, rest = key.partition(".")
    if not rest:
        return head in RUN_KEYS
    settings = pipeline_sections().get(head)
    return "." not in rest and settings is not None and rest in {f.name for f in fields(settings)}


def _check_type(key: str, old: Any, new: Any) -> None:
    if old is None or new is None or declared_type(key):
        return
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, (int, float)):
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
    elif isinstance(old, (DictConfig, dict)):
        ok = isinstance(new, (DictConfig, dict, str))
    else:
        ok = True
    if not ok:
        expected = "a mapping" if isinstance(old, (DictConfig, dict)) else type(old).__name__
        raise ConfigError(f"override '{key}': expected {expected}, got {new!r}")


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key=value`` / ``+key=value`` overrides in place (see module docstring)."""
    replaced: dict[str, str] = {}  # sections taken from a file by an earlier ``benchmark=NAME`` override
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, value_text = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not key:
            raise ConfigError(f"override '{item}': empty key")
        try:
            value = OmegaConf.from_dotlist([f"v={value_text}"]).v if value_text else ""
            old = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override '{item}': {str(exc).splitlines()[0]}") from None
        head = key.split(".")[0]
        if old is _ABSENT and "." in key and head in replaced:  # benchmark=cifar10 benchmark.oe=...: the
            add = True  # new section's keys are set like its file's; its registry checks their names
        if old is _ABSENT and not add and key not in top_level_keys():  # known top-level keys need no '+'
            close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"override '{key}': no such key in the config{hint} (use +{key}=... to add it)")
        if key in SECTION_DIRS and isinstance(value, str) and isinstance(old, DictConfig):
            value = section_from_file(key, value)
            replaced[key] = value_text
        if old is not _ABSENT:
            _check_type(key, old, value)
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override '{item}': {str(exc).splitlines()[0]}") from None
    return cfg


def validate(cfg: DictConfig) -> None:
    """Reject unknown top-level keys (typos) and values of the wrong type or range, naming the key."""
    known = top_level_keys()
    for key in cfg.keys():
        if key == "synthesizer":  # an earlier layout's key, now read nowhere: say where it went
            raise ConfigError("config key 'synthesizer' is no longer read: outlier sources are configured under "
                              "trainer.outliers (e.g. trainer.outliers: {name: npos})")
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else " (put your own variables under 'vars:')"
            raise ConfigError(f"config key '{key}' is not known{hint}")
    hints = typing.get_type_hints(RunSettings, include_extras=True)
    for key in cfg.keys():
        value = to_plain(cfg.get(key))
        if key in hints:
            check_value(f"config key '{key}'", value, hints[key])
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping (the section of pipeline settings), got {value!r}")


def load_config(paths: Sequence[str | Path], overrides: Iterable[str] = ()) -> DictConfig:
    """Merge ``paths`` left to right, apply overrides, resolve interpolations, validate."""
    if not paths:
        raise ConfigError("no config file given (use --config FILE.yml)")
    cfg = OmegaConf.create({})
    for p in paths:
        cfg = OmegaConf.merge(cfg, load_yaml(p))
    apply_overrides(cfg, overrides)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config interpolation failed: {str(exc).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_plain(node: Any) -> Any:
    """DictConfig/ListConfig -> dict/list; anything else unchanged."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


# ---------------------------------------------------------------------------------------------- command line
def split_run_args(argv: Sequence[str]) -> tuple[list[str], list[str], str | None]:
    """(config files, override tokens, resume dir) from the arguments of ``run`` (and ``sweep``)."""
    configs, rest, resume, i = [], [], None, 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--debug":
            pass
        elif tok == "--resume":
            if i + 1 >= len(argv):
                raise ConfigError("--resume needs the run directory of an interrupted run")
            resume = argv[i + 1]
            i += 1
        elif tok in ("--config", "-c"):
            i += 1
            while i < len(argv) and not argv[i].startswith("-") and "=" not in argv[i]:
                configs.append(argv[i])
                i += 1
            continue
        elif tok.startswith("--config="):
            configs.append(tok.split("=", 1)[1])
        else:
            rest.append(tok)
        i += 1
    return configs, rest, resume


def check_config_paths(configs: Sequence[str]) -> None:
    """A token after ``--config`` that is no file and looks like a mistyped override gets a hint."""
    for token in configs:
        path = Path(token)
        if path.exists() or path.suffix.lower() in (".yml", ".yaml"):
            continue  # a directory or a missing YAML file is reported by the loader
        raise ConfigError(f"argument '{token}' is neither a config file nor key=value{override_hint(token)}")
