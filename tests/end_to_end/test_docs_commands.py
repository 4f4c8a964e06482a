"""Every command the documentation shows runs as written (docs/contributing.md, "Runnable code blocks").

Collected:

* fenced blocks of README.md and docs/**/*.md preceded by ``<!-- runnable -->`` (shell: every command in the
  block; python: the whole block, executed in a temporary directory);
* the commands in the leading comment block of configs/**/*.yml and scripts/*.sh (``python main.py --config
  ...``, ``scripts/x.sh ...``, ``openood-ext ...``), and ``Short CPU run: ... OVERRIDES`` lines, where
  ``...`` stands for ``python main.py --config <that config>``.

How each shell command is checked (the default part, fast; no data, no training):

* a run (``python main.py``, ``openood-ext run|sweep``, ``torchrun ... main.py``, or a script that ends in
  ``exec python main.py --config X "$@"``): its configs and overrides resolve (``load_config``) and pass the
  whole pre-run check (``validate_run``), exactly as the command line parses them; a sweep axis
  ``key=[a,b]`` is checked at its first value. A config that needs data absent here (ImageNet-30, MVTec)
  must fail with the one-line DataError that names the data; nothing else may fail.
* ``openood-ext <command>``: the command exists; ``list`` and ``data status`` run for real.
* ``python -m module``: the module exists; ``python scripts/x.py`` / ``bash scripts/x.sh``: the file exists
  (shell scripts also pass ``bash -n``).
* environment set-up (``pip install``, ``python3 -m venv``, ``. .venv/bin/activate``, ``cd``) and the
  test suite itself (``python -m pytest``) are not run.

A command that matches none of these rules fails the test: a new kind of command needs a rule here.
The slow part (``-m slow``) runs the ``digits`` runs of runnable blocks and the custom-folder (``ad_folder``)
commands for real, with 1 training epoch (1 class, 1 seed) into a temporary directory.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
#: configs whose validation needs data that is not shipped (the error must be a DataError naming it)
NEEDS_DATA = ("ad_imagenet30_", "ad_mvtec_")
SETUP = (("pip",), ("python3", "-m", "venv"), ("python", "-m", "venv"), (".",), ("source",), ("cd",))
RUN_ENTRIES = ("main.py",)


@dataclass(frozen=True)
class Command:
    where: str          # file:line
    text: str           # the command as shown (continuations joined)

    def __str__(self):
        return f"{self.where}: {self.text}"


# ------------------------------------------------------------------------------------------- collection
def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def fenced_blocks(path: Path):
    """(line, marker or None, language, code) of every fenced block; the marker is the HTML comment on the
    last non-blank line before the fence."""
    lines = path.read_text().split("\n")
    i, last = 0, None
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            start, lang, body = i + 1, m.group(2), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i][len(m.group(1)):])
                i += 1
            marker = MARKER.match(last or "")
            yield start, (marker.group(1) if marker else None), lang, "\n".join(body)
            last = None
        elif lines[i].strip():
            last = lines[i].strip()
        i += 1


def shell_commands(code: str, where: str, first_line: int) -> list[Command]:
    """Commands of a shell block: continuations joined, comments dropped, ``a && b`` split."""
    out, buf, start = [], "", None
    for k, line in enumerate(code.split("\n")):
        if start is None:
            start = k
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        tokens = shlex.split(buf, comments=True)
        if tokens:
            for part in " ".join(shlex.quote(t) for t in tokens).split(" '&&' "):
                out.append(Command(f"{where}:{first_line + start + 1}", part))
        buf, start = "", None
    return out


def runnable_blocks():
    for path in doc_files():
        rel = path.relative_to(REPO)
        for line, marker, lang, code in fenced_blocks(path):
            if marker == "runnable":
                yield f"{rel}:{line}", lang, code


def doc_shell_commands() -> list[Command]:
    cmds = []
    for where, lang, code in runnable_blocks():
        if lang in ("bash", "sh", "shell", ""):
            file, line = where.rsplit(":", 1)
            cmds += shell_commands(code, file, int(line))
    return cmds


def header_commands() -> list[Command]:
    """Commands in the leading comment block of every config and script."""
    cmds = []
    files = sorted((REPO / "configs").rglob("*.yml")) + sorted((REPO / "scripts").glob("*.sh"))
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        header = []
        for line in path.read_text().split("\n"):
            if line.startswith("#!"):
                continue
            if not line.startswith("#"):
                break
            header.append(line[1:])
        i = 0
        while i < len(header):
            line, no = header[i].strip(), i + 1
            short = re.match(r"Short CPU run:\s*\.\.\.\s+(.*)$", line)
            text = None
            if short:
                text = f"python main.py --config {rel} {short.group(1)}"
            elif re.match(r"^(nice -n \d+ )?(python main\.py|scripts/\S+\.sh|openood-ext )", line):
                text = line
            if text is not None:
                while text.rstrip().endswith("\\") and i + 1 < len(header):
                    i += 1
                    text = text.rstrip()[:-1] + " " + header[i].strip()
                text = re.split(r"\s{2,}\(", text)[0]          # a trailing "   (explanation)"
                cmds += shell_commands(text, rel, no - 1)
            i += 1
    return cmds


# ------------------------------------------------------------------------------------------ placeholders
@pytest.fixture(scope="module")
def placeholders(tmp_path_factory):
    """Stand-ins for the docs' placeholders: a small folder in ad_folder's layout (the synthetic defect
    set), an OE folder, the demo configs of the sweep examples."""
    from openood_ext.synthesizers.defects import make_defect_set
    root = tmp_path_factory.mktemp("docs_placeholders")
    folder = root / "ad_folder"
    make_defect_set(folder, size=32, channels=3, n_train=8)
    oe = next(p.parent for p in sorted(folder.rglob("*.png")) if p.parent.name == "normal")
    return {"DIR": str(folder), "OE_DIR": str(oe), "a.yml": "configs/pipelines/test_ood.yml",
            "b.yml": "configs/trainers/oe_digits.yml", "my.yml": "configs/pipelines/test_ood.yml"}


def substitute(tokens: list[str], subs: dict) -> list[str]:
    out = []
    for tok in tokens:
        for key, value in subs.items():
            tok = re.sub(rf"(?<![\w./-]){re.escape(key)}(?![\w.-])", value, tok)
        out.append(tok)
    return out


# ---------------------------------------------------------------------------------------------- checking
def strip_prefix(tokens: list[str]) -> list[str]:
    """Drop ``VAR=value``, ``nice -n N`` and ``time`` in front of a command."""
    while tokens:
        if re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
            tokens = tokens[1:]
        elif tokens[0] == "nice":
            tokens = tokens[3:] if len(tokens) > 2 and tokens[1] == "-n" else tokens[1:]
        elif tokens[0] == "time":
            tokens = tokens[1:]
        else:
            return tokens
    return tokens


def run_args(tokens: list[str]) -> tuple[str, list[str]] | None:
    """('run' | 'sweep', the arguments after the entry point) for a command that starts a run."""
    if tokens[:2] in (["python", "main.py"], ["python3", "main.py"]):
        return "run", tokens[2:]
    if tokens[0] == "torchrun":
        i = next((k for k, t in enumerate(tokens) if t in RUN_ENTRIES), None)
        assert i is not None, "torchrun without main.py"
        return "run", tokens[i + 1:]
    if tokens[0] == "openood-ext" and len(tokens) > 1 and tokens[1] in ("run", "sweep"):
        return tokens[1], tokens[2:]
    if re.match(r"^(bash )?scripts/\S+\.sh$", " ".join(tokens[:2]) if tokens[0] == "bash" else tokens[0]):
        script = REPO / (tokens[1] if tokens[0] == "bash" else tokens[0])
        m = re.search(r'^\s*exec python main\.py --config (\S+) "\$@"\s*$', script.read_text(), re.M)
        if m and "$" not in m.group(1):
            rest = tokens[2:] if tokens[0] == "bash" else tokens[1:]
            return "run", ["--config", m.group(1), *rest]
    return None


def first_axis_values(overrides: list[str]) -> list[str]:
    """A sweep's point at the first value of every axis; ``key=[[a,b]]`` is the list [a,b] for every job."""
    out = []
    for tok in overrides:
        key, _, value = tok.partition("=")
        if value.startswith("[[") and value.endswith("]]"):
            out.append(f"{key}={value[1:-1]}")
        elif value.startswith("[") and value.endswith("]") and "=" in tok:
            first = value[1:-1].split(",")[0].strip()
            out.append(f"{key}={first}")
        else:
            out.append(tok)
    return out


def check_run(kind: str, args: list[str]) -> None:
    from openood_ext.config import check_config_paths, cli_overrides, load_config, split_run_args
    from openood_ext.errors import DataError
    from openood_ext.pipelines.validation import validate_run
    # options of the sweep command itself are not config overrides
    clean, i = [], 0
    while i < len(args):
        if kind == "sweep" and args[i] in ("--jobs", "--backend", "--backend-option", "--output-dir"):
            i += 2
            continue
        clean.append(args[i])
        i += 1
    configs, rest, resume = split_run_args(clean)
    if resume is not None:
        assert not configs, "--resume takes no --config"
        return
    assert configs, "a run without --config"
    check_config_paths(configs)
    overrides = cli_overrides(rest)
    if kind == "sweep":
        overrides = first_axis_values(overrides)
    cfg = load_config(configs, overrides)
    try:
        validate_run(cfg)
    except DataError:
        if not any(tag in c for c in configs for tag in NEEDS_DATA):
            raise


def check_command(cmd: Command, subs: dict) -> str:
    """Check one command; return how it was checked (for the summary)."""
    tokens = strip_prefix(substitute(shlex.split(cmd.text), subs))
    assert tokens, f"{cmd}: empty command"
    if tokens[:3] == ["python", "-m", "pytest"] or any(tokens[:len(s)] == list(s) for s in SETUP):
        return "setup (not run)"
    run = run_args(tokens)
    if run is not None:
        check_run(*run)
        return "config resolved and validated"
    if tokens[0] == "openood-ext":
        from openood_ext import cli
        assert len(tokens) > 1 and cli._lookup(tokens[1]) is not None, f"{cmd}: unknown openood-ext command"
        if tokens[1:3] == ["data", "status"] or tokens[1] == "list":
            assert cli.main(tokens[1:]) == 0, f"{cmd}: failed"
            return "ran"
        return "command exists"
    if tokens[:2] in (["python", "-m"], ["python3", "-m"]):
        import importlib.util
        assert importlib.util.find_spec(tokens[2]) is not None, f"{cmd}: no module {tokens[2]}"
        return "module exists"
    script = tokens[1] if tokens[0] in ("python", "bash") and len(tokens) > 1 else tokens[0]
    if re.match(r"^scripts/\S+\.(sh|py)$", script):
        path = REPO / script
        assert path.is_file(), f"{cmd}: no such script"
        if path.suffix == ".sh":
            assert tokens[0] == "bash" or os.access(path, os.X_OK), f"{cmd}: script is not executable"
            subprocess.run(["bash", "-n", str(path)], check=True)
        return "script exists"
    pytest.fail(f"{cmd}: no rule to test this command (tests/end_to_end/test_docs_commands.py)")


# ------------------------------------------------------------------------------------------------- tests
def test_markers_are_known():
    """A misspelt marker would silently leave its block untested."""
    for path in doc_files():
        for line, marker, _, _ in fenced_blocks(path):
            if marker is not None and re.match(r"^(not )?runn", marker):
                assert marker == "runnable" or marker.startswith("not runnable"), \
                    f"{path.relative_to(REPO)}:{line}: unknown marker <!-- {marker} -->"


def test_every_code_block_says_whether_it_runs():
    """Every shell or python block of README and the docs is marked runnable, or says why not; output and
    listings are ``text`` blocks."""
    for path in doc_files():
        if path.name == "architecture.md":
            continue
        for line, marker, lang, _ in fenced_blocks(path):
            if lang in ("bash", "sh", "shell", "python", ""):
                assert marker is not None, \
                    f"{path.relative_to(REPO)}:{line}: {lang or 'unlabelled'} block without <!-- runnable --> " \
                    "or <!-- not runnable: REASON --> (output: use ```text)"


def test_collection_finds_the_commands():
    docs, headers = doc_shell_commands(), header_commands()
    assert len(docs) >= 30, len(docs)
    assert any("ad_folder" in c.text for c in docs)
    assert any("ad_cifar10_eoe_dsvdd.yml" in c.where for c in headers)


@pytest.mark.parametrize("cmd", doc_shell_commands(), ids=str)
def test_doc_command(cmd, placeholders):
    check_command(cmd, placeholders)


@pytest.mark.parametrize("cmd", header_commands(), ids=str)
def test_header_command(cmd, placeholders):
    check_command(cmd, placeholders)


@pytest.mark.parametrize("where,code", [(w, c) for w, lang, c in runnable_blocks() if lang == "python"],
                         ids=lambda v: v if isinstance(v, str) and ":" in v else "")
def test_doc_python_block(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def digits_runs() -> list[Command]:
    """The docs' single-process runs on ``digits`` (torchrun runs: tests/test_distributed_slow.py), once each."""
    out, seen = [], set()
    for cmd in doc_shell_commands():
        tokens = strip_prefix(shlex.split(cmd.text))
        run = run_args(tokens) if tokens and tokens[0] != "torchrun" else None
        if run and run[0] == "run" and "--resume" not in run[1] and tuple(run[1]) not in seen and (
                "configs/pipelines/test_ood.yml" in run[1] or "configs/pipelines/train.yml" in run[1]):
            seen.add(tuple(run[1]))
            out.append(cmd)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("cmd", digits_runs(), ids=str)
def test_digits_run_for_real(cmd, tmp_path, placeholders):
    """The digits runs of the docs, for real: 1 training epoch, results and checkpoints in a temporary folder."""
    tokens = strip_prefix(substitute(shlex.split(cmd.text), placeholders))
    _, args = run_args(tokens)
    args = [a.replace("checkpoints/", f"{tmp_path}/") if a.startswith("network.checkpoint=") else a for a in args]
    if not any(a.startswith("network.checkpoint=") for a in args):
        args.append(f"network.checkpoint={tmp_path}/net.pt")
    args = [f"network.checkpoint={tmp_path}/{Path(a.split('=', 1)[1]).name}" if a.startswith("network.checkpoint=")
            else a for a in args]
    args += [f"output_dir={tmp_path}/results", "train_if_missing=true", "trainer.epochs=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in doc_shell_commands() if "ad_folder" in c.text], ids=str)
def test_ad_folder_command_for_real(cmd, tmp_path, placeholders):
    """The custom-folder commands of the FCDD and EOE pages, for real on the synthetic defect set:
    1 epoch, 1 seed, 1 class."""
    tokens = strip_prefix(substitute(shlex.split(cmd.text), placeholders))
    _, args = run_args(tokens)
    args += ["trainer.epochs=1", "ad.seeds=1", "ad.classes=[dots]", f"output_dir={tmp_path}/results"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"
    assert list((tmp_path / "results").rglob("metrics.json")), "no metrics written"
