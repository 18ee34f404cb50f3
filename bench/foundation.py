#!/usr/bin/env python3
"""Foundation benchmark for tim: initial scan, warm restart and `tim status` latency.

Every number is printed next to a baseline measured in the same run, on the
same machine, so the ratios mean something even when absolute times drift:

* Initial scan (cold): wall time of the first `tim status --json` in a
  generated tree with no daemon and no `.tim/` state. That first status
  starts `timd` and waits for its initial scan, so it measures client start +
  daemon start + walk + hash + store commit + answer. Baseline: a naive
  Python scan of the same tree (os.walk skipping node_modules/.git, reading
  and hashing every file with hashlib.blake2b).
* Warm restart: `tim daemon stop`, then the wall time of the next
  `tim status --json` (the new daemon reconciles the disk with the hashes it
  stored, re-hashing nothing that did not change). Same baseline.
* Daemon peak memory: VmHWM of the daemon (pid from the status JSON), read
  right after its first answer.
* Status latency: `tim status --json` as a whole client process against a
  warm daemon, N times; median and p90. Baseline: spawning /bin/true N times
  the same way (the process-spawn floor). Target: median < 5 ms.

Python 3 standard library only. Run from anywhere:

    python3 bench/foundation.py [--sizes 10000,100000] [--status-runs 200]
                                [--repeats 3] [--bin-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATUS_TARGET_MS = 5.0
# Files are backdated by this much so that no stored hash is "racy" (a file
# written within 2 s of being hashed is re-hashed whenever it is looked at;
# see FileMeta::racy). A real checkout is rarely seconds old; without this,
# the warm restart right after the cold scan would re-hash most of the tree.
BACKDATE_S = 24 * 3600


# --------------------------------------------------------------------------
# The generated tree


PY_HEAD = '''"""Module {name}: generated for the tim foundation benchmark."""

from __future__ import annotations

import os
import sys
from typing import Iterable

CONSTANT_{n} = {n}

'''

PY_FUNC = '''
def {fname}(items: Iterable[int], factor: int = {k}) -> list[int]:
    """Scale and filter {fname}."""
    out = []
    for item in items:
        if item % {m} == 0:
            out.append(item * factor + CONSTANT_{n})
    return out

'''

PY_CLASS = '''
class {cname}:
    """A small class, number {k}."""

    def __init__(self, value: int = {k}) -> None:
        self.value = value

    def double(self) -> int:
        return self.value * 2 + {m}

'''


def py_text(rng: random.Random, n: int, name: str) -> str:
    parts = [PY_HEAD.format(name=name, n=n)]
    for i in range(rng.randint(1, 6)):
        k, m = rng.randint(1, 999), rng.randint(2, 97)
        if rng.random() < 0.7:
            parts.append(PY_FUNC.format(fname=f"func_{n}_{i}", k=k, m=m, n=n))
        else:
            parts.append(PY_CLASS.format(cname=f"Thing{n}x{i}", k=k, m=m))
    return "".join(parts)


def generate_tree(root: Path, nfiles: int, seed: int) -> dict:
    """Writes `nfiles` tracked Python files under `root`, plus ignored
    extras, and returns what was written.

    Layout: ~100 files per directory; ~70% of the files in top-level package
    directories (`pkgNNNN/`), ~30% in nested directories 2 to 4 levels deep
    (`pkgNNNN/subN/.../`). A root `.gitignore` ignores `*.log`; 1 per 100
    source files is a `.log` file (ignored); `node_modules/` holds 1 file per
    10 source files (always skipped). `.git/` makes the root a project root.
    """
    rng = random.Random(seed)
    (root / ".git").mkdir(parents=True)
    (root / ".gitignore").write_text("*.log\n")
    per_dir = 100
    ndirs = max(1, math.ceil(nfiles / per_dir))
    nnested = round(ndirs * 0.3)
    ntop = max(1, ndirs - nnested)
    dirs: list[Path] = [root / f"pkg{i:04d}" for i in range(ntop)]
    for j in range(nnested):
        depth = 2 + j % 3  # 2, 3 or 4 levels below the root
        parts = [f"pkg{j % ntop:04d}"] + [f"sub{j}_{d}" for d in range(1, depth)]
        dirs.append(root.joinpath(*parts))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    n = 0
    for di, d in enumerate(dirs):
        count = min(per_dir, nfiles - n)
        if count <= 0:
            break
        for i in range(count):
            name = "__init__.py" if i == 0 else f"mod_{i:03d}.py"
            p = d / name
            p.write_text(py_text(rng, n, f"{d.name}.{name}"))
            written.append(p)
            n += 1
    # Ignored by the .gitignore.
    nlogs = max(1, nfiles // 100)
    for i in range(nlogs):
        p = dirs[i % len(dirs)] / f"debug_{i}.log"
        p.write_text(f"log line {i}\n" * rng.randint(5, 50))
        written.append(p)
    # Always skipped.
    nnode = max(1, nfiles // 10)
    for i in range(nnode):
        d = root / "node_modules" / f"dep{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"index_{i % per_dir}.js"
        p.write_text(f"module.exports = function f{i}(x) {{ return x * {i}; }};\n")
        written.append(p)
    old = time.time() - BACKDATE_S
    for p in written:
        os.utime(p, (old, old))
    os.utime(root / ".gitignore", (old, old))
    return {
        "source_files": n,
        "log_files": nlogs,
        "node_modules_files": nnode,
        "dirs": len(dirs),
        # Hidden files are tracked, so the .gitignore counts.
        "expected_tracked": n + 1,
    }


def naive_scan(root: Path) -> tuple[float, int, int]:
    """The baseline: walk, read and hash every file. Returns (seconds,
    files, bytes)."""
    t0 = time.perf_counter()
    files = 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("node_modules", ".git", ".tim")]
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            hashlib.blake2b(data).digest()
            files += 1
            total += len(data)
    return time.perf_counter() - t0, files, total


# --------------------------------------------------------------------------
# Driving tim


class Tim:
    def __init__(self, bin_dir: Path, runtime: Path):
        self.tim = str(bin_dir / "tim")
        self.timd = str(bin_dir / "timd")
        env = dict(os.environ)
        for key in ("TIM_LOG", "TIM_IDLE_TIMEOUT", "TIM_TEST_PROTOCOL"):
            env.pop(key, None)
        env["TIM_RUNTIME_DIR"] = str(runtime)
        env["TIM_DAEMON"] = self.timd
        # A safety net only: if this script dies without stopping its
        # daemon, the daemon still goes away on its own.
        env["TIM_IDLE_TIMEOUT"] = "15m"
        self.env = env

    def run(self, root: Path, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [self.tim, *args],
            cwd=root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        took = time.perf_counter() - t0
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"tim {' '.join(args)} failed (exit {proc.returncode}) in {root}:\n"
                f"stdout: {proc.stdout.decode(errors='replace')}\n"
                f"stderr: {proc.stderr.decode(errors='replace')}"
            )
        return took, proc

    def status(self, root: Path) -> tuple[float, dict]:
        took, proc = self.run(root, "status", "--json")
        return took, json.loads(proc.stdout)

    def stop(self, root: Path) -> None:
        self.run(root, "daemon", "stop")


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(rest[11]) + int(rest[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


def is_timd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
        return argv0.endswith(b"timd")
    except OSError:
        return False


_DURATION = re.compile(r"^([0-9.]+)(ns|µs|us|ms|s)$")
_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def daemon_scan_log(root: Path) -> dict:
    """The daemon's own `initial scan done ... known=K changed=C took=T` of
    its last start (best effort: empty if the log says nothing usable).
    `took` is in seconds."""
    try:
        text = (root / ".tim" / "daemon.log").read_text(errors="replace")
    except OSError:
        return {}
    found: dict = {}
    for line in text.splitlines():
        if "initial scan done" not in line:
            continue
        found = {}
        for key in ("files", "known", "changed"):
            m = re.search(rf"\b{key}=(\d+)", line)
            if m:
                found[key] = int(m.group(1))
        m = re.search(r"took=(\S+)", line)
        d = _DURATION.match(m.group(1)) if m else None
        if d:
            found["took_s"] = float(d.group(1)) * _UNITS[d.group(2)]
    return found


def daemon_measure(tim: Tim, root: Path) -> dict:
    """One first `tim status --json` with no daemon running: wall time,
    and the daemon's peak memory and CPU time right after it answered."""
    took, reply = tim.status(root)
    pid = int(reply["pid"])
    hwm = proc_status_kib(pid, "VmHWM")
    rss = proc_status_kib(pid, "VmRSS")
    cpu = proc_cpu_s(pid)
    m = {
        "wall_s": took,
        "pid": pid,
        "tracked_files": reply.get("tracked_files"),
        "watcher": reply.get("watcher", {}).get("mode"),
        "peak_rss_mib": None if hwm is None else hwm / 1024,
        "rss_mib": None if rss is None else rss / 1024,
        "daemon_cpu_s": cpu,
    }
    log = daemon_scan_log(root)
    m["daemon_reported_scan_s"] = log.get("took_s")
    m["daemon_reported_changed"] = log.get("changed")
    return m


def check_tracked_paths(tim: Tim, root: Path) -> list[str]:
    """Problems with what the daemon tracks: ignored or skipped files that
    it lists (untimed; `tim changes` without --since lists every file)."""
    _, proc = tim.run(root, "changes", "--json")
    files = json.loads(proc.stdout).get("files", [])
    bad = [
        f["path"]
        for f in files
        if f["path"].startswith("node_modules/")
        or f["path"].endswith(".log")
        or f["path"].startswith(".git/")
        or f["path"].startswith(".tim/")
    ]
    if bad:
        return [f"{len(bad)} ignored/skipped files are tracked, e.g. {bad[:3]}"]
    return []


# --------------------------------------------------------------------------
# Statistics and output


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def spawn_floor(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            ["/bin/true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        times.append(time.perf_counter() - t0)
    return times


def say(msg: str = "") -> None:
    print(msg, flush=True)


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.2f} s"


def opt(x: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{unit}"


def secs(s: float) -> str:
    return f"{s:.3f} s"


# --------------------------------------------------------------------------


def ensure_binaries(bin_dir: Path | None, build: bool) -> Path:
    if bin_dir is not None:
        for name in ("tim", "timd"):
            if not (bin_dir / name).is_file():
                sys.exit(f"foundation.py: {bin_dir / name} does not exist")
        return bin_dir
    bin_dir = REPO / "target" / "release"
    missing = not all((bin_dir / n).is_file() for n in ("tim", "timd"))
    if missing or build:
        say(
            f"{'binaries missing: ' if missing else ''}building: "
            f"cargo build --release -p tim --bins (in {REPO})"
        )
        subprocess.run(["cargo", "build", "--release", "-p", "tim", "--bins"], cwd=REPO, check=True)
    return bin_dir


def bench_size(tim: Tim, base: Path, nfiles: int, args, results: dict, problems: list[str], status_here: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"tree{nfiles}-", dir=base)).resolve()
    r: dict = {"files": nfiles}
    results["scan"].append(r)
    say(f"\n== tree of {nfiles} source files ({root})")
    t0 = time.perf_counter()
    layout = generate_tree(root, nfiles, args.seed)
    r["layout"] = layout
    say(
        f"generated in {time.perf_counter() - t0:.1f} s: {layout['source_files']} .py in "
        f"{layout['dirs']} dirs, +{layout['log_files']} .log (gitignored), "
        f"+{layout['node_modules_files']} in node_modules/ (skipped)"
    )

    # Baseline: the naive Python scan, best of `repeats` (all page-cache warm:
    # the tree was just written).
    naive = [naive_scan(root) for _ in range(args.repeats)]
    naive_s = [n[0] for n in naive]
    r["naive_scan_s"] = naive_s
    r["naive_scan_files"] = naive[0][1]
    r["naive_scan_bytes"] = naive[0][2]
    nb = min(naive_s)
    say(
        f"baseline naive python scan (os.walk + read + blake2b): {secs(nb)} best of {len(naive_s)} "
        f"({naive[0][1]} files, {naive[0][2] / 1e6:.1f} MB, {naive[0][1] / nb:,.0f} files/s)"
    )

    # Cold scans: no daemon, no .tim/ state.
    cold = []
    for i in range(args.repeats):
        if i > 0:
            tim.stop(root)
            shutil.rmtree(root / ".tim")
        m = daemon_measure(tim, root)
        cold.append(m)
    r["cold"] = cold
    cold_best = min(cold, key=lambda m: m["wall_s"])
    cb = cold_best["wall_s"]
    tracked = cold_best["tracked_files"]
    r["cold_best_s"] = cb
    r["cold_files_per_s"] = tracked / cb if tracked else None
    r["cold_vs_naive"] = cb / nb
    say(
        f"tim cold scan (first status, daemon start + scan): {secs(cb)} best of {len(cold)} "
        f"[{', '.join(secs(m['wall_s']) for m in cold)}], {tracked / cb:,.0f} files/s"
    )
    say(f"  daemon's own 'initial scan done' time: {opt(cold_best['daemon_reported_scan_s'], '.3f', ' s')}; daemon CPU {opt(cold_best['daemon_cpu_s'], '.2f', ' s')}")
    peaks = [m["peak_rss_mib"] for m in cold if m["peak_rss_mib"] is not None]
    r["cold_peak_rss_mib"] = max(peaks) if peaks else None
    say(f"  peak daemon memory (VmHWM): {opt(r['cold_peak_rss_mib'], '.1f', ' MiB')} (max over runs)")
    say(f"  RATIO tim cold scan / naive python scan = {cb / nb:.2f}")
    if tracked != layout["expected_tracked"]:
        problems.append(f"{nfiles}: daemon tracks {tracked} files, expected {layout['expected_tracked']}")
    if cold_best["watcher"] != "native":
        problems.append(f"{nfiles}: watcher mode is {cold_best['watcher']!r}, not native")
    problems.extend(f"{nfiles}: {p}" for p in check_tracked_paths(tim, root))

    # Warm restarts: stop, then status again (reconcile with stored hashes).
    warm = []
    for _ in range(args.repeats):
        tim.stop(root)
        warm.append(daemon_measure(tim, root))
    r["warm"] = warm
    warm_best = min(warm, key=lambda m: m["wall_s"])
    wb = warm_best["wall_s"]
    r["warm_best_s"] = wb
    r["warm_files_per_s"] = tracked / wb if tracked else None
    r["warm_vs_naive"] = wb / nb
    say(
        f"tim warm restart (stop, then first status): {secs(wb)} best of {len(warm)} "
        f"[{', '.join(secs(m['wall_s']) for m in warm)}], {tracked / wb:,.0f} files/s"
    )
    say(
        f"  daemon's own reconcile time: {opt(warm_best['daemon_reported_scan_s'], '.3f', ' s')}; "
        f"daemon CPU {opt(warm_best['daemon_cpu_s'], '.2f', ' s')}; changed files found: {warm_best['daemon_reported_changed']}"
    )
    peaks = [m["peak_rss_mib"] for m in warm if m["peak_rss_mib"] is not None]
    r["warm_peak_rss_mib"] = max(peaks) if peaks else None
    say(f"  peak daemon memory (VmHWM): {opt(r['warm_peak_rss_mib'], '.1f', ' MiB')} (max over runs)")
    rehashed = [m["daemon_reported_changed"] for m in warm]
    if any(c for c in rehashed if c):
        problems.append(f"{nfiles}: warm restarts reported changed files {rehashed}; expected 0 (nothing changed on disk)")
    say(f"  RATIO tim warm restart / naive python scan = {wb / nb:.2f}")

    if status_here:
        bench_status(tim, root, args, results)

    tim.stop(root)
    shutil.rmtree(root, ignore_errors=True)


def bench_status(tim: Tim, root: Path, args, results: dict) -> None:
    n = args.status_runs
    say(f"\n== tim status latency, warm daemon, {n} runs")
    # Warm up both (page cache for the binaries, the daemon's first answers).
    for _ in range(10):
        tim.status(root)
    spawn_floor(10)
    # Interleave in blocks so that drift in machine load hits both alike.
    tim_times: list[float] = []
    floor_times: list[float] = []
    block = 20
    while len(tim_times) < n:
        k = min(block, n - len(tim_times))
        floor_times.extend(spawn_floor(k))
        for _ in range(k):
            took, _ = tim.status(root)
            tim_times.append(took)
    tm, t90 = median(tim_times), p90(tim_times)
    fm, f90 = median(floor_times), p90(floor_times)
    results["status"] = {
        "files": args.status_files,
        "runs": n,
        "tim_median_ms": tm * 1000,
        "tim_p90_ms": t90 * 1000,
        "tim_min_ms": min(tim_times) * 1000,
        "tim_max_ms": max(tim_times) * 1000,
        "spawn_floor_median_ms": fm * 1000,
        "spawn_floor_p90_ms": f90 * 1000,
        "ratio_median": tm / fm,
        "target_median_ms": STATUS_TARGET_MS,
        "meets_target": tm * 1000 < STATUS_TARGET_MS,
    }
    say(f"baseline process-spawn floor (/bin/true): median {ms(fm)}, p90 {ms(f90)}")
    say(f"tim status --json (whole client process): median {ms(tm)}, p90 {ms(t90)}, max {ms(max(tim_times))}")
    say(f"  RATIO tim status / process-spawn floor (median) = {tm / fm:.2f}")
    verdict = "meets" if tm * 1000 < STATUS_TARGET_MS else "MISSES"
    say(f"  target: median < {STATUS_TARGET_MS:g} ms -> {verdict} ({ms(tm)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="tree sizes in source files, comma-separated (default: 10000,100000)")
    ap.add_argument("--status-runs", type=int, default=200, help="tim status runs for the latency benchmark (default: 200)")
    ap.add_argument("--status-files", type=int, default=10000, help="tree size for the latency benchmark (default: 10000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each scan measurement; the best is reported (default: 3)")
    ap.add_argument("--bin-dir", type=Path, help="directory holding tim and timd (default: target/release, built if missing)")
    ap.add_argument("--build", action="store_true", help="run cargo build --release first even if the binaries exist")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated trees (default: 1)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every number to FILE as JSON")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.repeats < 1 or args.status_runs < 1 or not sizes:
        ap.error("--repeats, --status-runs and --sizes must be positive")

    bin_dir = ensure_binaries(args.bin_dir.resolve() if args.bin_dir else None, args.build)
    started = time.time()
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "bin_dir": str(bin_dir),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "scan": [],
        "status": None,
        "problems": [],
    }
    try:
        ver = subprocess.run([str(bin_dir / "tim"), "--version"], capture_output=True, text=True).stdout.strip()
        results["tim_version"] = ver
    except OSError:
        pass
    say(f"tim foundation benchmark: {results.get('tim_version', '?')} from {bin_dir}")
    say(f"machine: {os.cpu_count()} cpus, kernel {platform.release()}, python {platform.python_version()}")

    # `kill` (SIGTERM) cleans up like Ctrl-C does: stop daemons, remove dirs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="tim-bench-")).resolve()
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    tim = Tim(bin_dir, runtime)
    problems: list[str] = results["problems"]
    failed = None
    try:
        done_status = False
        for n in sizes:
            here = n == args.status_files and not done_status
            bench_size(tim, base, n, args, results, problems, here)
            done_status = done_status or here
        if not done_status:
            # The latency tree is not one of the scan sizes: make it apart.
            root = Path(tempfile.mkdtemp(prefix=f"status{args.status_files}-", dir=base)).resolve()
            generate_tree(root, args.status_files, args.seed)
            tim.status(root)
            bench_status(tim, root, args, results)
    except BaseException as e:  # also Ctrl-C: clean up, then report
        failed = e
        raise
    finally:
        cleanup(tim, base)
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


def cleanup(tim: Tim, base: Path) -> None:
    """Stops every daemon this run started (each tree's root is under
    `base`), then removes the temp dirs."""
    for root in sorted(base.iterdir()) if base.exists() else []:
        info = root / ".tim" / "daemon.json"
        if not info.exists():
            continue
        try:
            tim.stop(root)
        except Exception as e:  # noqa: BLE001 - fall back to the pid we know
            say(f"tim daemon stop failed in {root}: {e}")
        try:
            pid = int(json.loads(info.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
        if is_timd(pid):
            say(f"daemon {pid} still running after stop; sending SIGTERM")
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
