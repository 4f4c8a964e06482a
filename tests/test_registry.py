"""Registry: registration, building, lookup errors, wildcards, entry points and the plugins: key."""

from __future__ import annotations

import importlib
import sys
import uuid

import pytest

from conftest import PLUGIN_SRC, install_demo_plugin
from openood_ext.errors import ConfigError, PluginError, RegistryError
from openood_ext.registry import Registry, import_plugins


def fresh_registry() -> Registry:
    return Registry(f"widgets_{uuid.uuid4().hex[:8]}")


def test_register_build_get_and_aliases():
    reg = fresh_registry()

    @reg.register("knn", aliases=["deep_knn"])
    class KNN:
        """Nearest neighbours."""

        def __init__(self, k=50):
            self.k = k

    @reg.register
    def plain():
        return "built"

    assert reg.build({"name": "knn", "k": 7}).k == 7
    assert reg.build("knn").k == 50
    assert reg.build("deep_knn").k == 50
    assert reg.get("knn") is KNN and reg.build("plain") == "built"
    assert "knn" in reg and "deep_knn" in reg and "nope" not in reg and 3 not in reg
    assert reg.describe("knn") == "Nearest neighbours."
    assert reg.names() == ["knn", "plain"]  # aliases are not listed as names


def test_duplicate_name_raises_unless_forced():
    reg = fresh_registry()
    reg.register("a")(type("A", (), {}))
    with pytest.raises(RegistryError, match="'a' is already registered"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("b", aliases=["a"])(type("C", (), {}))
    replacement = type("D", (), {})
    reg.register("a", force=True)(replacement)
    assert reg.get("a") is replacement


def test_unknown_name_names_registry_and_close_matches():
    reg = fresh_registry()
    for n in ("knn", "kl_matching", "msp"):
        reg.register(n)(type(n, (), {}))
    with pytest.raises(RegistryError) as err:
        reg.get("knnn")
    msg = str(err.value)
    assert reg.kind in msg and "'knn'" in msg and "\n" not in msg
    with pytest.raises(RegistryError, match="unknown"):
        reg.build({"name": "zzz"})


def test_names_wildcards():
    reg = fresh_registry()
    for n in ("knn", "npos_knn", "msp", "mds", "mds_ensemble"):
        reg.register(n)(type(n, (), {}))
    assert reg.names("*knn*") == ["knn", "npos_knn"]
    assert reg.names("mds*") == ["mds", "mds_ensemble"]
    assert reg.names("m?p") == ["msp"]
    assert reg.names("x*") == []


def test_build_rejects_unknown_kwargs_and_bad_values():
    reg = fresh_registry()

    @reg.register("k")
    class K:
        def __init__(self, k=1):
            if k < 1:
                raise ValueError("k must be >= 1")

    with pytest.raises(ConfigError, match="does not accept 'kk'"):
        reg.build({"name": "k", "kk": 3})
    with pytest.raises(ConfigError, match="k must be >= 1"):
        reg.build({"name": "k", "k": 0})
    with pytest.raises(ConfigError, match="no 'name' key"):
        reg.build({"k": 3})


def test_builtin_postprocessor_contract():
    from openood_ext.postprocessors import POSTPROCESSORS
    assert {"msp", "ebo", "knn", "hsc"} <= set(POSTPROCESSORS.names())
    assert POSTPROCESSORS.build({"name": "knn", "k": 5}).k == 5
    assert "energy" in POSTPROCESSORS  # alias of ebo


def test_entry_points_are_discovered_lazily(tmp_path, monkeypatch):
    """A fresh registry finds parts advertised by an installed distribution's entry points."""
    kind = f"gadgets_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    dist = site / "gadget_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gadget_pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[openood_ext.{kind}]\nfancy = gadget_mod:Fancy\n")
    (site / "gadget_mod.py").write_text("class Fancy:\n    '''A fancy gadget.'''\n    def __init__(self, x=1):\n        self.x = x\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    reg = Registry(kind)
    assert reg._entries == {}  # nothing loaded before the first lookup
    assert reg.build({"name": "fancy", "x": 3}).x == 3
    assert reg.names() == ["fancy"]


def test_postprocessor_entry_points_from_demo_package(tmp_path, monkeypatch):
    """The demo package's entry points (a class, and a self-registering module) reach POSTPROCESSORS."""
    from openood_ext.postprocessors import POSTPROCESSORS
    install_demo_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    importlib.invalidate_caches()
    monkeypatch.setattr(POSTPROCESSORS, "_entry_points_loaded", False)
    assert "demo_maxlogit" in POSTPROCESSORS
    assert "demo_feature_norm" in POSTPROCESSORS  # registered by importing the module entry point
    assert POSTPROCESSORS.build({"name": "demo_maxlogit", "offset": 2.0}).offset == 2.0


def test_broken_entry_point_reports_its_error(tmp_path, monkeypatch):
    kind = f"broken_{uuid.uuid4().hex[:8]}"
    dist = tmp_path / "broken_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken_pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[openood_ext.{kind}]\nbad = openood_ext_demo_plugin.broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    importlib.invalidate_caches()
    with pytest.raises(PluginError, match="broken on purpose"):
        Registry(kind).get("anything")


def test_plugins_key_imports_modules(monkeypatch):
    from openood_ext.postprocessors import POSTPROCESSORS
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    import_plugins(["openood_ext_demo_plugin.config_plugin"])
    assert "demo_neg_msp" in POSTPROCESSORS
    with pytest.raises(PluginError, match="'openood_ext_demo_plugin.broken' failed to import: RuntimeError: demo plugin is broken"):
        import_plugins(["openood_ext_demo_plugin.broken"])
    with pytest.raises(PluginError, match="no_such_module_xyz"):
        import_plugins(["no_such_module_xyz"])
    sys.modules.pop("openood_ext_demo_plugin.broken", None)


def test_outlier_sources_have_one_registry_under_its_old_name_too(capsys):
    from openood_ext import cli
    from openood_ext.registry import registry_of
    from openood_ext.synthesizers import OUTLIER_SOURCES, SYNTHESIZERS

    assert SYNTHESIZERS is OUTLIER_SOURCES and OUTLIER_SOURCES.kind == "outlier_sources"
    assert registry_of("synthesizers") is OUTLIER_SOURCES is registry_of("outlier_sources")
    assert OUTLIER_SOURCES.entry_point_groups == ("openood_ext.outlier_sources", "openood_ext.synthesizers")
    assert cli.main(["list", "synthesizers"]) == 0  # the old kind name still lists them
    listed = {line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert {"npos", "confetti", "oe_images"} <= listed


def test_a_registry_loads_its_home_package_on_first_lookup():
    reg = Registry(f"widgets_{uuid.uuid4().hex[:8]}", home="openood_ext.postprocessors")
    assert not reg._home_loaded
    assert reg.names() == []  # the home registers into its own registries, not this one
    assert reg._home_loaded and "openood_ext.postprocessors" in sys.modules


def test_a_plugin_module_in_the_working_directory_is_found_without_shadowing(tmp_path, monkeypatch):
    name = f"local_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    import_plugins([name])  # as `openood-ext run` does: its script folder, not the working directory, is on the path
    assert sys.modules[name].LOADED
    assert str(tmp_path) not in sys.path  # only during that import
    with pytest.raises(PluginError, match=r"plugin module 'no_such_module_here' failed to import: ModuleNotFoundError"):
        import_plugins(["no_such_module_here"])
