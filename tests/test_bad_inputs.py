"""Catalogue of bad inputs: each exits with status 2 and one line naming the culprit, no traceback."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import MAIN_CONFIG, PLUGIN_SRC, REPO, cli
from openood_ext import cli as cli_module

IMGLISTS = REPO / "benchmark_imglist" / "digits"


@pytest.fixture
def env(digits_run, digits_checkpoint, tmp_path, monkeypatch):
    """Working directory for one case, with the already-materialised digits data and a trained checkpoint."""
    work, _ = digits_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(work / "data"))
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    return {"data": work / "data", "ckpt": digits_checkpoint, "tmp": tmp_path}


def run(capsys, *args):
    code = cli_module.main(["run", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("openood-ext: error:")]
    return code, errors, err


def assert_one_line_error(capsys, args, *fragments):
    code, errors, err = run(capsys, *args)
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def with_ckpt(env, *extra):
    return ["--config", str(MAIN_CONFIG), f"network.checkpoint={env['ckpt']}", "cache_dir=null", *extra]


def copy_benchmark(env):
    """Private copies of the digits image lists and images that a case may damage."""
    lists, data = env["tmp"] / "lists", env["tmp"] / "data"
    shutil.copytree(IMGLISTS, lists)
    shutil.copytree(env["data"] / "digits", data / "digits")
    return lists, data


def test_malformed_yaml(env, capsys):
    bad = env["tmp"] / "bad.yml"
    bad.write_text("pipeline: test_ood\npostprocessors: [msp\nseed: 1\n")
    assert_one_line_error(capsys, ["--config", str(bad)], f"{bad}:", "malformed YAML")


def test_unknown_key(env, capsys):
    bad = env["tmp"] / "typo.yml"
    bad.write_text("_base_: [" + str(MAIN_CONFIG) + "]\nbatchsize: 12\n")
    assert_one_line_error(capsys, ["--config", str(bad)], "'batchsize'", "'batch_size'")


def test_mistyped_override(env, capsys):
    assert_one_line_error(capsys, with_ckpt(env, "trainer.epochz=3"), "trainer.epochz", "trainer.epochs")


def test_wrong_type_of_value(env, capsys):
    assert_one_line_error(capsys, with_ckpt(env, "batch_size=lots"), "batch_size", "expected int")
    bad = env["tmp"] / "seed.yml"
    bad.write_text("_base_: [" + str(MAIN_CONFIG) + "]\nseed: [1, 2]\n")
    assert_one_line_error(capsys, ["--config", str(bad)], "'seed'", "expected int")


def test_unknown_registry_name_suggests(env, capsys):
    assert_one_line_error(capsys, with_ckpt(env, "postprocessors=[msp,knnn]"),
                          "unknown postprocessors name 'knnn'", "'knn'")


def test_missing_config_file(env, capsys):
    assert_one_line_error(capsys, ["--config", "nope/missing.yml"], "nope/missing.yml: config file not found")


def test_missing_checkpoint(env, capsys):
    assert_one_line_error(capsys, ["--config", str(MAIN_CONFIG), "network.checkpoint=gone.pt", "train_if_missing=false"],
                          "gone.pt: checkpoint not found")


def test_corrupt_checkpoint(env, capsys):
    bad = env["tmp"] / "corrupt.pt"
    bad.write_bytes(env["ckpt"].read_bytes()[:500])
    assert_one_line_error(capsys, ["--config", str(MAIN_CONFIG), f"network.checkpoint={bad}"],
                          f"{bad}: not a readable checkpoint")


def test_checkpoint_of_other_architecture_or_classes(env, capsys):
    from openood_ext.networks import NETWORKS
    from openood_ext.networks.checkpoint import save_checkpoint
    other = env["tmp"] / "lenet.pt"
    save_checkpoint(other, NETWORKS.build({"name": "lenet", "num_classes": 6}), {"name": "lenet"})
    assert_one_line_error(capsys, ["--config", str(MAIN_CONFIG), f"network.checkpoint={other}"],
                          f"{other}: checkpoint does not fit network DigitsCNN")
    four = env["tmp"] / "four.pt"
    save_checkpoint(four, NETWORKS.build({"name": "digits_cnn", "num_classes": 4}), {"name": "digits_cnn"})
    assert_one_line_error(capsys, ["--config", str(MAIN_CONFIG), f"network.checkpoint={four}"],
                          "fc.weight has shape (4, 128)", "expects (6, 128)")


def test_imglist_line_without_label(env, capsys):
    lists, _ = copy_benchmark(env)
    path = lists / "test_far_textures.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    assert_one_line_error(capsys, with_ckpt(env, f"benchmark.imglist_dir={lists}"),
                          f"{path}:5: expected '<path> <label>'")


def test_missing_image(env, capsys):
    lists, data = copy_benchmark(env)
    victim = (lists / "test_digits.txt").read_text().splitlines()[2].split()[0]
    (data / victim).unlink()
    assert_one_line_error(capsys, with_ckpt(env, f"benchmark.imglist_dir={lists}", f"benchmark.data_root={data}"),
                          f"{data / victim}: missing image", "test_digits.txt:3")


def test_truncated_image_fails_or_is_skipped_and_counted(env, capsys):
    lists, data = copy_benchmark(env)
    victim = (lists / "test_far_photos.txt").read_text().splitlines()[9].split()[0]
    (data / victim).write_bytes((data / victim).read_bytes()[:30])
    args = with_ckpt(env, f"benchmark.imglist_dir={lists}", f"benchmark.data_root={data}")
    assert_one_line_error(capsys, args, f"{data / victim}: unreadable image", "test_far_photos.txt:10")
    code, errors, err = run(capsys, *args, "benchmark.on_bad_image=skip", "experiment=skipping")
    assert code == 0 and not errors, err
    import json
    summary = json.loads((env["tmp"] / "results/skipping/metrics.json").read_text())
    assert summary["skipped_images"] == {"photos": 1}
    assert summary["postprocessors"]["msp"]["sets"]["photos"]["n"] == 299


def test_grayscale_into_rgb_network_is_converted(env, capsys):
    code, errors, err = run(capsys, "--config", str(MAIN_CONFIG), "benchmark.preprocessor.channels=3",
                            "benchmark.preprocessor.mean=[0.25,0.25,0.25]", "benchmark.preprocessor.std=[0.33,0.33,0.33]",
                            f"network.checkpoint={env['tmp'] / 'rgb.pt'}", "trainer.epochs=1", "cache_dir=null")
    assert code == 0 and not errors, err


def test_empty_ood_set(env, capsys):
    lists, _ = copy_benchmark(env)
    (lists / "test_far_textures.txt").write_text("")
    assert_one_line_error(capsys, with_ckpt(env, f"benchmark.imglist_dir={lists}"),
                          "test_far_textures.txt: image list of OOD set 'textures' is empty")


def test_postprocessor_producing_nan(env, capsys):
    assert_one_line_error(capsys, with_ckpt(env, "plugins=[openood_ext_demo_plugin.config_plugin]",
                                            "postprocessors=[demo_nan]"),
                          "postprocessor 'demo_nan'", "'id_test'", "NaN")


def test_data_root_not_writable(env, capsys, monkeypatch):
    blocker = env["tmp"] / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.delenv("OPENOOD_EXT_DATA")
    assert_one_line_error(capsys, with_ckpt(env, f"benchmark.data_root={blocker / 'data'}"),
                          f"data_root {blocker / 'data'}: cannot write there")


def test_disk_full_during_results_write_keeps_the_complete_result(env, capsys, monkeypatch):
    code, _, err = run(capsys, *with_ckpt(env, "experiment=keep"))
    assert code == 0, err
    final = env["tmp"] / "results" / "keep"
    before = (final / "metrics.csv").read_text()
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("metrics.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert_one_line_error(capsys, with_ckpt(env, "experiment=keep", "postprocessors=[ebo]", "overwrite=true"),
                          "metrics.json: No space left on device")
    monkeypatch.undo()
    assert (final / "metrics.csv").read_text() == before  # the complete result is untouched
    import json
    assert json.loads((final / "run.json").read_text())["status"] == "complete"
    assert json.loads((env["tmp"] / "results/keep.partial/run.json").read_text())["status"] == "failed"


def test_plugin_that_fails_to_import_shows_its_own_error(env, capsys):
    assert_one_line_error(capsys, with_ckpt(env, "plugins=[openood_ext_demo_plugin.broken]"),
                          "plugin module 'openood_ext_demo_plugin.broken' failed to import",
                          "RuntimeError: demo plugin is broken on purpose")


def test_real_process_exit_status_and_no_traceback(tmp_path):
    proc = cli("--config", str(MAIN_CONFIG), "postprocessors=[mps]", "train_if_missing=false", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("openood-ext: error: unknown postprocessors name 'mps'")
    assert "Traceback" not in proc.stderr
    debug = cli("--config", str(MAIN_CONFIG), "postprocessors=[mps]", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
