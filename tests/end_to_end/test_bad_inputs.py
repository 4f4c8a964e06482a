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


# ------------------------------------------------------------------------------------------------------------
# Everything is validated before anything is created; results are never hidden, replaced or mixed.
DEFAULT_RUN = "results/digits_digits_cnn_test_ood_s0"


def snapshot(root):
    """Every path under ``root`` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def earlier(env, digits_run):
    """A complete earlier result in the case's working directory; returns its snapshot taker."""
    work, _ = digits_run
    shutil.copytree(work / DEFAULT_RUN, env["tmp"] / DEFAULT_RUN)
    return snapshot(env["tmp"])


def assert_rejected_without_trace(capsys, env, before, args, *fragments):
    """Exit 2, one stderr line naming the culprit, no traceback, no new path, earlier results byte-identical."""
    line = assert_one_line_error(capsys, args, *fragments)
    assert snapshot(env["tmp"]) == before, "the failed run left files behind or changed earlier results"
    return line


REJECTED_BEFORE_RUNNING = [
    (["postprocessors=[]"], ["postprocessors: list at least one"]),
    (["postprocessors=[{name: knn, k: -5}]"], ["postprocessors 'knn' argument 'k'", ">= 1", "-5"]),
    (["postprocessors=[{k: 5}]"], ["postprocessors[0]", "no 'name' key"]),
    (["benchmark.name=nope"], ["unknown benchmarks name 'nope'"]),
    (["postprocessors=[{name: knn, k: 2.5}]"], ["'k': expected int", "2.5"]),
    (["postprocessors=[{name: knn, k: true}]"], ["'k': expected int", "True"]),
    (["postprocessors=[{name: knn, APS: true, aps_grid: {k: [1, 0.5]}}]"], ["'k': expected int", "0.5"]),
    (["postprocessors=[{name: hsc, center: middle}]"], ["'center'", "'zero', 'fit'"]),
    (["postprocessors=[{name: ebo, temperature: 0}]"], ["'temperature'", "> 0"]),
    (["postprocessors=[msp,msp]"], ["'msp' is listed twice"]),
    (["postprocessors=[{name: vra, percentile_low: 95}]"], ["postprocessors 'vra'", "percentile_low (95) must be below"]),
    (["postprocessors=[{name: cfood, k: 0}]"], ["postprocessors 'cfood' argument 'k'", "> 0"]),
    (["postprocessors=[{name: gmm, alpha: [1]}]"], ["postprocessors 'gmm'", "lists of one length"]),
    (["evaluator=nope"], ["unknown evaluators name 'nope'"]),
    (["batch_size=0"], ["'batch_size'", ">= 1"]),
    (["batch_size=-3"], ["'batch_size'", ">= 1"]),
    (["batch_size=2.5"], ["batch_size", "int"]),
    (["num_workers=-1"], ["'num_workers'", ">= 0"]),
    (["seed=-1"], ["'seed'", ">= 0 and <= 4294967295"]),
    (["seed=4294967296"], ["'seed'", ">= 0 and <= 4294967295"]),
    (["device=tpu"], ["device: 'tpu'"]),
    (["experiment="], ["experiment: expected a non-empty name"]),
    (["experiment=sub/run"], ["experiment 'sub/run'", "one directory name"]),
    (["experiment=../x"], ["experiment '../x'"]),
    (["experiment=."], ["experiment '.'"]),
    (["experiment=.hidden"], ["experiment '.hidden'"]),
    (["network.num_classes=4"], ["network.num_classes (4) differs from benchmark.num_classes (6)"]),
    (["network.width=0.5"], ["networks 'digits_cnn' argument 'width'", "expected int"]),
    (["benchmark.num_classes=six"], ["benchmark.num_classes", "expected int"]),
    (["benchmark.on_bad_image=ignore"], ["on_bad_image"]),
]


@pytest.mark.parametrize("overrides, fragments", REJECTED_BEFORE_RUNNING, ids=lambda v: str(v)[:40])
def test_bad_values_are_rejected_before_anything_is_created(env, earlier, capsys, overrides, fragments):
    assert_rejected_without_trace(capsys, env, earlier, with_ckpt(env, *overrides), *fragments)


def test_training_settings_are_checked_before_training(env, earlier, capsys):
    missing = ["--config", str(MAIN_CONFIG), f"network.checkpoint={env['tmp'] / 'new.pt'}", "cache_dir=null"]
    assert_rejected_without_trace(capsys, env, earlier, [*missing, "trainer.epochs=0"], "trainer.epochs", ">= 1")
    assert_rejected_without_trace(capsys, env, earlier, [*missing, "trainer.batch_size=0"], "trainer.batch_size")
    train_cfg = REPO / "configs" / "pipelines" / "train.yml"
    assert_rejected_without_trace(capsys, env, earlier, ["--config", str(train_cfg), "trainer.epochs=0"],
                                  "trainer.epochs")


def test_files_in_the_way_of_directories(env, earlier, capsys):
    blocker = env["tmp"] / "a_file"
    blocker.write_text("x")
    before = snapshot(env["tmp"])
    assert_rejected_without_trace(capsys, env, before, with_ckpt(env, f"cache_dir={blocker}"),
                                  f"cache_dir {blocker}", "is a file")
    assert_rejected_without_trace(capsys, env, before, with_ckpt(env, f"output_dir={blocker}/out"),
                                  f"output_dir {blocker}/out", "is a file")


def test_messages_point_at_the_cause(env, earlier, capsys):
    configs = REPO / "configs" / "pipelines"
    assert_rejected_without_trace(capsys, env, earlier, ["--config", str(configs)], f"{configs}: is a directory")
    assert_rejected_without_trace(capsys, env, earlier, ["--config", str(MAIN_CONFIG), "seed5"],
                                  "'seed5'", "did you mean seed=5?")
    assert_rejected_without_trace(capsys, env, earlier, with_ckpt(env, "benchmark=cifar11"),
                                  "unknown benchmark 'cifar11'", "did you mean 'cifar10'?")
    assert cli_module.main(["list", "postprocessor"]) == 2
    assert "did you mean 'postprocessors'?" in capsys.readouterr().err
    assert cli_module.main(["list", "postprocessors", "zzz*"]) == 0
    assert "no parts match 'zzz*'" in capsys.readouterr().err
    assert cli_module.main(["leaderboard", "results", "-o", "x.xlsx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported output format '.xlsx'" in err[0]
    assert not (env["tmp"] / "x.xlsx").exists()


def test_label_outside_the_classes_names_file_and_line(env, earlier, capsys):
    lists, _ = copy_benchmark(env)
    path = lists / "test_digits.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 99"
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(env["tmp"])
    assert_rejected_without_trace(capsys, env, before, with_ckpt(env, f"benchmark.imglist_dir={lists}"),
                                  f"{path}:3: label 99 is outside 0..5")


def test_replacing_a_complete_result_needs_the_same_config_or_overwrite(env, earlier, capsys, caplog):
    args = with_ckpt(env, "postprocessors=[msp,{name: knn, k: 5}]")  # not the earlier run's config
    assert_rejected_without_trace(capsys, env, earlier, args, DEFAULT_RUN, "another configuration",
                                  "postprocessors", "overwrite=true")
    code, errors, err = run(capsys, *args, "overwrite=true")
    assert code == 0 and not errors, err
    assert f"replacing the earlier complete result in {DEFAULT_RUN} (overwrite=true)" in err
    final = env["tmp"] / DEFAULT_RUN
    import json
    assert json.loads((final / "metrics.json").read_text())["postprocessors"]["knn"]["hyperparameters"]["k"] == 5
    code, errors, err = run(capsys, *args)  # the same configuration again: replaced, and said so
    assert code == 0 and "(same configuration)" in err, err
    # result files follow the umask, the log holds what the console showed
    mask = os.umask(0o022)
    os.umask(mask)
    assert (final / "metrics.csv").stat().st_mode & 0o777 == 0o666 & ~mask
    log = (final / "log.txt").read_text()
    assert "ID accuracy and mean OOD metrics" in log and "test_ood: benchmark digits" in log
    # --resume of a complete run says so instead of running it again
    before = snapshot(env["tmp"])
    assert_rejected_without_trace(capsys, env, before, ["--resume", str(final)], "this run is complete")


def test_image_too_large_names_file_and_line(env, earlier, capsys, monkeypatch):
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 8x8 images exceed twice this: a decompression bomb
    line = assert_one_line_error(capsys, with_ckpt(env, "experiment=bomb"), "image too large to decode safely",
                                 "train_digits.txt:1")
    assert "bomb" in line or "pixels" in line
    after = snapshot(env["tmp"])
    assert {k: v for k, v in after.items() if k.startswith(DEFAULT_RUN)} == \
        {k: v for k, v in earlier.items() if k.startswith(DEFAULT_RUN)}
    assert not (env["tmp"] / "results/bomb").exists()  # a .partial at most, never a complete-looking result


def test_ood_set_with_only_unreadable_images_is_skipped_and_reported(env, capsys):
    lists, data = copy_benchmark(env)
    for img in (data / "digits" / "textures").glob("*.png"):
        img.write_bytes(b"not a png")
    code, errors, err = run(capsys, *with_ckpt(env, f"benchmark.imglist_dir={lists}", f"benchmark.data_root={data}",
                                               "benchmark.on_bad_image=skip", "experiment=allbad",
                                               "postprocessors=[msp]"))
    assert code == 0 and not errors, err
    import json
    summary = json.loads((env["tmp"] / "results/allbad/metrics.json").read_text())
    assert summary["skipped_sets"]["textures"]["reason"] == "all 300 images unreadable (on_bad_image=skip)"
    assert "skipping OOD set textures" in err


def test_image_list_with_bom_and_crlf(tmp_path):
    from openood_ext.datasets.imglist import read_imglist
    path = tmp_path / "list.txt"
    path.write_bytes("\ufeffa/b.png 0\r\nc d.png 1\r\n\r\n".encode("utf-8"))
    assert [(e.path, e.label, e.line) for e in read_imglist(path)] == [("a/b.png", 0, 1), ("c d.png", 1, 2)]


# ------------------------------------------------------------------------------------------ data prepare
def prepare_cli(capsys, *args):
    code = cli_module.main(["data", "prepare", *args])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("openood-ext")], err


def test_interrupted_extraction_is_not_reported_complete(tmp_path, capsys):
    from data_helpers import cifar_like_tars
    from openood_ext.datasets import prepare as prep
    train, test = cifar_like_tars(tmp_path)
    root = tmp_path / "data"
    prep.extract_image_archive(train, root / prep.IMAGE_DIR, limit=17)  # stands for a SIGTERM mid-copy
    code, lines, err = prepare_cli(capsys, "cifar10", "--root", str(root), "--from", str(test))
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "extracting c10_train.tar was interrupted" in lines[0] and f"--from {train}" in lines[0]
    assert not (root / "benchmark_imglist" / "cifar10" / "train_cifar10.txt").exists()
    assert "download" not in err.lower()  # --from given: nothing else is fetched
    code, lines, err = prepare_cli(capsys, "cifar10", "--root", str(root), "--from", str(train), "--from", str(test))
    assert code == 0, err  # rerunning with the archive completes it


def test_known_set_sizes_catch_an_incomplete_copy():
    from openood_ext.datasets.prepare import check_class_counts
    from openood_ext.errors import DataError
    full = [(f"x{i}", c) for c in range(10) for i in range(5000 if c < 9 else 2646)]
    with pytest.raises(DataError, match="class 9 has 2646 of 5000 images .47646 of 50000 in all."):
        check_class_counts("cifar10/train", full)
    check_class_counts("cifar10/train", [(f"x{i}", c) for c in range(10) for i in range(3)])  # a sample: fine


def test_sigterm_during_prepare_says_what_was_done_and_how_to_continue(tmp_path, capsys, monkeypatch):
    import signal
    from openood_ext.datasets import cli as data_cli
    from openood_ext.utils.interrupts import RunInterrupted

    def interrupted(*args, **kwargs):
        raise RunInterrupted(signal.SIGTERM)

    monkeypatch.setattr(data_cli, "prepare", interrupted)  # the name `openood-ext data prepare` calls
    code = cli_module.main(["data", "prepare", "cifar10", "--root", str(tmp_path), "--from", "x.tar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and "interrupted by SIGTERM" in err[0]
    assert "run the same command again: openood-ext data prepare cifar10 --root" in err[0]


def test_a_checkpoint_that_is_truncated_or_of_another_network_is_refused_before_the_run(env, earlier, capsys):
    truncated = env["tmp"] / "truncated.pt"
    truncated.write_bytes(env["ckpt"].read_bytes()[:2000])
    before = snapshot(env["tmp"])
    assert_rejected_without_trace(capsys, env, before, ["--config", str(MAIN_CONFIG), f"network.checkpoint={truncated}",
                                                        "cache_dir=null"], "truncated.pt", "not a readable checkpoint")
    assert_rejected_without_trace(capsys, env, before, with_ckpt(env, "network.width=8"),
                                  "does not fit network", "different architecture")
