#!/usr/bin/env python3
"""Fixture cache benchmark for tim: the llm_pipeline example with an empty
and a warm cache, and cache-hit latency for 1 MB and 100 MB artifacts.

Every number is printed next to a baseline measured in the same run, on the
same project copy, with the same interpreter:

1. Whole suite (examples/llm_pipeline: session fixtures that call a slow,
   deterministic "model provider"). Baseline: plain `python -m pytest -q`,
   no tim, so every fixture is computed. Then `tim run --all -- -q` cold
   (`tim cache clear` first; the run computes every fixture and stores
   it) and warm (`tim run --all -- -q` again, fixtures from the cache).
   Both tim runs also record what every test depends on, as `tim run --all`
   always does. Medians of --repeats runs each; the plain and cold runs
   alternate. Target: warm at least 30x faster than cold (RATIO cold/warm).
   One `generate` call, timed on its own in the same interpreter, is
   printed as the unit of the provider's cost.
2. Cache-hit latency. A test file is added to the copy. It fetches a 1 MB
   and a 100 MB artifact with
   `tim_cache.get_or_create(("blob", size), lambda: os.urandom(size),
   serializer="bytes", code_independent=True)` and times that call with
   `time.perf_counter`. One run stores the artifacts; each of the next
   --repeats runs gives one hit per size. Baseline, taken in the same test
   right after the hit: `open(path, "rb").read()` of a file of the same size
   in the same project (same file system; just written, like the cache's
   entries). Targets: 1 MB <= 5 ms; 100 MB near the plain read's bandwidth
   (RATIO tim hit/plain read).

The project copy is a git repository in a temp dir with its own
`TIM_RUNTIME_DIR`. `TIM_PYTHON` is a virtualenv with pytest only
(/tmp/tim-bench-llm-venv, made on first use), so without tim the example
runs on its plain-pytest fallback. The script stops the daemon it started
and removes its temp dir (unless --keep), also on failure, Ctrl-C or SIGTERM.

    python3 bench/fixture_cache.py [--repeats 3] [--cost ROUNDS] [--plain-only] [--keep] [--bin-dir DIR] [--json FILE]

`--plain-only` runs only the baselines (no tim needed): the `generate` call
and plain pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ensure_binaries, fmt_s, median, pip_env, say, sh, summary_counts

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "llm_pipeline"

COLD_WARM_TARGET = 30.0  # cold / warm
HIT_1MB_TARGET_MS = 5.0

PINS = ["pytest==9.2.0"]
VENV = Path("/tmp/tim-bench-llm-venv")

BACKDATE_S = 24 * 3600  # no file is "racy" (see bench/foundation.py)
MB = 1 << 20
BLOB_SIZES = [1 * MB, 100 * MB]

# Added to the copy for part 2. The bench's environment variables name the
# JSON-lines file each run appends to and the directory of the baseline
# files.
BLOB_TEST = '''"""Added by bench/fixture_cache.py: cache-hit latency."""

import json
import os
import time

import pytest


@pytest.mark.parametrize("size", [%(sizes)s])
def test_blob(tim_cache, size):
    hits = tim_cache.cache_hits
    t0 = time.perf_counter()
    blob = tim_cache.get_or_create(("blob", size), lambda: os.urandom(size), serializer="bytes", code_independent=True)
    took = time.perf_counter() - t0
    hit = tim_cache.cache_hits - hits == 1
    assert len(blob) == size
    del blob
    path = os.path.join(os.environ["LLM_BENCH_DATA"], f"blob-{size}.bin")
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        plain = f.read()
    plain_took = time.perf_counter() - t0
    assert len(plain) == size
    with open(os.environ["LLM_BENCH_BLOB_JSON"], "a") as f:
        f.write(json.dumps({"size": size, "hit": hit, "s": took, "plain_s": plain_took}) + "\\n")
'''

GENERATE_ONCE = (
    "import time; from pipeline.provider import cost, generate; "
    "t0 = time.perf_counter(); generate('bench: one call'); print(time.perf_counter() - t0, cost())"
)


# --------------------------------------------------------------------------
# Running things


def setup_venv() -> Path:
    want = "\n".join(PINS) + "\n"
    py = VENV / "bin" / "python"
    marker = VENV / "tim-bench-pins.txt"
    if not (py.exists() and marker.exists() and marker.read_text() == want):
        say(f"setting up {VENV} ({', '.join(PINS)})")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True, env=pip_env()
        )
        marker.write_text(want)
    return py


def base_env() -> dict:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("TIM_", "PYTEST_", "LLM_")) or key in ("PYTHONPATH", "VIRTUAL_ENV"):
            del env[key]
    # As in a developer's checkout: __pycache__ and pytest's rewritten test
    # modules are cached (the machine sets PYTHONDONTWRITEBYTECODE=1).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def fmt_ms(s: float) -> str:
    return f"{s * 1000:.2f} ms"


def meets(ok: bool) -> str:
    return "meets" if ok else "MISSES"


class Project:
    """The copy of examples/llm_pipeline, and the commands run in it."""

    def __init__(self, root: Path, py: Path, bin_dir: Path | None, runtime: Path, log: Path, cost: int | None):
        self.root = root
        self.py = py
        self.tim = str(bin_dir / "tim") if bin_dir else None
        self.log = log
        env = base_env()
        env["TIM_RUNTIME_DIR"] = str(runtime)
        env["TIM_PYTHON"] = str(py)
        if bin_dir:
            env["TIM_DAEMON"] = str(bin_dir / "timd")
        if cost is not None:
            env["LLM_PIPELINE_COST"] = str(cost)
        self.env = env

    def run(self, cmd: list[str], what: str, ok=(0,), env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=self.root, env=env or self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        took = time.perf_counter() - t0
        with self.log.open("a") as f:
            f.write(f"\n$ {' '.join(cmd)}   # {what}, {took:.3f} s, exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        if proc.returncode not in ok:
            raise RuntimeError(f"{what} in {self.root} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return took, proc

    def pytest(self, *args: str, what="pytest") -> tuple[float, subprocess.CompletedProcess]:
        return self.run([str(self.py), "-m", "pytest", "-q", *args], what)

    def tim_run(self, *pytest_args: str, what="tim run --all", env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
        return self.run([self.tim, "run", "--all", "--", "-q", *pytest_args], what, env=env)

    def clear_cache(self) -> None:
        # Through the daemon, which owns the cache's index and files.
        if (self.root / ".tim" / "daemon.json").exists():
            self.run([self.tim, "cache", "clear"], "tim cache clear")
        else:
            shutil.rmtree(self.root / ".tim" / "cache", ignore_errors=True)

    def daemon_pid(self) -> int | None:
        try:
            return int(json.loads((self.root / ".tim" / "daemon.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def stop_daemon(self) -> None:
        """`tim daemon stop`; if that fails, SIGTERM to the daemon this copy
        started (checked to be a timd by its command line)."""
        if self.tim is None or not (self.root / ".tim" / "daemon.json").exists():
            return
        pid = self.daemon_pid()
        try:
            self.run([self.tim, "daemon", "stop"], "tim daemon stop")
            return
        except Exception as e:  # noqa: BLE001 - fall back to the pid we know
            say(f"tim daemon stop failed in {self.root}: {e}")
        if pid is None:
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().split(b"\0", 1)[0].endswith(b"timd"):
                    return
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def make_copy(dest: Path) -> None:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".tim", "*.pyc"))
    # Part 2's baseline files live here, out of the daemon's sight.
    (dest / ".gitignore").write_text("/bench-data/\n")
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    old = time.time() - BACKDATE_S
    for dirpath, dirnames, filenames in os.walk(dest):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (old, old))


def check_run(label: str, proc: subprocess.CompletedProcess, want: int | None, problems: list[str]) -> int:
    counts = summary_counts(proc.stdout)
    passed = counts.get("passed", 0)
    bad = {k: v for k, v in counts.items() if k not in ("passed", "deselected")}
    if bad or (want is not None and passed != want):
        problems.append(f"{label}: {counts or 'no pytest summary'} (expected {want} passed)")
    if "INTERNALERROR" in proc.stdout or "pytest-tim: warning" in proc.stderr:
        problems.append(f"{label}: {(proc.stdout + proc.stderr)[-600:]}")
    return passed


# --------------------------------------------------------------------------
# The benchmark


def generate_once(p: Project) -> tuple[float, int]:
    _, proc = p.run([str(p.py), "-c", GENERATE_ONCE], "one generate call")
    took, rounds = proc.stdout.split()
    return float(took), int(rounds)


def bench_suite(p: Project, args, results: dict, problems: list[str]) -> None:
    R = args.repeats
    took, rounds = generate_once(p)
    results["generate_call_s"] = took
    results["cost_rounds"] = rounds
    say(f"one generate call: {fmt_s(took)} (LLM_PIPELINE_COST {rounds:,} rounds); a run makes 6 of them")

    # Warm-up: pytest's rewritten test modules and __pycache__ written, as
    # in a developer's checkout.
    p.pytest("--collect-only", what="warm-up (collect only)")

    runs: dict = {"plain": [], "cold": [], "warm": []}
    tests = None
    for i in range(R):
        took, proc = p.pytest(what="plain pytest")
        runs["plain"].append(took)
        tests = check_run("plain pytest", proc, tests, problems)
        if args.plain_only:
            continue
        p.clear_cache()
        took, proc = p.tim_run(what="tim run --all, cold cache")
        runs["cold"].append(took)
        check_run("tim run --all (cold)", proc, tests, problems)
        if i == 0:
            say(f"first tim run --all (daemon start, first scan, empty cache): {fmt_s(took)}")
    results["tests"] = tests
    say(f"plain pytest: {tests} tests, {fmt_s(median(runs['plain']))} (runs: {', '.join(fmt_s(t) for t in runs['plain'])})")
    if args.plain_only:
        results["suite"] = {"runs_s": runs, "plain_median_s": median(runs["plain"])}
        return

    for _ in range(R):
        took, proc = p.tim_run(what="tim run --all, warm cache")
        runs["warm"].append(took)
        check_run("tim run --all (warm)", proc, tests, problems)
    m = {k: median(v) for k, v in runs.items()}
    cold_warm = m["cold"] / m["warm"]
    results["suite"] = {
        "runs_s": runs,
        "median_s": m,
        "cold_vs_warm": cold_warm,
        "cold_vs_plain": m["cold"] / m["plain"],
        "warm_vs_plain": m["warm"] / m["plain"],
        "meets_target": cold_warm >= COLD_WARM_TARGET,
    }
    say(
        f"suite: plain pytest {fmt_s(m['plain'])}, tim run --all cold {fmt_s(m['cold'])}, "
        f"warm {fmt_s(m['warm'])} (medians of {R})"
    )
    say(
        f"  RATIO cold/warm = {cold_warm:.1f} (target >= {COLD_WARM_TARGET:g}: {meets(cold_warm >= COLD_WARM_TARGET)}); "
        f"cold/plain = {m['cold'] / m['plain']:.2f}; warm/plain = {m['warm'] / m['plain']:.3f}"
    )
    if m["warm"] > 5 * results["generate_call_s"]:
        problems.append(
            f"warm runs ({fmt_s(m['warm'])}) take as long as 5 generate calls: are the fixtures cached at all?"
        )

    # What the cache says about itself (its output format is not parsed).
    _, proc = p.run([p.tim, "cache", "stats"], "tim cache stats", ok=range(256))
    results["cache_stats"] = proc.stdout
    if proc.returncode == 0:
        say("tim cache stats:")
        for line in proc.stdout.rstrip().splitlines():
            say(f"  {line}")
    else:
        problems.append(f"tim cache stats exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}")


def bench_blobs(p: Project, args, results: dict, problems: list[str]) -> None:
    R = args.repeats
    data = p.root / "bench-data"
    data.mkdir()
    for size in BLOB_SIZES:
        with open(data / f"blob-{size}.bin", "wb") as f:
            for _ in range(0, size, MB):
                f.write(os.urandom(MB))
    test = p.root / "tests" / "test_blob_cache.py"
    test.write_text(BLOB_TEST % {"sizes": ", ".join(str(s) for s in BLOB_SIZES)})
    env = dict(p.env, LLM_BENCH_DATA=str(data))

    samples: dict = {size: {"hit": [], "plain": []} for size in BLOB_SIZES}
    for i in range(R + 1):
        out = p.root.parent / f"blob-run-{i}.jsonl"
        env["LLM_BENCH_BLOB_JSON"] = str(out)
        what = "blob test, storing" if i == 0 else "blob test, warm"
        _, proc = p.tim_run(str(test.relative_to(p.root)), what=f"tim run --all ({what})", env=env)
        check_run(f"tim run --all ({what})", proc, len(BLOB_SIZES), problems)
        lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        if len(lines) != len(BLOB_SIZES):
            raise RuntimeError(f"{what}: expected {len(BLOB_SIZES)} measurements in {out}, got {len(lines)}")
        for r in lines:
            if i == 0:
                if r["hit"]:
                    problems.append(f"blob {r['size']} bytes: a hit on the run that should have stored it")
                continue
            if not r["hit"]:
                problems.append(f"blob {r['size']} bytes: a miss on warm run {i}")
                continue
            samples[r["size"]]["hit"].append(r["s"])
            samples[r["size"]]["plain"].append(r["plain_s"])

    results["blobs"] = {}
    for size in BLOB_SIZES:
        hits, plain = samples[size]["hit"], samples[size]["plain"]
        if not hits:
            say(f"blob {size // MB} MB: no hits measured")
            continue
        h, b = median(hits), median(plain)
        entry = {"hit_s": hits, "plain_read_s": plain, "hit_median_s": h, "plain_median_s": b, "ratio": h / b}
        line = f"cache hit {size // MB} MB: {fmt_ms(h)}; plain read {fmt_ms(b)} (medians of {len(hits)}); RATIO tim hit/plain read = {h / b:.2f}"
        if size == 1 * MB:
            entry["meets_target"] = h * 1000 <= HIT_1MB_TARGET_MS
            line += f"; target <= {HIT_1MB_TARGET_MS:g} ms: {meets(entry['meets_target'])}"
        else:
            entry["hit_mb_s"] = size / MB / h
            entry["plain_mb_s"] = size / MB / b
            line += f"; {entry['hit_mb_s']:.0f} MB/s vs {entry['plain_mb_s']:.0f} MB/s (target: near the plain read)"
        results["blobs"][str(size)] = entry
        say(line)


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each timing; the median is reported (default 3)")
    ap.add_argument("--cost", type=int, help="LLM_PIPELINE_COST for every run (default: the example's own; the environment's is ignored)")
    ap.add_argument("--plain-only", action="store_true", help="only the baselines: one generate call and plain pytest")
    ap.add_argument("--bin-dir", type=Path, help="directory holding tim and timd (default: target/release)")
    ap.add_argument("--keep", action="store_true", help="keep the project copy and its log")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every number to FILE")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    bin_dir = None if args.plain_only else ensure_binaries(args.bin_dir.resolve() if args.bin_dir else None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release()},
        "bin_dir": str(bin_dir) if bin_dir else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "problems": [],
    }
    problems: list[str] = results["problems"]
    py = setup_venv()
    results["python"] = sh([str(py), "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    if bin_dir:
        results["tim_version"] = sh([str(bin_dir / "tim"), "--version"]).stdout.strip()
        say(f"tim fixture cache benchmark: {results['tim_version']} from {bin_dir}")
    else:
        say("tim fixture cache benchmark: baselines only (--plain-only)")
    say(f"machine: {os.cpu_count()} cpus, kernel {platform.release()}; Python {results['python']} ({py}); {args.repeats} repetitions")

    work = Path(tempfile.mkdtemp(prefix="tim-bench-cache-", dir="/tmp")).resolve()
    runtime = work / "run"
    runtime.mkdir(mode=0o700)
    root = work / "llm_pipeline"
    make_copy(root)
    project = Project(root, py, bin_dir, runtime, work / "bench.log", args.cost)
    say(f"project copy: {root}")
    failed = None
    try:
        bench_suite(project, args, results, problems)
        if not args.plain_only:
            bench_blobs(project, args, results, problems)
    except BaseException as e:
        failed = e
        raise
    finally:
        project.stop_daemon()
        if args.keep:
            say(f"kept {work} (log: {work / 'bench.log'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
        results["elapsed_s"] = time.time() - started
        if failed is not None:
            results["error"] = repr(failed)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    say(f"\ndone in {results['elapsed_s']:.0f} s")
    if args.json:
        say(f"wrote {args.json}")
    for p in problems:
        say(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
