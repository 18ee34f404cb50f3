"""What the benchmarks share: output, subprocesses, pip's environment,
the release binaries they measure, and pytest's summary line. Standard
library only; each benchmark imports it from its own directory."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def say(msg: str = "") -> None:
    print(msg, flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)


def pip_env() -> dict:
    env = dict(os.environ)
    # The machine's pip config names /opt/wheels (may not exist) and a host
    # CA path; neither helps here.
    env.pop("PIP_FIND_LINKS", None)
    return env


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def ensure_binaries(bin_dir: Path | None, build: bool = False) -> Path:
    """`bin_dir`, or target/release built when missing (or `build`); warns
    when the release binaries are older than the sources."""
    if bin_dir is not None:
        return bin_dir
    bin_dir = REPO / "target" / "release"
    missing = not all((bin_dir / n).is_file() for n in ("tim", "timd"))
    if missing or build:
        say("building: cargo build --release -p tim --bins")
        subprocess.run(["cargo", "build", "--release", "-p", "tim", "--bins"], cwd=REPO, check=True)
    else:
        newest = max(
            p.stat().st_mtime
            for d in ("client/src", "daemon/src", "proto/src", "python/pytest_tim")
            for p in (REPO / d).rglob("*")
            if p.is_file()
        )
        if (bin_dir / "tim").stat().st_mtime < newest:
            say("warning: target/release/tim is older than the sources (cargo build --release -p tim --bins)")
    return bin_dir


_SUMMARY_WORDS = ("passed", "failed", "error", "errors", "skipped", "deselected", "xfailed", "xpassed", "warning", "warnings")
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b")


def summary_counts(out: str) -> dict:
    """Counts from pytest's last summary line (`3 failed, 10 passed, ...`)."""
    for line in reversed(out.splitlines()):
        if " in " in line and (any(w in line for w in _SUMMARY_WORDS) or "no tests ran" in line):
            counts: dict = {}
            for n, word in _COUNT.findall(line):
                word = "error" if word.startswith("error") else word
                counts[word] = counts.get(word, 0) + int(n)
            return counts
    return {}
