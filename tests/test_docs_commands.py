"""The commands shown in README.md and docs/*.md exist as written.

Convention (also stated in docs/README.md):
- Every line of a fenced ```bash block is a command (a trailing backslash continues it; `#` starts
  a comment). In any other fenced block, a line starting with `$ ` is a command. In the prose, an
  inline code span that starts with `python -m` is a command.
- `python -m MODULE ...` (also `.venv/bin/python`, after `VAR=value`, `taskset -c N`, `timeout N`):
  MODULE must exist, and every `--flag` written after it must be an option of the argparse parser
  that MODULE's command line builds (read by running the module with parsing intercepted).
- `make TARGET`: the target must be in the Makefile. `pytest PATH...`: every path must exist.
- A fenced block whose opening fence directly follows a line `<!-- run -->` is also executed
  (bash blocks with bash, python blocks with python) in a scratch directory that mirrors the
  repository through symlinks, so what it writes (runs/...) stays there; it must exit 0 within
  RUN_TIMEOUT seconds. Mark only quick blocks.
- Every relative link `[text](path#anchor)` points to a file that exists, and the anchor to one
  of its headings (GitHub's slugs).
Every failure names the file and line the command came from.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_MARK = "<!-- run -->"
RUN_TIMEOUT = 60
# A command line whose extra flags are passed on to another module's parser.
FORWARDS = {"experiments.sweep": "experiments.regression"}
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python"}
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    where: str
    text: str


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a markdown file, with its language and run mark."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))),
            len(lines),
        )
        runnable = i > 0 and lines[i - 1].strip() == RUN_MARK
        body = "\n".join(lines[i + 1 : end])
        blocks.append(Block(path, i + 1, fence.group(2), body, runnable))
        i = end + 1
    return blocks


def commands(block: Block) -> list[Command]:
    """The commands of a block, backslash continuations joined, with their source line."""
    out: list[Command] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        line = raw.rstrip()
        if block.lang != "bash":
            if line.startswith("$ "):
                out.append(Command(f"{block.path.relative_to(ROOT)}:{offset}", line[2:]))
            continue
        if not pending:
            start = offset
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if pending.strip() and not pending.lstrip().startswith("#"):
                out.append(Command(f"{block.path.relative_to(ROOT)}:{start}", pending.strip()))
            pending = ""
    return out


def words(command: str) -> list[str]:
    """The words of a command before any comment, pipe or redirect."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        tokens = command.split()
    cut = next((i for i, t in enumerate(tokens) if t in {"|", "||", "&&", ">", ";"}), len(tokens))
    return tokens[:cut]


def invocation(tokens: list[str]) -> list[str]:
    """The command's words without leading `VAR=value`, `taskset -c N`, `timeout N`;
    `python -m pytest` becomes `pytest`."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    while tokens and tokens[0] in {"taskset", "timeout"}:
        tokens = tokens[3:] if tokens[0] == "taskset" else tokens[2:]
    if tokens[:1] and tokens[0] in PYTHONS and tokens[1:3] == ["-m", "pytest"]:
        return ["pytest", *tokens[3:]]
    if tokens[:1] == [".venv/bin/pytest"]:
        return ["pytest", *tokens[1:]]
    return tokens


def python_module(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of a `python -m MODULE ...` command, else None."""
    tokens = invocation(tokens)
    if len(tokens) > 2 and tokens[0] in PYTHONS and tokens[1] == "-m":
        return tokens[2], tokens[3:]
    return None


def inline_commands(path: Path) -> list[Command]:
    """Inline code spans in the prose (outside fences) that start with `python -m`."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            for span in re.findall(r"`((?:\.venv/bin/)?python -m [^`]+)`", line):
                out.append(Command(f"{path.relative_to(ROOT)}:{number}", span))
    return out


ALL_BLOCKS = [b for path in DOCS for b in fenced_blocks(path)]
ALL_COMMANDS = [c for b in ALL_BLOCKS for c in commands(b)]
ALL_COMMANDS += [c for path in DOCS for c in inline_commands(path)]
MODULE_COMMANDS = [
    (c, found)
    for c in ALL_COMMANDS
    if (found := python_module(words(c.text))) and found[0] not in {"pip", "venv"}
]

# Runs each module as __main__ with argparse's parsing intercepted, and prints the options of the
# first parser it was about to use. One process for all modules, so jax and torch load once.
CAPTURE = r"""
import argparse, json, runpy, sys

seen = []

def intercept(self, args=None, namespace=None):
    # Record the options, then leave the way `--help` does: entry points that turn other
    # exceptions into an exit status 1 pass SystemExit(0) on untouched.
    seen.append(sorted(s for s in self._option_string_actions if s.startswith("--")))
    raise SystemExit(0)

argparse.ArgumentParser.parse_known_args = intercept
result = {}
for module in sys.argv[1:]:
    sys.argv, seen[:] = [module], []
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
    else:
        error = "the module ran without parsing any arguments"
    result[module] = {"flags": seen[0]} if seen else {"error": error}
print("CAPTURED " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def module_flags() -> dict[str, dict[str, list[str] | str]]:
    modules = sorted({m for _, (m, _) in MODULE_COMMANDS} | set(FORWARDS.values()))
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CAPTURED ")), None)
    assert line, f"flag capture failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(line.removeprefix("CAPTURED "))


def test_docs_show_commands() -> None:
    """Guards the extraction itself: the docs do show module commands, and some are run."""
    assert len(MODULE_COMMANDS) >= 10, [c.text for c, _ in MODULE_COMMANDS]
    assert any(b.runnable for b in ALL_BLOCKS)


@pytest.mark.parametrize(
    ("command", "found"), MODULE_COMMANDS, ids=[f"{c.where}" for c, _ in MODULE_COMMANDS]
)
def test_module_flags_exist(command: Command, found: tuple[str, list[str]], module_flags) -> None:
    module, args = found
    info = module_flags[module]
    assert "flags" in info, f"{command.where}: `{command.text}`: {module}: {info['error']}"
    allowed = set(info["flags"]) | {"--help"}
    if module in FORWARDS:
        allowed |= set(module_flags[FORWARDS[module]]["flags"])
    shown = FLAG.findall(" ".join(args))
    unknown = sorted({f for f in shown if f not in allowed})
    assert not unknown, (
        f"{command.where}: `{command.text}` uses {unknown}, which `python -m {module}` does not "
        f"accept (it has: {' '.join(sorted(allowed))})"
    )


def make_targets() -> set[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    return {m[1] for line in lines if (m := re.match(r"^([\w-]+):", line))}


OTHER_COMMANDS = [
    c for c in ALL_COMMANDS if invocation(words(c.text))[:1] in (["make"], ["pytest"])
]


@pytest.mark.parametrize("command", OTHER_COMMANDS, ids=[c.where for c in OTHER_COMMANDS])
def test_make_targets_and_test_paths_exist(command: Command) -> None:
    tokens = invocation(words(command.text))
    if tokens[0] == "make":
        targets = [t for t in tokens[1:] if not t.startswith("-") and "=" not in t]
        missing = sorted(set(targets) - make_targets())
        assert not missing, f"{command.where}: `{command.text}`: no Makefile target {missing}"
        return
    paths = [t.split("::")[0] for t in tokens[1:] if not t.startswith("-")]
    missing = [p for p in paths if not any(ROOT.glob(p))]
    assert not missing, f"{command.where}: `{command.text}`: no such test path {missing}"


RUNNABLE = [b for b in ALL_BLOCKS if b.runnable]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that looks like the repository (symlinks) but keeps its own outputs."""
    root = tmp_path_factory.mktemp("docs_run")
    for entry in ROOT.iterdir():
        if entry.name not in {"runs", ".git"}:
            (root / entry.name).symlink_to(entry)
    return root


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_runnable_blocks_succeed(block: Block, scratch: Path) -> None:
    assert block.lang in {"bash", "python"}, f"{block.where}: cannot run a `{block.lang}` block"
    program = ["bash", "-euo", "pipefail", "-c"] if block.lang == "bash" else [sys.executable, "-c"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [*program, block.text],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{block.where}: the `{block.lang}` block marked {RUN_MARK} exited {proc.returncode}\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if not fenced and (m := re.match(r"^#+ (.*)", line)):
            found.add(slug(m[1]))
    return found


LINKS = [
    (f"{path.relative_to(ROOT)}:{number}", path, target)
    for path in DOCS
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
    for target in re.findall(r"\]\(([^)\s]+)\)", line)
    if not re.match(r"^[a-z]+:", target)
]


@pytest.mark.parametrize(("where", "path", "target"), LINKS, ids=[w for w, _, _ in LINKS])
def test_relative_links_resolve(where: str, path: Path, target: str) -> None:
    file, _, anchor = target.partition("#")
    linked = (path.parent / file).resolve() if file else path
    assert linked.exists(), f"{where}: link to {target}: no such file"
    if anchor:
        assert anchor in anchors(linked), f"{where}: link to {target}: no heading #{anchor}"


def test_parity_tolerance_table_matches_the_harness() -> None:
    """docs/parity.md's table is the one in parity/harness.py, row for row."""
    from parity.harness import TOLERANCES

    shown: dict[tuple[str, str], float] = {}
    text = (ROOT / "docs" / "parity.md").read_text(encoding="utf-8")
    for dtype, devices, tol in re.findall(r"^\| (\w+) ([\w, ]+) \| ([\d.e-]+) \|", text, re.M):
        names = [d.strip() for d in devices.split(",")]
        if names == ["any"]:
            names = [dev for dt, dev in TOLERANCES if dt == dtype]
        shown.update({(dtype, name): float(tol) for name in names})
    actual = {key: t.atol for key, t in TOLERANCES.items()}
    assert all(t.atol == t.rtol for t in TOLERANCES.values()), "the table shows atol = rtol"
    assert shown == actual, f"docs/parity.md shows {shown}, parity/harness.py has {actual}"
