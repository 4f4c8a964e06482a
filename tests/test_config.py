"""Config loading: merge order, _base_, overrides (both syntaxes), interpolation, typos, bad YAML."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from openood_ext.config import cli_overrides, load_config, load_yaml
from openood_ext.errors import ConfigError


def write(path, text):
    path.write_text(text)
    return path


def test_files_merge_left_to_right(tmp_path):
    a = write(tmp_path / "a.yml", "seed: 1\ntrainer: {name: base, epochs: 10, lr: 0.1}\npostprocessors: [msp]\n")
    b = write(tmp_path / "b.yml", "seed: 2\ntrainer: {epochs: 3}\n")
    cfg = load_config([a, b])
    assert cfg.seed == 2 and cfg.trainer.epochs == 3 and cfg.trainer.lr == 0.1 and cfg.trainer.name == "base"
    cfg = load_config([b, a])
    assert cfg.seed == 1 and cfg.trainer.epochs == 10


def test_base_files_are_merged_first(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "base.yml", "seed: 5\nexperiment: from_base\nvars: {x: 1}\n")
    top = write(tmp_path / "top.yml", "_base_: [sub/base.yml]\nexperiment: from_top\n")
    cfg = load_config([top])
    assert cfg.seed == 5 and cfg.experiment == "from_top" and "_base_" not in cfg


def test_overrides_replace_values_and_parse_yaml(tmp_path):
    a = write(tmp_path / "a.yml", "postprocessors: [msp]\nnetwork: {name: net, checkpoint: a.pt}\ntrainer: {lr: 0.1, epochs: 2}\n")
    cfg = load_config([a], ["postprocessors=[msp,knn]", "network.checkpoint=path/to.pt", "trainer.lr=1e-3",
                            "trainer.epochs=7"])
    assert list(cfg.postprocessors) == ["msp", "knn"]
    assert cfg.network.checkpoint == "path/to.pt"
    assert cfg.trainer.lr == pytest.approx(1e-3) and cfg.trainer.epochs == 7


def test_openood_style_double_dash_overrides(tmp_path):
    assert cli_overrides(["--network.checkpoint", "x.pt", "--seed=3", "trainer.lr=0.5"]) == [
        "network.checkpoint=x.pt", "seed=3", "trainer.lr=0.5"]
    a = write(tmp_path / "a.yml", "seed: 0\nnetwork: {checkpoint: a.pt}\n")
    cfg = load_config([a], cli_overrides(["--network.checkpoint", "x.pt", "--seed", "4"]))
    assert cfg.network.checkpoint == "x.pt" and cfg.seed == 4
    with pytest.raises(ConfigError, match="needs a value"):
        cli_overrides(["--seed"])
    with pytest.raises(ConfigError, match="not an override"):
        cli_overrides(["stray"])


def test_interpolation_resolves_after_overrides(tmp_path, monkeypatch):
    a = write(tmp_path / "a.yml", "seed: 0\nexperiment: run_s${seed}\nvars:\n  root: ${oc.env:MY_TEST_ROOT,fallback}\n")
    monkeypatch.delenv("MY_TEST_ROOT", raising=False)
    cfg = load_config([a], ["seed=3"])
    assert cfg.experiment == "run_s3" and cfg.vars.root == "fallback"
    monkeypatch.setenv("MY_TEST_ROOT", "/data")
    assert load_config([a]).vars.root == "/data"
    bad = write(tmp_path / "bad.yml", "experiment: ${nope.missing}\n")
    with pytest.raises(ConfigError, match="interpolation"):
        load_config([bad])


def test_mistyped_override_key_names_it_and_suggests(tmp_path):
    a = write(tmp_path / "a.yml", "trainer: {epochs: 2, lr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config([a], ["trainer.epoch=5"])
    assert "trainer.epoch" in str(err.value) and "'trainer.epochs'" in str(err.value)
    cfg = load_config([a], ["+trainer.warmup=5"])  # adding a key on purpose
    assert cfg.trainer.warmup == 5


def test_override_of_wrong_type(tmp_path):
    a = write(tmp_path / "a.yml", "trainer: {epochs: 2, nesterov: true}\n")
    with pytest.raises(ConfigError, match=r"override 'trainer.epochs': expected int, got 'many'"):
        load_config([a], ["trainer.epochs=many"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config([a], ["trainer.nesterov=3"])


def test_unknown_top_level_key(tmp_path):
    a = write(tmp_path / "a.yml", "postprocesors: [msp]\n")
    with pytest.raises(ConfigError, match="'postprocesors' is not known; did you mean 'postprocessors'"):
        load_config([a])


def test_malformed_yaml_gives_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.yml", "seed: 1\ntrainer:\n  epochs: [1, 2\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:") and "malformed YAML" in msg and "\n" not in msg
    line = int(msg.split(":")[1])
    assert 3 <= line <= 5


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml: config file not found"):
        load_config([tmp_path / "nope.yml"])
    lst = write(tmp_path / "list.yml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(lst)
    with pytest.raises(ConfigError, match="no config file"):
        load_config([])


def test_base_cycle_detected(tmp_path):
    write(tmp_path / "x.yml", "_base_: [y.yml]\n")
    write(tmp_path / "y.yml", "_base_: [x.yml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "x.yml")


def test_shipped_main_config_resolves():
    from conftest import REPO
    cfg = load_config([REPO / "configs/pipelines/test_ood.yml"], ["seed=2"])
    assert cfg.pipeline == "test_ood" and cfg.network.num_classes == cfg.benchmark.num_classes == 6
    assert cfg.experiment.endswith("_s2") and cfg.network.checkpoint.endswith("_s2.pt")
    assert OmegaConf.is_list(cfg.postprocessors)


def test_top_level_keys_are_the_run_keys_plus_every_pipelines_own_sections(tmp_path):
    from dataclasses import dataclass

    from openood_ext.config import RUN_KEYS, top_level_keys
    from openood_ext.pipelines import PIPELINES

    assert {"ad", "ad_sweep", "oe_search"} <= top_level_keys() and RUN_KEYS <= top_level_keys()
    assert not {"ad", "ad_sweep", "oe_search"} & RUN_KEYS  # declared by the AD pipelines, not by config.py
    cfg = write(tmp_path / "c.yml", "pipeline: test_ood\nmy_section: {depth: 3}\n")
    with pytest.raises(ConfigError, match="config key 'my_section' is not known"):
        load_config([cfg])

    @dataclass
    class MySettings:
        depth: int = 1

    @PIPELINES.register("pipeline_with_a_section_for_this_test", force=True)
    class WithSection:
        config_sections = {"my_section": MySettings}

        def __init__(self, cfg):
            self.cfg = cfg

        def run(self):
            return {}

    assert load_config([cfg]).my_section.depth == 3  # a plugin pipeline's section is known once registered
    bad = write(tmp_path / "d.yml", "pipeline: test_ood\nmy_section: 5\n")
    with pytest.raises(ConfigError, match="config key 'my_section': expected a mapping"):
        load_config([bad])


def test_run_keys_are_checked_against_their_declared_types_and_ranges(tmp_path):
    for text, message in (("seed: -1", "config key 'seed': expected int >= 0 and <= 4294967295, got -1"),
                          ("batch_size: 0", "config key 'batch_size': expected int >= 1, got 0"),
                          ("num_workers: 1.5", "config key 'num_workers': expected int, got 1.5"),
                          ("overwrite: 1", "config key 'overwrite': expected bool"),
                          ("pin_memory: sometimes", "config key 'pin_memory': expected bool")):
        with pytest.raises(ConfigError, match=message):
            load_config([write(tmp_path / "c.yml", f"pipeline: test_ood\n{text}\n")])


def test_the_old_synthesizer_key_says_where_outlier_sources_went(tmp_path):
    cfg = write(tmp_path / "c.yml", "pipeline: train\nsynthesizer: {name: npos}\n")
    with pytest.raises(ConfigError, match=r"'synthesizer' is no longer read: .*trainer\.outliers"):
        load_config([cfg])


def test_duplicate_yaml_key_names_the_key_and_line(tmp_path):
    """PyYAML's safe_load takes the last of two equal keys silently; OmegaConf refuses, and the message
    used to stop at 'while constructing a mapping'."""
    cfg = write(tmp_path / "dup.yml", "seed: 1\ntrainer:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(cfg)
    assert str(exc.value) == f"{cfg}:5: duplicate key 'epochs'"


def test_declared_section_keys_take_values_of_their_declared_type():
    """``ad.seeds: 1`` may become a list on the command line (ADSettings declares int | list); the type is
    checked against the declaration (by the section's schema), not against the value it replaces."""
    from openood_ext.pipelines.ad.settings import ADSettings
    from openood_ext.schema import check_section
    cfg = load_config(["configs/experiments/fcdd/ad_fmnist_fcdd.yml"], ["ad.seeds=[0,3]"])
    assert list(cfg.ad.seeds) == [0, 3]
    bad = load_config(["configs/experiments/fcdd/ad_fmnist_fcdd.yml"], ["ad.seeds=abc"])
    with pytest.raises(ConfigError, match="ad.seeds: expected int or a list, got 'abc'"):
        check_section("ad", ADSettings, OmegaConf.to_container(bad.ad))
    with pytest.raises(ConfigError, match="override 'trainer.epochs': expected int"):  # parts keep the check
        load_config(["configs/experiments/fcdd/ad_fmnist_fcdd.yml"], ["trainer.epochs=abc"])


def test_keys_of_a_section_taken_from_a_file_can_be_set_after_it(tmp_path):
    """``benchmark=cifar10`` replaces the section; the keys given after it (an OE set, a normal class) are
    set on the new section, not refused as unknown with a list of look-alikes."""
    cfg = load_config(["configs/experiments/eoe/ad_cifar10_eoe_bce.yml"],
                      ["benchmark=cifar10", "benchmark.normal_class=3", "benchmark.oe=other_oe.txt"])
    assert cfg.benchmark.normal_class == 3 and cfg.benchmark.oe == "other_oe.txt" and cfg.benchmark.name == "cifar10"
    with pytest.raises(ConfigError, match="no such key"):  # without the replacement the rule stands
        load_config(["configs/pipelines/train.yml"], ["benchmark.normal_clas=3"])
