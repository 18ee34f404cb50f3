#!/usr/bin/env python3
"""`tim watch` latency: from saving a file to the test process starting, and
to the first test result.

A small project (a library function and the tests that call it) is recorded
once; then `tim watch` runs and the benchmark saves an edit that affects the
tests, N times, timing each from the write to:

* the run's header line, which `tim watch` prints right before it starts
  pytest ("process start");
* the first test result pytest prints.

Both include the settle windows on purpose (the daemon's 30 ms and the
client's 100 ms quiet time that turn a burst of saves into one run); the
"after settling" column subtracts them. Baseline in the same run: a plain
`python -m pytest -v` of the same tests, from spawn to its first result, which
is what any runner pays to start pytest.

Standard library only. Usage: python3 bench/watch.py [--edits 20] [--python PATH]
"""

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTLE_S = 0.030 + 0.100  # daemon batch settle + tim watch settle


def binaries():
    bin_dir = os.path.join(REPO, "target", "release")
    tim = os.path.join(bin_dir, "tim")
    if not os.path.exists(tim):
        print("building release binaries: cargo build --release -p tim --bins", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "tim", "--bins"], cwd=REPO, check=True)
    return tim, os.path.join(bin_dir, "timd")


def make_project(root, tests):
    os.makedirs(os.path.join(root, "lib"))
    os.makedirs(os.path.join(root, "tests"))
    os.makedirs(os.path.join(root, ".git"))
    with open(os.path.join(root, "pyproject.toml"), "w") as f:
        f.write('[project]\nname = "watchbench"\nversion = "0"\n')
    open(os.path.join(root, "lib", "__init__.py"), "w").close()
    write_lib(root, 0)
    with open(os.path.join(root, "tests", "test_calc.py"), "w") as f:
        f.write("from lib.calc import scale\n\n")
        for i in range(tests):
            f.write(f"\ndef test_{i}():\n    assert scale({i}) == {i} * 2\n")


def write_lib(root, n):
    # Every version computes the same thing; each differs in the body.
    with open(os.path.join(root, "lib", "calc.py"), "w") as f:
        f.write(f"def scale(x):\n    return x * 2 + {n} - {n}\n")


class Lines:
    def __init__(self, cmd, env, cwd):
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put((time.perf_counter(), line.rstrip("\n")))
        self.q.put((time.perf_counter(), None))

    def expect(self, needle, timeout=60):
        deadline = time.perf_counter() + timeout
        while True:
            t, line = self.q.get(timeout=max(0.01, deadline - time.perf_counter()))
            if line is None:
                raise RuntimeError(f"tim watch exited while waiting for {needle!r}")
            if needle in line:
                return t


def first_result_plain(python, root, env, runs=5):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        lines = Lines([python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests"], env, root)
        t = lines.expect(" PASSED")
        lines.proc.wait()
        times.append(t - t0)
    return statistics.median(times)


def ms(seconds):
    return f"{seconds * 1000:.0f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--python", default=os.path.join(REPO, "target", "test-venv", "bin", "python"))
    args = ap.parse_args()
    tim, timd = binaries()
    base = tempfile.mkdtemp(prefix="tim-bench-watch-")
    root = os.path.join(base, "proj")
    env = dict(os.environ, TIM_RUNTIME_DIR=os.path.join(base, "run"), TIM_DAEMON=timd, TIM_PYTHON=args.python)
    env.pop("TIM_LOG", None)
    watch = None
    try:
        make_project(root, args.tests)
        subprocess.run([tim, "run", "--all"], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        plain = first_result_plain(args.python, root, env)
        watch = Lines([tim, "watch", "--", "-v", "-p", "no:cacheprovider"], env, root)
        watch.expect("waiting for changes")
        starts, firsts = [], []
        for n in range(1, args.edits + 1):
            t0 = time.perf_counter()
            write_lib(root, n)
            t_start = watch.expect("· changed:")
            t_first = watch.expect(" PASSED")
            watch.expect("waiting for changes")
            starts.append(t_start - t0)
            firsts.append(t_first - t0)
        start_med = statistics.median(starts)
        first_med = statistics.median(firsts)
        print(f"tim watch, {args.edits} edits, {args.tests} affected tests each (median; p90)")
        print(f"  save -> pytest process start:  {ms(start_med)}; {ms(sorted(starts)[int(len(starts) * 0.9) - 1])}")
        print(f"    after settling ({ms(SETTLE_S)} of settle windows): {ms(start_med - SETTLE_S)}  (target <= 100 ms)")
        print(f"  save -> first test result:     {ms(first_med)}; {ms(sorted(firsts)[int(len(firsts) * 0.9) - 1])}")
        print(f"  baseline: plain pytest, spawn -> first result: {ms(plain)}")
        print(f"  ratio (tim watch save -> first result) / (plain pytest spawn -> first result): {first_med / plain:.2f}")
    finally:
        if watch is not None:
            watch.proc.terminate()
            watch.proc.wait()
        subprocess.run([tim, "daemon", "stop"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
