"""The layout rules that code review would otherwise have to remember.

1. Importing `torchref` (any of its modules) loads no jax, flax, optax or orbax, and the configs
   load neither jax nor torch. Checked in fresh interpreters, by reading `sys.modules`.
2. Every `jaxml/` module has a `torchref/` twin at the same relative path, or is listed with the
   reason in `parity/UNMIRRORED.txt` (one `jaxml/path.py — reason` a line; `#` comments allowed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNMIRRORED = ROOT / "parity" / "UNMIRRORED.txt"
JAX_FAMILY = ("jax", "jaxlib", "flax", "optax", "orbax", "chex")
TORCH_FAMILY = ("torch",)
# Importing any module of the package runs jaxml/configs/__init__.py, which imports them all.
CONFIG_MODULES = ("jaxml.configs",)

LOADED = r"""
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
banned = tuple(sys.argv[1].split(","))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in banned})))
"""


def banned_loaded(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    """Top-level packages from `banned` that importing `modules` loads in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, ",".join(banned), *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"importing {modules} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def modules_of(package: str) -> list[str]:
    """Dotted names of every module under a top-level package directory."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_torchref_loads_no_jax() -> None:
    modules = modules_of("torchref")
    if banned_loaded(modules, JAX_FAMILY):  # name the culprits, one fresh interpreter each
        culprits = {m: found for m in modules if (found := banned_loaded([m], JAX_FAMILY))}
        pytest.fail(f"torchref modules that load the jax family: {culprits}")


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_configs_load_neither_jax_nor_torch(module: str) -> None:
    assert banned_loaded([module], JAX_FAMILY + TORCH_FAMILY) == [], module


def test_the_import_check_sees_jax() -> None:
    """Guards the check above: it must notice a module that does load jax."""
    assert banned_loaded(["jaxml.layers.attention"], JAX_FAMILY)


def mirror_problems(jaxml: set[str], torchref: set[str], unmirrored: str) -> list[str]:
    """What breaks the twin rule, given relative paths (`layers/moe.py`) on each side and the
    text of UNMIRRORED.txt."""
    problems, listed = [], {}
    for number, raw in enumerate(unmirrored.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, _, reason = (part.strip() for part in line.partition("—"))
        where = f"UNMIRRORED.txt:{number}: {path}"
        if not reason:
            problems.append(f"{where}: no reason given (write `jaxml/path.py — reason`)")
        if not path.startswith("jaxml/") or not path.endswith(".py"):
            problems.append(f"{where}: not a jaxml/ module path")
            continue
        module = path.removeprefix("jaxml/")
        if module in listed:
            problems.append(f"{where}: listed twice")
        listed[module] = number
        if module not in jaxml:
            problems.append(f"{where}: no such file")
        elif module in torchref:
            problems.append(f"{where}: has a twin torchref/{module}; remove the entry")
    for module in sorted(jaxml - torchref - set(listed)):
        problems.append(
            f"jaxml/{module} has no twin torchref/{module} and no entry in parity/UNMIRRORED.txt"
        )
    return problems


def relative_modules(package: str) -> set[str]:
    base = ROOT / package
    return {
        p.relative_to(base).as_posix() for p in base.rglob("*.py") if "__pycache__" not in p.parts
    }


def test_every_jaxml_module_has_a_twin_or_a_reason() -> None:
    problems = mirror_problems(
        relative_modules("jaxml"), relative_modules("torchref"), UNMIRRORED.read_text("utf-8")
    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("jaxml", "torchref", "unmirrored", "expected"),
    [
        ({"a.py"}, {"a.py"}, "", []),
        ({"a.py", "b.py"}, {"a.py"}, "jaxml/b.py — numpy only, shared", []),
        ({"a.py", "b.py"}, {"a.py"}, "# comment\n\n", ["jaxml/b.py has no twin"]),
        ({"a.py"}, set(), "jaxml/a.py", ["no reason given"]),
        ({"a.py"}, set(), "jaxml/a.py —   ", ["no reason given"]),
        ({"a.py"}, {"a.py"}, "jaxml/a.py — shared", ["has a twin torchref/a.py"]),
        ({"a.py"}, {"a.py"}, "jaxml/gone.py — old", ["no such file"]),
        ({"a.py"}, set(), "jaxml/a.py — x\njaxml/a.py — y", ["listed twice"]),
        ({"a.py"}, set(), "torchref/a.py — x", ["not a jaxml/ module path", "jaxml/a.py has"]),
    ],
)
def test_mirror_problems_catches_each_violation(
    jaxml: set[str], torchref: set[str], unmirrored: str, expected: list[str]
) -> None:
    problems = mirror_problems(jaxml, torchref, unmirrored)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem, problems
