"""Outputs never replace what is not ours, finished work is never deleted or mixed, and faults end in one
line: special files at output and checkpoint paths, reruns and resumes of an interrupted run, a full disk
during ``torch.save``, a read-only results folder, a plugin calling ``sys.exit``, SIGTERM to a sweep."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from ad_helpers import bench_spec, labelled, make_cfg  # noqa: F401  (labelled: fixture)
from conftest import MAIN_CONFIG, PLUGIN_SRC, REPO
from omegaconf import OmegaConf

import openood_ext.utils.io as io_mod
from openood_ext import cli as cli_module
from openood_ext.errors import ConfigError, OpenOODError
from openood_ext.networks import NETWORKS
from openood_ext.networks.checkpoint import save_checkpoint
from openood_ext.pipelines.ad import protocol as ad_mod
from openood_ext.pipelines.run_identity import check_unfinished
from openood_ext.runner import run_config
from openood_ext.sweep.command import plan_sweep, summary_path
from openood_ext.utils.io import write_json, write_stream, write_text, write_with

TRAIN_CONFIG = REPO / "configs" / "pipelines" / "train.yml"


def snapshot(root: Path) -> dict:
    """Every path under ``root``: its bytes, "dir", or what a special file is (never opened)."""
    out = {}
    for p in sorted(root.rglob("*")):
        mode = os.lstat(p).st_mode
        out[str(p.relative_to(root))] = (p.read_bytes() if stat.S_ISREG(mode) else
                                         "dir" if stat.S_ISDIR(mode) else (stat.S_IFMT(mode), os.readlink(p)
                                                                           if stat.S_ISLNK(mode) else None))
    return out


def one_line_error(capsys, argv, *fragments) -> str:
    code = cli_module.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("openood-ext: error:")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def special_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """A directory, a FIFO, a symbolic link (to a file that must stay as it is) and, where the process may
    make one, a character device like /dev/null: name -> (path, the word the error must say)."""
    tmp.mkdir(parents=True, exist_ok=True)
    made = {"directory": (tmp / "a_dir", "a directory"), "fifo": (tmp / "a_fifo", "a named pipe"),
            "symlink": (tmp / "a_link", "a symbolic link")}
    (tmp / "a_dir").mkdir()
    os.mkfifo(tmp / "a_fifo")
    (tmp / "precious.txt").write_text("precious")
    os.symlink(tmp / "precious.txt", tmp / "a_link")
    try:
        os.mknod(tmp / "a_null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        made["device"] = (tmp / "a_null", "a character device")
    except (OSError, AttributeError):
        pass
    return made


# ------------------------------------------------------------------------------------------ never replace
@pytest.mark.parametrize("writer", ["text", "json", "with", "stream"])
def test_writes_refuse_anything_but_a_regular_file(tmp_path, writer):
    write = {"text": lambda p: write_text(p, "x"), "json": lambda p: write_json(p, {"a": 1}),
             "with": lambda p: write_with(p, lambda tmp: tmp.write_text("x")),
             "stream": lambda p: write_stream(p, lambda fh: torch.save({"a": 1}, fh))}[writer]
    targets = special_files(tmp_path / "s")
    before = snapshot(tmp_path)
    for path, kind in targets.values():
        with pytest.raises(OpenOODError, match=f"{path} is {kind}") as exc:
            write(path)
        assert "\n" not in str(exc.value)
    assert snapshot(tmp_path) == before  # nothing replaced, no temporary file left
    write(tmp_path / "s" / "new.out")  # an absent path and a regular file are written
    write(tmp_path / "s" / "new.out")


def test_disk_full_during_torch_save_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 6})
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, {"name": "digits_cnn", "num_classes": 6})
    before = path.read_bytes()
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(io_mod, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    with pytest.raises(OpenOODError, match=f"could not write {path}: No space left on device") as exc:
        save_checkpoint(path, net, {"name": "digits_cnn", "num_classes": 6})
    assert "\n" not in str(exc.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_disk_full_during_training_state_save_then_resume_matches(tmp_path, monkeypatch, capsys):
    def args(name, *extra):
        return ["run", "--config", str(TRAIN_CONFIG), "trainer.epochs=3", f"output_dir={tmp_path / 'results'}",
                f"experiment={name}", f"network.checkpoint={tmp_path / name}.pt",
                f"benchmark.data_root={tmp_path / 'data'}", *extra]

    assert cli_module.main(args("straight")) == 0
    real_open = open
    saves = []

    def full_after_two_states(file, mode="r", *a, **k):
        if "wb" in mode and ".last.pt." in str(file):
            saves.append(file)
            if len(saves) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(io_mod, "open", full_after_two_states, raising=False)
    partial = tmp_path / "results" / "full.partial"
    one_line_error(capsys, args("full"), f"could not write {partial / 'last.pt'}: No space left on device")
    monkeypatch.undo()
    assert torch.load(partial / "last.pt", weights_only=False)["epoch"] == 2  # the previous state, intact
    assert json.loads((partial / "run.json").read_text())["status"] == "failed"
    assert cli_module.main(["run", "--resume", str(tmp_path / "results" / "full")]) == 0
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def digits_env(digits_run, tmp_path, monkeypatch):
    work, _ = digits_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(work / "data"))
    return work


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "dangling symlink"])
def test_checkpoint_path_that_is_not_a_file_is_refused_before_training(digits_env, tmp_path, capsys, kind):
    targets = special_files(tmp_path / "s")
    if kind == "dangling symlink":
        os.symlink(tmp_path / "s" / "gone.pt", tmp_path / "s" / "dangling")
        targets[kind] = (tmp_path / "s" / "dangling", "a symbolic link")
    if kind not in targets:
        pytest.skip("this process may not create a device node")
    path, word = targets[kind]
    before = snapshot(tmp_path)
    one_line_error(capsys, ["run", "--config", str(MAIN_CONFIG), f"network.checkpoint={path}", "train_if_missing=true"],
                   f"network.checkpoint {path} is {word}", "not a checkpoint file")
    assert snapshot(tmp_path) == before  # no results/ folder, nothing trained or replaced


def test_ad_score_and_leaderboard_outputs_at_special_files_are_refused(digits_env, tmp_path, capsys):
    targets = special_files(tmp_path / "s")
    (tmp_path / "imgs").mkdir()
    before = snapshot(tmp_path)
    for path, word in targets.values():
        one_line_error(capsys, ["ad-score", "--checkpoint", str(tmp_path / "any.pt"), "--folder",
                                str(tmp_path / "imgs"), "--out", str(path)], f"ad-score --out {path} is {word}")
        one_line_error(capsys, ["leaderboard", str(digits_env / "results"), "-o", str(path), "--format", "csv"], f"{path} is {word}")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------- never deleted or mixed
def test_interrupted_ad_run_is_neither_discarded_nor_resumed_under_other_settings(labelled, tmp_path, monkeypatch,
                                                                                  capsys):
    spec = bench_spec(labelled)
    ad = {"classes": [0, 1], "seeds": 1, "heatmaps": 0}
    ref = run_config(make_cfg(tmp_path, spec, ad, experiment="ref"))
    original = ad_mod.run_cell

    def killed_in_class_1(cfg, settings, ctx, cls, seed):
        if cls == 1:
            raise KeyboardInterrupt
        return original(cfg, settings, ctx, cls, seed)

    monkeypatch.setattr(ad_mod, "run_cell", killed_in_class_1)
    config = tmp_path / "ad.yml"
    config.write_text(yaml.safe_dump(OmegaConf.to_container(make_cfg(tmp_path, spec, ad, experiment="killed"))))
    assert cli_module.main(["run", "--config", str(config)]) == 130
    monkeypatch.setattr(ad_mod, "run_cell", original)
    capsys.readouterr()
    results = tmp_path / "results"
    partial = results / "killed.partial"
    assert (partial / "normal_0" / "seed_0" / "result.json").is_file()
    before = snapshot(tmp_path)

    one_line_error(capsys, ["run", "--config", str(config)], f"{partial} holds the finished work of an interrupted run (normal_0",
                   f"--resume {results / 'killed'}", "overwrite=true")
    one_line_error(capsys, ["run", "--resume", str(results / "killed"), "trainer.epochs=2", "ad.heatmaps=1"],
                   "settings differ", "ad.heatmaps, trainer.epochs", "overwrite=true")
    assert snapshot(tmp_path) == before  # the finished cell and config.yaml untouched

    assert cli_module.main(["run", "--resume", str(results / "killed"), "num_workers=0"]) == 0  # not an identity key
    out = json.loads((results / "killed" / "normal_0" / "seed_0" / "result.json").read_text())
    assert out == json.loads(before["results/killed.partial/normal_0/seed_0/result.json"])  # kept, not redone
    assert (results / "killed" / "config.yaml").read_bytes() == before["results/killed.partial/config.yaml"]
    per_class = json.loads((results / "killed" / "metrics.json").read_text())["per_class"]
    assert {str(c): v["auroc_mean"] for c, v in per_class.items()} == pytest.approx(ref["per_class"])  # uninterrupted


def test_only_overwrite_discards_the_finished_work_of_an_unfinished_run(tmp_path):
    cfg = make_cfg(tmp_path, {"name": "x"}, {}, experiment="again")
    partial = tmp_path / "results" / "again.partial"
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text("seed: 0\n")
    (partial / "log.txt").write_text("failed on a bad checkpoint\n")
    check_unfinished(cfg)  # nothing but bookkeeping: a run that failed before any work is started afresh
    (partial / "last.pt").write_bytes(b"state")
    with pytest.raises(ConfigError, match=r"holds the finished work of an unfinished run \(last.pt\)"):
        check_unfinished(cfg)
    cfg.overwrite = True
    check_unfinished(cfg)  # allowed: the run discards it on purpose


def test_a_second_sweep_keeps_the_first_summary(tmp_path):
    assert summary_path(tmp_path) == tmp_path / "sweep.json"
    (tmp_path / "sweep.json").write_text("{}")
    assert summary_path(tmp_path) == tmp_path / "sweep-2.json"
    (tmp_path / "sweep-2.json").write_text("{}")
    assert summary_path(tmp_path) == tmp_path / "sweep-3.json"


def test_a_sweep_resumes_its_interrupted_points_and_refuses_changed_ones(tmp_path, monkeypatch, digits_checkpoint):
    monkeypatch.chdir(tmp_path)
    fixed = [f"network.checkpoint={digits_checkpoint}", "cache_dir=null"]
    jobs, _, sweep_dir, cfgs = plan_sweep([str(MAIN_CONFIG)], ["seed=[0,1]", *fixed], str(tmp_path / "sw"))
    assert not any("resume=true" in job.argv for job in jobs)
    partial = sweep_dir / f"{jobs[0].name}.partial"
    partial.mkdir(parents=True)
    OmegaConf.save(cfgs[0], partial / "config.yaml")
    jobs, *_ = plan_sweep([str(MAIN_CONFIG)], ["seed=[0,1]", *fixed], str(tmp_path / "sw"))
    assert "resume=true" in jobs[0].argv and "resume=true" not in jobs[1].argv
    with pytest.raises(ConfigError, match="settings differ .* in batch_size"):
        plan_sweep([str(MAIN_CONFIG)], ["seed=[0,1]", "batch_size=7", *fixed], str(tmp_path / "sw"))


# ------------------------------------------------------------------------------------------------- faults
def test_read_only_results_folder_is_one_line(digits_env, tmp_path, capsys, monkeypatch, digits_checkpoint):
    results = tmp_path / "ro"
    results.mkdir()
    results.chmod(0o555)
    import openood_ext.pipelines.context as context_mod
    real_open = open

    def read_only(file, *a, **k):  # root ignores the mode bits: say what a read-only mount says
        if str(file).startswith(str(results)):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real_open(file, *a, **k)

    monkeypatch.setattr(context_mod, "open", read_only, raising=False)
    try:
        one_line_error(capsys, ["run", "--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
                                "cache_dir=null", f"output_dir={results}"], f"output_dir {results}", "not writable")
    finally:
        results.chmod(0o755)
    assert list(results.iterdir()) == []


def test_plugin_calling_sys_exit_is_one_line_naming_it(digits_env, tmp_path, capsys, monkeypatch, digits_checkpoint):
    (tmp_path / "quitter_plugin.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(capsys, ["run", "--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
                            "cache_dir=null", "plugins=[quitter_plugin]"],
                   "plugin module 'quitter_plugin'", "sys.exit(3)")
    assert not (tmp_path / "results").exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to see the sweep's jobs")
def test_sigterm_to_a_sweep_stops_its_jobs_exits_130_and_the_rerun_resumes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(PLUGIN_SRC)]),
           "OPENOOD_EXT_DATA": str(tmp_path / "data")}
    argv = [sys.executable, "-m", "openood_ext.cli", "sweep", "--config", str(TRAIN_CONFIG), "seed=[0,1]",
            "trainer.epochs=12", f"benchmark.data_root={tmp_path / 'data'}", "--jobs", "2",
            "--output-dir", str(tmp_path / "sw")]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    states = list((tmp_path / "sw").glob("*.partial/last.pt"))
    deadline = time.time() + 240
    while not states and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        states = list((tmp_path / "sw").glob("*.partial/last.pt"))
    assert states, proc.stderr.read() if proc.poll() is not None else "no job wrote an epoch state"
    jobs = _children(proc.pid)
    assert jobs
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read()
    if code == 0:
        pytest.skip("the jobs finished before SIGTERM arrived")
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert not [pid for pid in jobs if _alive(pid)], "the sweep left its jobs running"
    partials = list((tmp_path / "sw").glob("*.partial"))
    assert partials and all(json.loads((p / "run.json").read_text())["status"] == "interrupted" for p in partials
                            if (p / "run.json").exists())
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming training from" in "".join(p.read_text() for p in (tmp_path / "sw").glob("*/log.txt"))
