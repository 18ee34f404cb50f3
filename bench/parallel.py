#!/usr/bin/env python3
"""Parallel runs on a suite with skewed durations: `tim run -j 2` against
`pytest -n 2` (xdist's `load` and `worksteal` scheduling) and a naive even
split (two pytest processes, half of the tests each by count), with the LPT
lower bound of the makespan.

The suite does real CPU work (hashing), no sleeps: many short tests and a
long one (`--long N` for more), collected last, which is where scheduling
in collection order hurts. Every number is a wall time measured in this run;
ratios are against `tim run -j 2` and against the lower bound
max(total / workers, longest test), computed from the durations pytest
reported in the recording run.

Standard library only. Usage:
    python3 bench/parallel.py [--repeats 3] [--short 48] [--long 1] [--keep]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ensure_binaries, pip_env, say

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = "/tmp/tim-bench-parallel-venv"
WORKERS = 2

TESTS = '''import hashlib

import pytest


def work(rounds):
    digest = b"tim"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


@pytest.mark.parametrize("n", range({short}))
def test_short(n):
    assert work({short_rounds} + n)


@pytest.mark.parametrize("n", range({long}))
def test_long(n):
    assert work({long_rounds} + n)
'''


def venv_python():
    py = os.path.join(VENV, "bin", "python")
    ok = os.path.exists(py) and subprocess.run([py, "-c", "import pytest, xdist"], capture_output=True).returncode == 0
    if not ok:
        say(f"setting up {VENV} (pytest, pytest-xdist)")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        env = pip_env()
        subprocess.run(
            [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
             os.path.join(REPO, "python", "requirements-test.txt")],
            check=True,
            env=env,
        )
    return py


def timed(cmd, cwd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return took, proc


def even_split(py, ids, cwd, env):
    """Two pytest processes at once, half of the tests (by count) each."""
    half = (len(ids) + 1) // 2
    start = time.perf_counter()
    procs = [
        subprocess.Popen([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *chunk], cwd=cwd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        for chunk in (ids[:half], ids[half:])
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"even split exited {codes}")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", type=int, default=48, help="short tests (default 48)")
    ap.add_argument("--long", type=int, default=1, help="long tests, collected last (default 1)")
    ap.add_argument("--short-rounds", type=int, default=200_000, help="hashing rounds of a short test (about 60 ms)")
    ap.add_argument("--long-rounds", type=int, default=9_000_000, help="hashing rounds of a long test (about 2.7 s)")
    ap.add_argument("--bin-dir", type=Path, help="directory holding tim and timd (default: target/release, built if missing)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    py = venv_python()
    tim = str(ensure_binaries(args.bin_dir) / "tim")
    work = tempfile.mkdtemp(prefix="tim-bench-parallel-")
    root = os.path.join(work, "proj")
    os.makedirs(os.path.join(root, "tests"))
    with open(os.path.join(root, "pyproject.toml"), "w") as f:
        f.write('[project]\nname = "skewed"\nversion = "0"\n')
    with open(os.path.join(root, "tests", "test_skewed.py"), "w") as f:
        f.write(TESTS.format(short=args.short, long=args.long, short_rounds=args.short_rounds, long_rounds=args.long_rounds))
    subprocess.run(["git", "init", "-q", root], check=True)
    env = dict(os.environ, TIM_PYTHON=py, TIM_RUNTIME_DIR=os.path.join(work, "run"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        say(f"suite: {args.short} short + {args.long} long tests (long ones last), {WORKERS} workers, "
            f"{os.cpu_count()} cpus; {args.repeats} repetitions, medians")
        # Record: durations for tim, and for the lower bound.
        _, proc = timed([tim, "run", "--all", "--no-progress", "--", "-q", "--durations=0", "--durations-min=0"], root, env)
        durations = {}
        for line in proc.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)s (setup|call|teardown)\s+(\S+)", line)
            if m:
                durations[m.group(3)] = durations.get(m.group(3), 0.0) + float(m.group(1))
        total = sum(durations.values())
        longest = max(durations.values())
        bound = max(total / WORKERS, longest)
        say(f"serial test time {total:.2f} s, longest test {longest:.2f} s: LPT lower bound {bound:.2f} s")
        collected = subprocess.run([py, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=root,
                                   env=env, capture_output=True, text=True).stdout.split()
        ids = [i for i in collected if "::" in i]

        runs = {
            "tim run -j 2": lambda: timed([tim, "run", "--all", "-j", "2", "--no-progress", "--", "-q"], root, env)[0],
            "pytest -n 2 (load)": lambda: timed([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"], root, env)[0],
            "pytest -n 2 --dist worksteal": lambda: timed(
                [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "worksteal"], root, env)[0],
            "even split (2 processes)": lambda: even_split(py, ids, root, env),
        }
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(run())
        med = {name: statistics.median(t) for name, t in times.items()}
        tim_s = med["tim run -j 2"]
        for name, t in med.items():
            say(f"  {name:32s} {t:6.2f} s   RATIO /tim {t / tim_s:5.2f}   RATIO /lower bound {t / bound:5.2f}")
        print(json.dumps({"lower_bound_s": bound, "median_s": med, "runs_s": times}), file=sys.stderr)
    finally:
        subprocess.run([tim, "--root", root, "daemon", "stop"], env=env, capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work}")


if __name__ == "__main__":
    main()
