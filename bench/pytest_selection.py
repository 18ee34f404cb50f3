#!/usr/bin/env python3
"""Pytest selection benchmark for tim: recording cost, "nothing affected",
`tim affected` latency, and what one-line edits select, against pytest and
pytest-testmon.

Every number is printed next to a baseline measured in the same run, on the
same suite copy, with the same interpreter:

1. Recording cost: wall time of `tim run --all` (fresh `.tim/`, so the
   daemon's start and first scan are included) against plain
   `python -m pytest`, and `python -m pytest --testmon` recording from an
   empty `.testmondata`. Targets: tim <= 1.5x plain on Python 3.11, <= 1.2x
   on Python >= 3.12. As pytest's baseline runs with its rewritten test
   modules cached in `__pycache__`, tim's runs with its instrumented modules
   cached there (Python 3.11); the first tim recording in the checkout,
   which compiles them, is printed on its own.
2. Nothing affected: `tim run` right after a recording run with no change
   against `pytest --testmon` with no change. Target: <= 1/10 of testmon.
3. `tim affected --json` latency (whole client process, median of
   --latency-runs), against the process-spawn floor (`/bin/true`).
   Target: <= 10 ms on the generated 5,000-test suite.
4. One-line edits (a function body in a core module, a module-level
   constant, a comment): how many tests `tim affected` selects and how many
   `pytest --testmon` runs after the same edit, each from a fresh recording;
   the wall time of `tim run` against `pytest --testmon` for that edit; and
   whether every test that fails in a plain full run after the edit is
   selected by tim (and caught by testmon).

Suites: real projects from their PyPI sdists (toolz, sqlparse; dateutil
optional) and a generated project (50 modules x 100 tests). Each suite gets
three copies under /tmp (one per tool, so `.testmondata` and `.tim/` never
meet), each a git repository with its own `TIM_RUNTIME_DIR`.

Interpreters: Python 3.11 from a virtualenv made with the host's python3.11
(/tmp/tim-bench-py311), and Python 3.13 from Debian trixie in the chroot of
scripts/python313 (a separate virtualenv, /tmp/tim-bench-py313, so tim's own
test virtualenv is left as it is). Both are set up on first use (pip, PyPI).

    python3 bench/pytest_selection.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _common import ensure_binaries, fmt_s, median, pip_env, say, sh, summary_counts

REPO = Path(__file__).resolve().parent.parent

# Targets (see the module docstring).
RECORD_TARGET_311 = 1.5
RECORD_TARGET_312 = 1.2
NOTHING_TARGET = 0.1
AFFECTED_TARGET_MS = 10.0

# What the benchmark virtualenvs hold. pytest-xdist is only there because the
# embedded plugin defines xdist's `pytest_configure_node` hook without
# `optionalhook=True`: without xdist installed, every `tim run` stops with
# "INTERNALERROR ... unknown hook 'pytest_configure_node'" (reported in
# bench/README.md). It is installed for every tool alike and stays inactive.
PINS = [
    "pytest==9.2.0",
    "pytest-testmon==2.2.0",
    "coverage==7.17.3",
    "pytest-xdist==3.8.0",
    "hypothesis==6.170.15",
    "freezegun==1.5.5",
    "attrs==26.1.0",
]
VENV_311 = Path("/tmp/tim-bench-py311")
VENV_313 = Path("/tmp/tim-bench-py313")
CHROOT = Path("/var/tmp/tim-trixie")
CACHE = Path("/tmp/tim-bench-cache")

BACKDATE_S = 24 * 3600  # no file is "racy" (see bench/foundation.py)

# Every pytest run gets these. No tracebacks: after a breaking edit, pytest
# would spend most of the run rendering hundreds of them, the same work
# whichever tool selected the tests; the FAILED lines of the short summary
# (pytest's default -rfE) still name every failing test.
COMMON_ARGS = ["-q", "--tb=no"]

# --breakdown: pytest with the embedded plugin recording (TIM_MODE=all, as
# `tim run --all` starts it, daemon running), with parts of the recorder
# switched off by monkeypatching. Timings only: the "no-..." variants record
# less than they should.
BREAKDOWN_DRIVER = r'''
import os, sys
sys.path[0] = os.getcwd()  # as with `python -m pytest`
variant = sys.argv[1]
import pytest_tim
from pytest_tim import _recorder, _client
backends = [getattr(_recorder, n) for n in ("_MonitoringBackend", "_InstrumentBackend", "_ProfileBackend")]
if variant == "no-tracer":  # no code recording at all (audit hook and daemon stay)
    for b in backends:
        b.start = b.rearm = b.boundary = lambda self: None
        b.lost = lambda self: None  # else every context counts as incomplete
if variant == "no-rearm":  # code recorded once per process, not once per test
    _recorder._MonitoringBackend.rearm = lambda self: None
if variant == "inactive":  # the plugin loaded, not recording (no TIM_MODE)
    del os.environ["TIM_MODE"]
if variant == "no-record":  # everything but the `record` requests
    send = _client.Connection.send
    _client.Connection.send = lambda self, kind, data: None if kind == "record" else send(self, kind, data)
import pytest
sys.exit(pytest.main(sys.argv[2:], plugins=[pytest_tim]))
'''
BREAKDOWN_VARIANTS = ["full", "no-record", "no-rearm", "no-tracer", "inactive"]


# --------------------------------------------------------------------------
# Suites and edits


@dataclasses.dataclass
class Edit:
    name: str  # body, constant, comment, lazy-constant
    what: str  # one line for humans
    file: str  # root-relative
    old: str
    new: str


@dataclasses.dataclass
class Suite:
    name: str
    version: str | None  # PyPI version; None for the generated suite
    pypi: str | None
    pytest_args: list[str]
    pythonpath: list[str]  # root-relative directories put on PYTHONPATH
    edits: list[Edit]


SUITES = {
    "toolz": Suite(
        "toolz",
        "1.2.0",
        "toolz",
        [],
        [],
        [
            Edit(
                "body",
                "toolz/itertoolz.py frequencies(): count by 2 (breaks tests)",
                "toolz/itertoolz.py",
                "d[item] += 1",
                "d[item] += 2",
            ),
            Edit(
                "constant",
                "toolz/utils.py: no_default = '__no__default__' -> '__no_default__'",
                "toolz/utils.py",
                "no_default = '__no__default__'",
                "no_default = '__no_default__'",
            ),
            Edit(
                "comment",
                "toolz/itertoolz.py frequencies(): a trailing comment",
                "toolz/itertoolz.py",
                "d[item] += 1",
                "d[item] += 1  # one more",
            ),
        ],
    ),
    "sqlparse": Suite(
        "sqlparse",
        "0.6.1",
        "sqlparse",
        [],
        [],
        [
            Edit(
                "body",
                "sqlparse/utils.py remove_quotes(): drop only the opening quote (breaks tests)",
                "sqlparse/utils.py",
                "val = val[1:-1]",
                "val = val[1:]",
            ),
            Edit(
                "constant",
                "sqlparse/keywords.py: 'LIMIT' is a Name, not a Keyword (breaks tests)",
                "sqlparse/keywords.py",
                "'LIMIT': tokens.Keyword,",
                "'LIMIT': tokens.Name,",
            ),
            Edit(
                "comment",
                "sqlparse/utils.py remove_quotes(): a trailing comment",
                "sqlparse/utils.py",
                "val = val[1:-1]",
                "val = val[1:-1]  # strip both",
            ),
        ],
    ),
    # Slow (about 20 s plain, much more recorded on 3.11) and with three
    # failures that depend on the system's tzdata: not in the default set.
    "dateutil": Suite(
        "dateutil",
        "4.0.0",
        "python-dateutil",
        ["-W", "ignore::pytest.PytestUnknownMarkWarning"],
        ["src"],
        [
            Edit(
                "body",
                "src/dateutil/easter.py easter(): shift every date by a day (breaks tests)",
                "src/dateutil/easter.py",
                "return datetime.date(int(y), int(m), int(d))",
                "return datetime.date(int(y), int(m), int(d)) + datetime.timedelta(days=1)",
            ),
            Edit(
                "constant",
                "src/dateutil/parser/_parser.py parserinfo.HMS (a class attribute): 'hours' -> 'hrs'",
                "src/dateutil/parser/_parser.py",
                'HMS = [("h", "hour", "hours"),',
                'HMS = [("h", "hour", "hrs"),',
            ),
            Edit(
                "comment",
                "src/dateutil/easter.py easter(): a trailing comment",
                "src/dateutil/easter.py",
                "return datetime.date(int(y), int(m), int(d))",
                "return datetime.date(int(y), int(m), int(d))  # the date",
            ),
        ],
    ),
    "generated": Suite(
        "generated",
        None,
        None,
        [],
        [],
        [
            Edit(
                "body",
                "genlib/core.py scale(): + 1 (breaks the 10% of tests that call it)",
                "genlib/core.py",
                "return total * 3 + OFFSET",
                "return total * 3 + OFFSET + 1",
            ),
            Edit(
                "constant",
                "genlib/core.py: OFFSET = 7 -> 8 (breaks the same 10%)",
                "genlib/core.py",
                "OFFSET = 7",
                "OFFSET = 8",
            ),
            Edit(
                "comment",
                "genlib/core.py scale(): a trailing comment",
                "genlib/core.py",
                "total = 0",
                "total = 0  # running sum",
            ),
            Edit(
                "lazy-constant",
                "genlib/tables.py: TABLE_BASE = 11 -> 12; tables is imported only inside functions (breaks 10%)",
                "genlib/tables.py",
                "TABLE_BASE = 11",
                "TABLE_BASE = 12",
            ),
        ],
    ),
}
DEFAULT_SUITES = ["toolz", "sqlparse", "generated"]
QUICK_SUITES = ["toolz", "generated"]


# --------------------------------------------------------------------------
# The generated suite


CORE = '''"""Core helpers: every genlib module imports this one."""

OFFSET = 7


def scale(x):
    total = 0
    for i in range(8):
        total += (x + i) % 13
    return total * 3 + OFFSET


def mix(a, b):
    return (a * 31 + b) % 1009
'''

TABLES = '''"""A lookup table. Only ever imported inside functions (lazily)."""

TABLE_BASE = 11
TABLE = tuple((i * i + TABLE_BASE) % 97 for i in range(64))
'''


def gen_module(k: int) -> str:
    parent = k // 2
    lines = [f'"""Generated module {k}."""', "", "from genlib import core"]
    if k > 0:
        lines.append(f"from genlib.mod_{parent:02d} import f_{parent}_4, f_{parent}_5")
    lines += ["", f"FACTOR = {k + 2}", ""]

    def fn(j: int, body: list[str]) -> None:
        lines.extend(["", f"def f_{k}_{j}(x):", *("    " + b for b in body), ""])

    fn(0, ["return core.scale(x) + FACTOR"])
    fn(1, ["return core.mix(x, FACTOR)"])
    if k > 0:
        fn(2, [f"return f_{parent}_4(x) + 1"])
        fn(3, [f"return f_{parent}_5(x) * 2"])
    else:
        fn(2, ["return x + 1"])
        fn(3, ["return x * 2"])
    for j in range(4, 9):
        fn(
            j,
            [
                "acc = 0",
                f"for i in range({4 + j}):",
                f"    acc = (acc * {j + 1} + x + i) % 10007",
                "return acc + FACTOR",
            ],
        )
    fn(9, ["from genlib import tables", "return tables.TABLE[x % 64] + FACTOR"])
    return "\n".join(lines)


def generate_suite(root: Path, modules: int, tests_per_module: int) -> int:
    """genlib/ (core, tables, mod_NN importing core and mod_{NN//2}) and
    tests/test_mod_NN.py, each test asserting a literal computed here.
    Returns the number of tests."""
    lib = root / "genlib"
    (root / "tests").mkdir(parents=True)
    lib.mkdir()
    (lib / "__init__.py").write_text("")
    (lib / "core.py").write_text(CORE)
    (lib / "tables.py").write_text(TABLES)
    for k in range(modules):
        (lib / f"mod_{k:02d}.py").write_text(gen_module(k))
    (root / "pyproject.toml").write_text(
        '[project]\nname = "genlib"\nversion = "0"\n\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
    )
    # The expected values, from the generated code itself.
    sys.path.insert(0, str(root))
    try:
        n = 0
        for k in range(modules):
            mod = importlib.import_module(f"genlib.mod_{k:02d}")
            out = [f'"""Tests of genlib.mod_{k:02d}."""', "", f"from genlib import mod_{k:02d} as m", ""]
            for i in range(tests_per_module):
                j = i % 10
                x = i * 7 + k
                want = getattr(mod, f"f_{k}_{j}")(x)
                out += ["", f"def test_f{j}_{i}():", f"    assert m.f_{k}_{j}({x}) == {want}", ""]
                n += 1
            (root / "tests" / f"test_mod_{k:02d}.py").write_text("\n".join(out))
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "genlib" or m.startswith("genlib.")]:
            del sys.modules[name]
    return n


# --------------------------------------------------------------------------
# Interpreters


@dataclasses.dataclass
class Python:
    label: str  # "3.11", "3.13"
    exe: Path  # what tim and the benchmark run (the chroot wrapper for 3.13)
    version: str = ""
    target: float = RECORD_TARGET_311


def pins_marker(venv: Path) -> Path:
    return venv / "tim-bench-pins.txt"


def setup_py311() -> Python:
    want = "\n".join(PINS) + "\n"
    py = VENV_311 / "bin" / "python"
    if not (py.exists() and pins_marker(VENV_311).exists() and pins_marker(VENV_311).read_text() == want):
        host = shutil.which("python3.11")
        if host is None:
            raise RuntimeError("no python3.11 on PATH")
        say(f"setting up {VENV_311} ({', '.join(PINS)})")
        shutil.rmtree(VENV_311, ignore_errors=True)
        subprocess.run([host, "-m", "venv", str(VENV_311)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
            check=True,
            env=pip_env(),
        )
        pins_marker(VENV_311).write_text(want)
    version = sh([str(py), "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    return Python("3.11", py, version, RECORD_TARGET_311)


def setup_py313() -> Python:
    """Debian trixie's Python 3.13 in the chroot of scripts/python313 (which
    sets the chroot up and bind-mounts /tmp), in a virtualenv of its own."""
    proc = sh([str(REPO / "scripts" / "python313")])
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/python313 failed: {proc.stderr.strip()[-500:]}")
    want = "\n".join(PINS) + "\n"
    inner = str(VENV_313 / "bin" / "python")
    if not (pins_marker(VENV_313).exists() and pins_marker(VENV_313).read_text() == want):
        say(f"setting up {VENV_313} in the chroot {CHROOT} ({', '.join(PINS)})")
        shutil.rmtree(VENV_313, ignore_errors=True)
        subprocess.run(["chroot", str(CHROOT), "/usr/bin/python3.13", "-m", "venv", str(VENV_313)], check=True)
        env = pip_env()
        env.pop("PIP_CERT", None)
        subprocess.run(
            ["chroot", str(CHROOT), inner, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
            check=True,
            env=env,
        )
        pins_marker(VENV_313).write_text(want)
    # Like scripts/python313's wrapper: in the virtualenv's bin/, so tim sees
    # it as that virtualenv's interpreter.
    wrapper = VENV_313 / "bin" / "python-host"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec chroot {CHROOT} /bin/sh -c 'cd \"$0\" && exec {inner} \"$@\"' \"$PWD\" \"$@\"\n"
    )
    wrapper.chmod(0o755)
    version = sh([str(wrapper), "-c", "import platform; print(platform.python_version())"], cwd="/tmp").stdout.strip()
    return Python("3.13", wrapper, version, RECORD_TARGET_312)


def fetch_sdist(suite: Suite, py: Python) -> Path:
    """The unpacked sdist (cached under CACHE)."""
    dest = CACHE / f"{suite.name}-{suite.version}"
    if (dest / ".complete").exists():
        return dest
    dl = CACHE / "sdists"
    dl.mkdir(parents=True, exist_ok=True)
    pip = VENV_311 / "bin" / "python"
    subprocess.run(
        [str(pip), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-binary", ":all:",
         "--no-deps", "-d", str(dl), f"{suite.pypi}=={suite.version}"],
        check=True,
        env=pip_env(),
    )
    norm = suite.pypi.replace("-", "_")
    archive = next(p for p in dl.iterdir() if p.name.lower().startswith(f"{norm}-{suite.version}".lower()))
    shutil.rmtree(dest, ignore_errors=True)
    tmp = CACHE / f".unpack-{suite.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as t:
        t.extractall(tmp, filter="data")
    (top,) = list(tmp.iterdir())
    top.rename(dest)
    tmp.rmdir()
    (dest / ".complete").write_text("")
    return dest


# --------------------------------------------------------------------------
# Running things


def base_env() -> dict:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("TIM_", "PYTEST_", "COVERAGE_")) or key in ("PYTHONPATH", "VIRTUAL_ENV"):
            del env[key]
    # The machine sets PYTHONDONTWRITEBYTECODE=1. A developer's checkout has
    # __pycache__ (and pytest's cached assertion rewrites): without them every
    # run re-rewrites every test module, and on 3.11 that happens under tim's
    # tracer (see bench/README.md).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


_FAILED = re.compile(r"^(FAILED|ERROR) (\S.*?)(?: - .*)?$")


def ran(counts: dict) -> int:
    return sum(v for k, v in counts.items() if k != "deselected")


def failures(out: str) -> set[str]:
    """Node ids of the FAILED/ERROR lines of pytest's short summary."""
    found = set()
    for line in out.splitlines():
        m = _FAILED.match(line)
        if m:
            found.add(m.group(2).strip())
    return found


class Copy:
    """One copy of a suite, driven by one tool."""

    def __init__(self, root: Path, suite: Suite, py: Python, tim_bin: Path, runtime: Path, log: Path):
        self.root = root
        self.suite = suite
        self.py = py
        self.tim = str(tim_bin / "tim")
        self.timd = str(tim_bin / "timd")
        self.log = log
        env = base_env()
        env["TIM_RUNTIME_DIR"] = str(runtime)
        env["TIM_DAEMON"] = self.timd
        env["TIM_PYTHON"] = str(py.exe)
        if suite.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(root / p) for p in suite.pythonpath)
        self.env = env

    def _run(self, cmd: list[str], what: str, ok=(0, 1)) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        took = time.perf_counter() - t0
        with self.log.open("a") as f:
            f.write(f"\n$ {' '.join(cmd)}   # {what}, {took:.3f} s, exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        if proc.returncode not in ok:
            raise RuntimeError(
                f"{what} in {self.root} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        return took, proc

    def pytest(self, *extra: str, what="pytest") -> tuple[float, subprocess.CompletedProcess]:
        return self._run([str(self.py.exe), "-m", "pytest", *COMMON_ARGS, *self.suite.pytest_args, *extra], what)

    def testmon(self, what="pytest --testmon") -> tuple[float, subprocess.CompletedProcess]:
        # Exit 5: testmon deselected every test ("no tests ran").
        return self._run(
            [str(self.py.exe), "-m", "pytest", *COMMON_ARGS, "--testmon", *self.suite.pytest_args], what, ok=(0, 1, 5)
        )

    def fresh_testmon(self) -> None:
        for p in self.root.glob(".testmondata*"):
            p.unlink()

    def tim_run(self, *flags: str, what="tim run") -> tuple[float, subprocess.CompletedProcess]:
        return self._run([self.tim, "run", *flags, "--", *COMMON_ARGS, *self.suite.pytest_args], what)

    def plugin_dir(self) -> Path:
        """Where `tim run` last wrote its embedded plugin (one directory per
        plugin version under the runtime directory)."""
        dirs = list((Path(self.env["TIM_RUNTIME_DIR"]) / "python").glob("*/pytest_tim"))
        if not dirs:
            raise RuntimeError("no plugin in the runtime directory: run `tim run` first")
        return max(dirs, key=lambda d: d.stat().st_mtime).parent

    def breakdown(self, variant: str, driver: Path, tests: int) -> float:
        """pytest with the plugin recording everything, part of it switched
        off (see BREAKDOWN_DRIVER); the daemon must be running."""
        info = json.loads((self.root / ".tim" / "daemon.json").read_text())
        env = dict(self.env)
        env.update(
            TIM_MODE="all",
            TIM_ROOT=str(self.root),
            TIM_SOCKET=info["socket"],
            TIM_BIN=self.tim,
            TIM_COMMAND=f"breakdown {variant}",
            PYTHONPATH=os.pathsep.join(filter(None, [str(self.plugin_dir()), env.get("PYTHONPATH")])),
        )
        cmd = [str(self.py.exe), str(driver), variant, *COMMON_ARGS, *self.suite.pytest_args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        took = time.perf_counter() - t0
        with self.log.open("a") as f:
            f.write(f"\n$ {' '.join(cmd)}   # breakdown {variant}, {took:.3f} s, exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        if proc.returncode not in (0, 1) or ran(summary_counts(proc.stdout)) != tests:
            raise RuntimeError(f"breakdown {variant} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2000:]}")
        return took

    def tim_affected(self) -> tuple[float, dict]:
        took, proc = self._run([self.tim, "affected", "--json"], "tim affected --json", ok=(0,))
        return took, json.loads(proc.stdout)

    def tim_stop(self) -> None:
        if (self.root / ".tim" / "daemon.json").exists():
            self._run([self.tim, "daemon", "stop"], "tim daemon stop", ok=(0,))

    def fresh_tim(self) -> None:
        self.tim_stop()
        shutil.rmtree(self.root / ".tim", ignore_errors=True)

    def daemon_pid(self) -> int | None:
        try:
            return int(json.loads((self.root / ".tim" / "daemon.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def apply(self, edit: Edit, revert: bool = False) -> None:
        path = self.root / edit.file
        text = path.read_text()
        old, new = (edit.new, edit.old) if revert else (edit.old, edit.new)
        if text.count(old) != 1:
            raise RuntimeError(f"{edit.file}: {old!r} occurs {text.count(old)} times, not once")
        path.write_text(text.replace(old, new))


def spawn_floor(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------
# The benchmark of one suite with one interpreter


def prepare_copies(suite: Suite, py: Python, src: Path | None, base: Path, tim_bin: Path, args) -> dict[str, Copy]:
    copies = {}
    runtime = base / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    for tool in ("plain", "testmon", "tim"):
        root = base / tool
        if src is None:
            generate_suite(root, args.gen_modules, args.gen_tests)
        else:
            shutil.copytree(src, root, symlinks=True)
            (root / ".complete").unlink(missing_ok=True)
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        old = time.time() - BACKDATE_S
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames:
                os.utime(os.path.join(dirpath, name), (old, old))
        copies[tool] = Copy(root, suite, py, tim_bin, runtime, base / f"{tool}.log")
    return copies


def bench_suite(suite: Suite, py: Python, tim_bin: Path, args, work: Path, problems: list[str]) -> dict:
    R = args.repeats
    label = f"{suite.name} / Python {py.label}"
    r: dict = {"suite": suite.name, "version": suite.version, "python": py.version}
    src = None if suite.pypi is None else fetch_sdist(suite, py)
    base = Path(tempfile.mkdtemp(prefix=f"{suite.name}-py{py.label}-", dir=work)).resolve()
    r["dir"] = str(base)
    say(f"\n== {label}  ({base})")
    copies = prepare_copies(suite, py, src, base, tim_bin, args)
    plain, tm, tim = copies["plain"], copies["testmon"], copies["tim"]
    try:
        # Warm-up: one plain run per copy writes __pycache__ and pytest's
        # cached assertion rewrites, as in a developer's checkout; the plain
        # copy's run gives the baseline outcome.
        for c in (tm, tim):
            c.pytest(what="warm-up")
        took, proc = plain.pytest(what="warm-up")
        counts = summary_counts(proc.stdout)
        base_fail = failures(proc.stdout)
        r["tests"] = ran(counts)
        r["baseline_counts"] = counts
        r["baseline_failures"] = sorted(base_fail)
        say(f"tests: {ran(counts)} ({', '.join(f'{v} {k}' for k, v in counts.items())}); warm-up {fmt_s(took)}")
        if base_fail:
            say(f"  failing before any edit (environment): {len(base_fail)}: {sorted(base_fail)[:3]}")

        # 0. tim's first recording in this checkout: on Python 3.11 it also
        # compiles the project's instrumented modules once (cached in
        # __pycache__ like pytest's own rewrites, so later recordings,
        # even from a fresh .tim/, reuse them).
        tim.fresh_tim()
        took, _ = tim.tim_run("--all", what="tim run --all (first in this checkout)")
        r["first_recording_s"] = took
        say(f"first tim recording in this checkout: {fmt_s(took)}")

        # 1. Recording cost.
        rec = {"plain": [], "testmon": [], "tim": []}
        for i in range(R):
            took, _ = plain.pytest(what="plain (recording comparison)")
            rec["plain"].append(took)
            tm.fresh_testmon()
            took, proc = tm.testmon(what="testmon recording")
            rec["testmon"].append(took)
            tim.fresh_tim()
            took, proc = tim.tim_run("--all", what="tim run --all (fresh .tim)")
            rec["tim"].append(took)
            if ran(summary_counts(proc.stdout)) != r["tests"]:
                problems.append(f"{label}: tim run --all ran {ran(summary_counts(proc.stdout))} tests, plain {r['tests']}")
            if "pytest-tim: warning" in proc.stderr or "INTERNALERROR" in proc.stdout:
                problems.append(f"{label}: tim run --all warned: {(proc.stdout + proc.stderr)[-600:]}")
        m = {k: median(v) for k, v in rec.items()}
        r["recording"] = {
            "runs_s": rec,
            "median_s": m,
            "tim_vs_plain": m["tim"] / m["plain"],
            "testmon_vs_plain": m["testmon"] / m["plain"],
            "tim_vs_testmon": m["tim"] / m["testmon"],
            "target": py.target,
            "meets_target": m["tim"] / m["plain"] <= py.target,
        }
        rr = r["recording"]
        say(f"recording: plain {fmt_s(m['plain'])}, testmon {fmt_s(m['testmon'])}, tim run --all {fmt_s(m['tim'])}")
        say(
            f"  RATIO tim/plain = {rr['tim_vs_plain']:.2f} (target <= {py.target}: "
            f"{'meets' if rr['meets_target'] else 'MISSES'}); testmon/plain = {rr['testmon_vs_plain']:.2f}"
        )

        # 2. Nothing affected (tim: right after its last --all; testmon:
        # right after its last recording).
        nothing = {"tim": [], "testmon": [], "tim_ran": [], "testmon_ran": []}
        for i in range(R):
            took, proc = tim.tim_run(what="tim run, nothing changed")
            nothing["tim"].append(took)
            nothing["tim_ran"].append(0 if "nothing affected" in proc.stdout else ran(summary_counts(proc.stdout)))
            if "nothing affected" not in proc.stdout and i == 0:
                problems.append(
                    f"{label}: `tim run` with nothing changed did not say 'nothing affected': "
                    f"{(proc.stdout + proc.stderr).strip().splitlines()[:2]}"
                )
            took, proc = tm.testmon(what="testmon, nothing changed")
            nothing["testmon"].append(took)
            nothing["testmon_ran"].append(ran(summary_counts(proc.stdout)))
        nt, nm = median(nothing["tim"]), median(nothing["testmon"])
        r["nothing"] = {
            "runs_s": nothing,
            "tim_median_s": nt,
            "testmon_median_s": nm,
            "tim_vs_testmon": nt / nm,
            "meets_target": nt / nm <= NOTHING_TARGET,
        }
        say(
            f"nothing changed: tim run {fmt_s(nt)} (ran {nothing['tim_ran']}), pytest --testmon {fmt_s(nm)} "
            f"(ran {nothing['testmon_ran']})"
        )
        say(
            f"  RATIO tim/testmon = {nt / nm:.3f} (target <= {NOTHING_TARGET}: "
            f"{'meets' if nt / nm <= NOTHING_TARGET else 'MISSES'})"
        )

        # 3. `tim affected --json` latency.
        for _ in range(3):
            tim.tim_affected()
        lat, floor = [], []
        while len(lat) < args.latency_runs:
            k = min(10, args.latency_runs - len(lat))
            floor.extend(spawn_floor(k))
            for _ in range(k):
                took, reply = tim.tim_affected()
                lat.append(took)
        lm, fm = median(lat), median(floor)
        r["affected_latency"] = {
            "runs": len(lat),
            "median_ms": lm * 1000,
            "max_ms": max(lat) * 1000,
            "spawn_floor_median_ms": fm * 1000,
            "ratio_to_floor": lm / fm,
            "known_tests": reply.get("total"),
            "meets_target": lm * 1000 <= AFFECTED_TARGET_MS,
        }
        say(
            f"tim affected --json: median {lm * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms over {len(lat)} runs "
            f"({reply.get('total')} known tests); spawn floor {fm * 1000:.2f} ms; RATIO {lm / fm:.1f}; "
            f"target <= {AFFECTED_TARGET_MS:g} ms: {'meets' if lm * 1000 <= AFFECTED_TARGET_MS else 'MISSES'}"
        )

        # Where the recording time goes (optional).
        if args.breakdown:
            driver = base / "breakdown_driver.py"
            driver.write_text(BREAKDOWN_DRIVER)
            times: dict = {v: [] for v in ["tim run --all, daemon running", *BREAKDOWN_VARIANTS]}
            for i in range(R):
                took, _ = tim.tim_run("--all", what="tim run --all (daemon running, records exist)")
                times["tim run --all, daemon running"].append(took)
                for v in BREAKDOWN_VARIANTS:
                    times[v].append(tim.breakdown(v, driver, r["tests"]))
            bm = {v: median(t) for v, t in times.items()}
            r["breakdown"] = {"median_s": bm, "runs_s": times}
            p = m["plain"]
            say(
                "breakdown (pytest with the plugin, daemon running; x plain): "
                + ", ".join(f"{k} {fmt_s(v)} ({v / p:.2f}x)" for k, v in bm.items())
            )

        # 4. Edits.
        r["edits"] = []
        for edit in [] if args.no_edits else suite.edits:
            if args.edits and edit.name not in args.edits:
                continue
            r["edits"].append(bench_edit(edit, copies, base_fail, r["tests"], R, label, problems))
    finally:
        for c in copies.values():
            stop_daemon(c)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return r


def stop_daemon(c: Copy) -> None:
    """`tim daemon stop`; if that fails, SIGTERM to the daemon this copy
    started (checked to be a timd by its command line)."""
    pid = c.daemon_pid()
    try:
        c.tim_stop()
        return
    except Exception as e:  # noqa: BLE001 - fall back to the pid we know
        say(f"tim daemon stop failed in {c.root}: {e}")
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if not f.read().split(b"\0", 1)[0].endswith(b"timd"):
                return
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass


def covered(test_id: str, selected: set[str], collect_files: set[str]) -> bool:
    if test_id in selected:
        return True
    if "::" not in test_id:  # a collection error: the file is collected
        return test_id in collect_files or any(s.startswith(test_id + "::") for s in selected)
    return False


def bench_edit(edit: Edit, copies: dict[str, Copy], base_fail: set[str], total: int, R: int, label: str, problems: list[str]) -> dict:
    plain, tm, tim = copies["plain"], copies["testmon"], copies["tim"]
    e: dict = {"edit": edit.name, "what": edit.what}
    # Fresh recordings (untimed).
    tim.fresh_tim()
    tim.tim_run("--all", what=f"[{edit.name}] fresh recording")
    tm.fresh_testmon()
    tm.testmon(what=f"[{edit.name}] fresh recording")
    for c in copies.values():
        c.apply(edit)
    try:
        # What a plain full run says after the edit.
        took, proc = plain.pytest(what=f"[{edit.name}] plain full run after the edit")
        fails = failures(proc.stdout)
        new_fails = fails - base_fail
        e["plain_full_s"] = took
        e["plain_failures"] = len(fails)
        e["new_failures"] = sorted(new_fails)
        tim_s, tm_s = [], []
        tim_counts, tm_counts, tim_ran_counts = [], [], []
        for i in range(R):
            if i > 0:
                # Back to the recorded state: revert, let each tool re-run
                # what the revert affects, edit again.
                for c in (tm, tim):
                    c.apply(edit, revert=True)
                tim.tim_run(what=f"[{edit.name}] revert run")
                tm.testmon(what=f"[{edit.name}] revert run")
                for c in (tm, tim):
                    c.apply(edit)
            _, reply = tim.tim_affected()
            if reply.get("run_all"):
                selected = None
                tim_counts.append(reply.get("total", 0))
            else:
                selected = {t["id"] for t in reply["tests"]}
                tim_counts.append(len(selected))
            collect_files = {c["file"] for c in reply.get("collect", [])}
            took, tproc = tim.tim_run(what=f"[{edit.name}] tim run after the edit")
            tim_s.append(took)
            tc = summary_counts(tproc.stdout)
            tim_ran_counts.append(0 if "nothing affected" in tproc.stdout else ran(tc))
            tim_fails = failures(tproc.stdout)
            took, mproc = tm.testmon(what=f"[{edit.name}] pytest --testmon after the edit")
            tm_s.append(took)
            mc = summary_counts(mproc.stdout)
            tm_counts.append(ran(mc))
            tm_fails = failures(mproc.stdout)
            if i == 0:
                e["tim_selected"] = tim_counts[0]
                e["tim_reasons"] = sorted({r for t in reply.get("tests", []) for r in t.get("reasons", [])})[:8]
                e["testmon_ran"] = tm_counts[0]
                missed_sel = sorted(
                    f for f in new_fails if selected is not None and not covered(f, selected, collect_files)
                )
                missed_run = sorted(new_fails - tim_fails)
                missed_tm = sorted(new_fails - tm_fails)
                e["tim_missed_selection"] = missed_sel
                e["tim_missed_run"] = missed_run
                e["testmon_missed"] = missed_tm
                if missed_sel or missed_run:
                    problems.append(
                        f"{label}, edit {edit.name!r} ({edit.what}): tim MISSED {len(set(missed_sel) | set(missed_run))} "
                        f"of {len(new_fails)} failing tests, e.g. {(missed_sel or missed_run)[:3]}"
                    )
        e["tim_selected_runs"] = tim_counts
        e["tim_ran_runs"] = tim_ran_counts
        e["testmon_ran_runs"] = tm_counts
        if len(set(tim_counts)) > 1 or len(set(tm_counts)) > 1:
            problems.append(
                f"{label}, edit {edit.name!r}: selection differs between repetitions: tim {tim_counts}, testmon {tm_counts}"
            )
        e["tim_run_s"] = tim_s
        e["testmon_s"] = tm_s
        e["tim_median_s"] = median(tim_s)
        e["testmon_median_s"] = median(tm_s)
        e["tim_vs_testmon"] = median(tim_s) / median(tm_s)
        say(
            f"edit {edit.name}: {edit.what}\n"
            f"  selected: tim {e['tim_selected']} (ran {tim_ran_counts[0]}), testmon ran {e['testmon_ran']}, of {total}; "
            f"plain full run: {len(new_fails)} new failures ({fmt_s(e['plain_full_s'])})\n"
            f"  failing tests missed: tim {len(set(e['tim_missed_selection']) | set(e['tim_missed_run']))}, "
            f"testmon {len(e['testmon_missed'])}\n"
            f"  time: tim run {fmt_s(e['tim_median_s'])}, pytest --testmon {fmt_s(e['testmon_median_s'])}; "
            f"RATIO tim/testmon = {e['tim_vs_testmon']:.2f}"
        )
        if e["tim_reasons"]:
            say(f"  tim's reasons: {'; '.join(e['tim_reasons'][:3])}")
    finally:
        for c in copies.values():
            c.apply(edit, revert=True)
    return e


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one real suite (toolz) and the generated one, 1 repetition")
    ap.add_argument("--suites", help=f"comma-separated, from {', '.join(SUITES)} (default: {','.join(DEFAULT_SUITES)})")
    ap.add_argument("--pythons", default="3.11,3.13", help="interpreters: 3.11, 3.13 (default: both)")
    ap.add_argument("--repeats", type=int, help="runs of each timing; the median is reported (default 3; --quick 1)")
    ap.add_argument("--latency-runs", type=int, default=20, help="tim affected --json runs per suite (default 20)")
    ap.add_argument("--gen-modules", type=int, default=50, help="generated suite: modules (default 50)")
    ap.add_argument("--gen-tests", type=int, default=100, help="generated suite: tests per module (default 100)")
    ap.add_argument("--edits", help="only these edits (comma-separated: body,constant,comment,lazy-constant)")
    ap.add_argument("--no-edits", action="store_true", help="skip the edit scenarios")
    ap.add_argument("--bin-dir", type=Path, help="directory holding tim and timd (default: target/release)")
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--breakdown", action="store_true", help="also time the plugin with parts of the recorder switched off")
    ap.add_argument("--keep", action="store_true", help="keep the suite copies and their logs")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every number to FILE")
    args = ap.parse_args()
    suites = (args.suites.split(",") if args.suites else QUICK_SUITES if args.quick else DEFAULT_SUITES)
    for s in suites:
        if s not in SUITES:
            ap.error(f"unknown suite {s!r}")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.edits = args.edits.split(",") if args.edits else None

    bin_dir = ensure_binaries(args.bin_dir.resolve() if args.bin_dir else None, args.build)
    started = time.time()
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release()},
        "bin_dir": str(bin_dir),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pins": PINS,
        "runs": [],
        "problems": [],
    }
    ver = sh([str(bin_dir / "tim"), "--version"]).stdout.strip()
    results["tim_version"] = ver
    say(f"tim pytest selection benchmark: {ver} from {bin_dir}")
    say(f"machine: {os.cpu_count()} cpus, kernel {platform.release()}; suites {', '.join(suites)}; {args.repeats} repetitions")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    problems: list[str] = results["problems"]
    pythons: list[Python] = []
    for label in args.pythons.split(","):
        try:
            py = setup_py311() if label == "3.11" else setup_py313() if label == "3.13" else None
            if py is None:
                ap.error(f"unknown interpreter {label!r}")
            pythons.append(py)
            say(f"Python {py.label}: {py.version} ({py.exe})")
        except Exception as e:  # noqa: BLE001 - report, go on with the others
            problems.append(f"Python {label} could not be set up: {e}")
            say(f"Python {label}: SETUP FAILED: {e}")
    results["pythons"] = {p.label: {"version": p.version, "exe": str(p.exe)} for p in pythons}

    work = Path(tempfile.mkdtemp(prefix="tim-bench-sel-", dir="/tmp")).resolve()
    failed = None
    try:
        for py in pythons:
            for name in suites:
                try:
                    results["runs"].append({"interpreter": py.label, **bench_suite(SUITES[name], py, bin_dir, args, work, problems)})
                except RuntimeError as e:
                    problems.append(f"{name} / Python {py.label}: {e}")
                    say(f"FAILED: {e}")
    except BaseException as e:
        failed = e
        raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        results["elapsed_s"] = time.time() - started
        if failed is not None:
            results["error"] = repr(failed)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=sorted) + "\n")

    say(f"\ndone in {results['elapsed_s']:.0f} s")
    print_table(results)
    if args.json:
        say(f"wrote {args.json}")
    for p in problems:
        say(f"PROBLEM: {p}")
    return 1 if problems else 0


def print_table(results: dict) -> None:
    say("\nsummary (ratios of medians; targets: record <= 1.5x plain on 3.11 / 1.2x on >= 3.12, "
        "nothing affected <= 0.1x testmon, tim affected <= 10 ms)")
    for run in results["runs"]:
        if "recording" not in run:
            continue
        rec, no, lat = run["recording"], run["nothing"], run["affected_latency"]
        first = run.get("first_recording_s", 0) / rec["median_s"]["plain"]
        say(
            f"  py{run['interpreter']} {run['suite']:<9} {run['tests']:>5} tests | record tim/plain {rec['tim_vs_plain']:.2f} "
            f"{'ok' if rec['meets_target'] else 'MISS'} (first {first:.2f}), testmon/plain {rec['testmon_vs_plain']:.2f} | nothing tim/testmon "
            f"{no['tim_vs_testmon']:.3f} {'ok' if no['meets_target'] else 'MISS'} | affected {lat['median_ms']:.1f} ms "
            f"{'ok' if lat['meets_target'] else 'MISS'}"
        )
        for e in run.get("edits", []):
            missed = len(set(e["tim_missed_selection"]) | set(e["tim_missed_run"]))
            say(
                f"      edit {e['edit']:<13} tim {e['tim_selected']:>5} / testmon {e['testmon_ran']:>5} tests, "
                f"{len(e['new_failures'])} fail; missed tim {missed}, testmon {len(e['testmon_missed'])}; "
                f"time tim/testmon {e['tim_vs_testmon']:.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
