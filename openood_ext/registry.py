"""One registry class for every kind of part (networks, trainers, postprocessors, ...).

A part is registered with a decorator and built from a config mapping::

    @POSTPROCESSORS.register("knn", aliases=["deep_knn"])
    class KNNPostprocessor(Postprocessor): ...

    POSTPROCESSORS.build({"name": "knn", "k": 50})   # -> KNNPostprocessor(k=50)
    POSTPROCESSORS.build("knn")                      # -> KNNPostprocessor()

Third-party packages add parts without touching this repository through the entry-point group
``openood_ext.<kind>`` (e.g. ``openood_ext.postprocessors``). An entry point may name a class or
function (registered under the entry point's name) or a module (imported; it registers itself).
Entry points are loaded lazily: the first time a name is missing or a listing is asked for.

``check(cfg)`` validates a config mapping without building anything: the name, the keyword arguments
against the entry's signature and type hints (see :mod:`openood_ext.schema`), and the methods every
entry of the kind must have (``Registry("postprocessors", required=("score",))``). ``build`` checks first.

This module knows no part. Each registry names its *home*, the package whose ``__init__`` registers the
built-in parts of its kind; the home is imported on the first lookup or listing, so a registry is complete
whoever asks first, and no module has to import every part "for registration".
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import os
import sys
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

from .errors import ConfigError, PluginError, RegistryError
from .schema import check_arguments

_ALL_REGISTRIES: dict[str, "Registry"] = {}
_KIND_ALIASES: dict[str, str] = {}  # an older kind name -> the registry's kind


class Registry:
    """A name -> factory table for one kind of part.

    Args:
        kind: plural name of the kind ("postprocessors"); also the entry-point group suffix.
        required: methods a class entry must have (checked when it is built); optional ones get
            defaults from whoever uses the part (duck typing: no base class is needed).
        home: dotted name of the package that registers the built-in entries (imported lazily).
        former_kinds: earlier names of the kind: still accepted by :func:`registry_of` and still read as
            entry-point groups (``openood_ext.<former kind>``), so renaming a kind breaks no plugin.
    """

    def __init__(self, kind: str, required: Iterable[str] = (), home: str | None = None,
                 former_kinds: Iterable[str] = ()):
        if kind in _ALL_REGISTRIES:
            raise RegistryError(f"a registry for '{kind}' already exists")
        self.kind = kind
        self.entry_point_group = f"openood_ext.{kind}"
        self.entry_point_groups = (self.entry_point_group, *(f"openood_ext.{k}" for k in former_kinds))
        self.required = tuple(required)
        self._entries: dict[str, Callable] = {}
        self._aliases: dict[str, str] = {}
        self._entry_points_loaded = False
        self.home = home
        self._home_loaded = home is None
        _ALL_REGISTRIES[kind] = self
        for old in former_kinds:
            _KIND_ALIASES[old] = kind
        for old in former_kinds:
            _KIND_ALIASES[old] = kind

    # ------------------------------------------------------------------ registration
    def register(self, name: str | Callable | None = None, *, aliases: Iterable[str] = (),
                 force: bool = False):
        """Decorator registering a class or function under ``name`` (default: its ``__name__``).

        Usable as ``@REG.register``, ``@REG.register("name")`` or
        ``@REG.register("name", aliases=["other"], force=True)``. A duplicate name raises
        :class:`RegistryError` unless ``force=True`` (which replaces the old entry).
        """
        if callable(name):  # bare @REG.register
            return self._add(name.__name__, name, aliases, force)

        def decorator(obj: Callable) -> Callable:
            return self._add(name or obj.__name__, obj, aliases, force)

        return decorator

    def _add(self, name: str, obj: Callable, aliases: Iterable[str], force: bool) -> Callable:
        for key in (name, *aliases):
            taken = key in self._entries or key in self._aliases
            if taken and not force:
                existing = self._entries.get(key) or self._entries[self._aliases[key]]
                raise RegistryError(
                    f"{self.kind}: '{key}' is already registered "
                    f"(by {existing.__module__}.{existing.__qualname__}); pass force=True to replace it")
        self._entries[name] = obj
        self._aliases.pop(name, None)
        for alias in aliases:
            self._aliases[alias] = name
        obj._registry_name = name  # lets a built object report the name it was built from
        return obj

    # ------------------------------------------------------------------ lookup
    def _canonical(self, name: str) -> str | None:
        if name in self._entries:
            return name
        return self._aliases.get(name)

    def get(self, name: str) -> Callable:
        """Return the registered class/function; raise RegistryError with close matches if unknown."""
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind}: expected a name (string), got {type(name).__name__}")
        key = self._canonical(name)
        if key is None:
            self.load_entry_points()
            key = self._canonical(name)
        if key is None:
            known = sorted([*self._entries, *self._aliases])
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} name '{name}'{hint} (see `openood-ext list {self.kind}`)")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self._canonical(name) is None:
            self.load_entry_points()
        return self._canonical(name) is not None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names (not aliases) matching a shell wildcard pattern, sorted."""
        self.load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def describe(self, name: str) -> str:
        """First line of the entry's docstring (empty if it has none)."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    # ------------------------------------------------------------------ building
    def check(self, cfg: Any, **extra: Any) -> tuple[Callable, dict]:
        """Validate ``"name"`` or ``{"name": ..., **kwargs}`` without building: ``(factory, kwargs)``.

        Raises ConfigError/RegistryError (one line) for a missing or unknown name, a keyword the entry
        does not accept, a missing required argument, a value of the wrong type or out of its declared
        range, an entry lacking a method of ``self.required``, or a value its class's
        ``check_config(kwargs)`` (a static or class method raising ValueError: rules joining several
        arguments, such as ``min <= max``) refuses. ``extra`` adds kwargs.
        """
        if isinstance(cfg, str):
            name, kwargs = cfg, {}
        elif isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
            kwargs = _to_plain_dict(cfg)
            if "name" not in kwargs:
                raise ConfigError(f"{self.kind}: config {kwargs} has no 'name' key")
            name = kwargs.pop("name")
        else:
            raise ConfigError(f"{self.kind}: expected a name or a mapping with 'name', got {cfg!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind}: 'name' must be a non-empty string, got {name!r}")
        kwargs.update(extra)
        factory = self.get(name)
        if inspect.isclass(factory):
            missing = [m for m in self.required if not callable(getattr(factory, m, None))]
            if missing:
                raise RegistryError(
                    f"{self.kind} '{name}' ({factory.__module__}.{factory.__qualname__}) lacks "
                    f"{', '.join(m + '()' for m in missing)}, which every {self.kind} entry must have")
        check_arguments(f"{self.kind} '{name}'", factory, kwargs)
        rule = getattr(factory, "check_config", None)  # a rule joining several arguments (a min <= max pair)
        if callable(rule):
            try:
                rule(kwargs)
            except ValueError as exc:
                raise ConfigError(f"{self.kind} '{name}': {exc}") from None
        return factory, kwargs

    def build(self, cfg: str | Mapping[str, Any], **extra: Any) -> Any:
        """Build an entry from ``"name"`` or ``{"name": ..., **kwargs}`` after :meth:`check`.

        Constructors that reject a value with ValueError/TypeError give a ConfigError naming the entry.
        """
        factory, kwargs = self.check(cfg, **extra)
        name = getattr(factory, "_registry_name", getattr(factory, "__name__", "?"))
        try:
            return factory(**kwargs)
        except (ValueError, TypeError) as exc:  # constructors reject bad argument values this way
            raise ConfigError(f"{self.kind} '{name}': {exc}") from exc

    # ------------------------------------------------------------------ plugins
    def load_home(self) -> None:
        """Import the package that registers the built-in entries, once."""
        if not self._home_loaded:
            self._home_loaded = True
            importlib.import_module(self.home)

    def load_entry_points(self) -> None:
        """Import the built-in parts, then the parts advertised in the entry-point group, once."""
        self.load_home()
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in (ep for group in self.entry_point_groups for ep in metadata.entry_points(group=group)):
            if self._canonical(ep.name) is not None:
                continue
            try:
                obj = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must say so, not vanish
                raise PluginError(
                    f"entry point '{ep.name} = {ep.value}' (group {ep.group}) "
                    f"failed to import: {_import_failure(exc)}") from exc
            if inspect.ismodule(obj):
                continue  # importing the module registered its parts
            if self._canonical(ep.name) is None:
                self._add(ep.name, obj, (), False)


def _to_plain_dict(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def import_plugins(modules: Iterable[str]) -> None:
    """Import the modules named in a config's ``plugins:`` list so that they register parts.

    A module not found on ``sys.path`` is looked for in the working directory too, so that
    ``openood-ext run`` finds a local plugin exactly as ``python main.py`` / ``python -m`` do; the working
    directory is on the path only while that import runs, so it never shadows an installed package.
    """
    for mod in modules or ():
        try:
            _import_from_path_or_cwd(mod)
        except (Exception, SystemExit) as exc:  # sys.exit() in a plugin must not end the run without a word
            raise PluginError(f"plugin module '{mod}' failed to import: {_import_failure(exc)}") from exc


def _import_from_path_or_cwd(module: str) -> None:
    try:
        importlib.import_module(module)
        return
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        cwd = os.getcwd()
        if exc.name not in (module, top) or cwd in sys.path or "" in sys.path:
            raise
    sys.path.insert(0, cwd)
    try:
        importlib.import_module(module)
    finally:
        sys.path.remove(cwd)


def _import_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) (a plugin module may only define and register parts)"
    return f"{type(exc).__name__}: {exc}"


def registries() -> dict[str, Registry]:
    """Every registry created so far (without importing any part)."""
    return dict(_ALL_REGISTRIES)


def registry_of(kind: str) -> Registry | None:
    """The registry of ``kind`` (or of an earlier name of it, e.g. ``synthesizers``), if it exists yet."""
    return _ALL_REGISTRIES.get(_KIND_ALIASES.get(kind, kind))
