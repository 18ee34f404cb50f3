#!/usr/bin/env python3
"""Rust tests in a generated Cargo workspace: what `tim run` builds and
runs after a one-file edit, against `cargo nextest run` of the whole
workspace after the same kind of edit, and how long the answer of
`tim affected` takes after the edit. Every number is shown next to its
baseline from the same run.

The workspace: `core` (a library every other layer reaches), `mid0..` on
top of it, `leaf0..` each on one `mid`, and independent `solo0..` crates;
each crate has unit tests, `core` an integration test too. Edits change a
function body in a leaf crate and in `core`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_binaries, fmt_s, median, say, sh  # noqa: E402

CRATE_LIB = """{uses}
pub fn value(x: u64) -> u64 {{
    {body}
}}

#[cfg(test)]
mod tests {{
{tests}
}}
"""

TEST = """    #[test]
    fn case_{i}() {{
        let mut acc = 0u64;
        for k in 0..{work} {{
            acc = acc.wrapping_add(super::value(k));
        }}
        assert!(acc < u64::MAX);
    }}
"""


def generate(root: Path, mids: int, leaves: int, solos: int, tests: int, work: int) -> dict[str, list[str]]:
    """Writes the workspace; returns crate -> workspace crates it depends on."""
    deps: dict[str, list[str]] = {"core": []}
    for m in range(mids):
        deps[f"mid{m}"] = ["core"]
    for l in range(leaves):
        deps[f"leaf{l}"] = [f"mid{l % max(mids, 1)}"] if mids else ["core"]
    for s in range(solos):
        deps[f"solo{s}"] = []
    (root / "Cargo.toml").write_text(
        "[workspace]\nresolver = \"2\"\nmembers = [" + ", ".join(f'"{c}"' for c in deps) + "]\n"
    )
    (root / ".gitignore").write_text("/target\n")
    (root / ".git").mkdir()
    for crate, on in deps.items():
        d = root / crate
        (d / "src").mkdir(parents=True)
        manifest = f'[package]\nname = "{crate}"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n'
        manifest += "".join(f'{o} = {{ path = "../{o}" }}\n' for o in on)
        (d / "Cargo.toml").write_text(manifest)
        body = " + ".join([f"{o}::value(x)" for o in on] + ["x * 3 + 1"])
        (d / "src/lib.rs").write_text(
            CRATE_LIB.format(
                uses="",
                body=body,
                tests="".join(TEST.format(i=i, work=work) for i in range(tests)),
            )
        )
    itests = root / "core" / "tests"
    itests.mkdir()
    (itests / "api.rs").write_text(
        "".join(
            f"#[test]\nfn api_{i}() {{\n    assert_eq!(core::value({i}), {i} * 3 + 1);\n}}\n" for i in range(tests // 3)
        )
    )
    return deps


ORIGINALS: dict[Path, str] = {}


def edit(root: Path, crate: str, marker: str) -> None:
    """A body edit with `marker` in it; `""` restores the original."""
    lib = root / crate / "src/lib.rs"
    text = ORIGINALS.setdefault(lib, lib.read_text())
    if marker:
        text = text.replace("x * 3 + 1", f"x * 3 + 1 + 0 * {marker}", 1)
    lib.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mids", type=int, default=4)
    ap.add_argument("--leaves", type=int, default=8)
    ap.add_argument("--solos", type=int, default=3)
    ap.add_argument("--tests", type=int, default=30, help="unit tests per crate")
    ap.add_argument("--work", type=int, default=200_000, help="loop iterations per test")
    ap.add_argument("--repeats", type=int, default=5, help="tim affected timings per edit")
    ap.add_argument("--bin-dir", type=Path)
    ap.add_argument("--build", action="store_true", help="rebuild the release binaries first")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    bins = ensure_binaries(args.bin_dir, args.build)
    tim = str(bins / "tim")
    base = Path(tempfile.mkdtemp(prefix="tim-bench-cargo-"))
    root = base / "ws"
    root.mkdir()
    env = dict(os.environ, TIM_RUNTIME_DIR=str(base / "run"), TIM_DAEMON=str(bins / "timd"))

    def stop(*_):
        sh([tim, "daemon", "stop"], cwd=root, env=env)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)

    def timed(cmd: list[str]) -> tuple[float, str]:
        t0 = time.perf_counter()
        out = sh(cmd, cwd=root, env=env)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            say(out.stdout + out.stderr)
            raise SystemExit(f"failed: {' '.join(cmd)}")
        return took, out.stdout + out.stderr

    def count_run(output: str) -> int:
        # nextest: "Summary [ 0.123s] 42 tests run: 42 passed, ..."
        n = 0
        for line in output.splitlines():
            if "tests run:" in line or "test run:" in line:
                n += int(line.split("]")[1].split()[0])
            if line.startswith("test result:"):
                n += int(line.split(";")[0].split()[-2])  # doctests
        return n

    try:
        deps = generate(root, args.mids, args.leaves, args.solos, args.tests, args.work)
        say(f"workspace: {len(deps)} crates, {args.tests} unit tests each, core {args.tests // 3} integration tests")
        say("warming up: cargo nextest run --workspace (the first build is not measured)")
        timed(["cargo", "nextest", "run", "--workspace"])
        full, out = timed(["cargo", "nextest", "run", "--workspace"])
        total = count_run(out)
        say(f"cargo nextest run, nothing changed: {fmt_s(full)} ({total} tests)")
        rec, out = timed([tim, "run", "--all"])
        say(f"tim run --all (records):           {fmt_s(rec)} ({rec / full:.2f}x the plain run; doctests too)")
        none, out = timed([tim, "run"])
        say(f"tim run, nothing affected:         {fmt_s(none)} ({none / full:.3f}x the plain run)")
        quiet = [timed([tim, "affected", "--json"])[0] for _ in range(args.repeats)]
        say(f"tim affected, nothing changed:     {fmt_s(median(quiet))} (median of {args.repeats})")
        say("")
        say(
            f"{'edit':<18} {'affected after edit':>20} {'tim run':>18} {'nextest run':>12} "
            f"{'+ doctests':>18} {'tests tim/all':>14}"
        )
        for crate in ["leaf0", "mid0" if args.mids else "core", "core"]:
            lat = []
            for r in range(args.repeats):
                edit(root, crate, str(r + 1))
                t, out = timed([tim, "affected", "--json"])
                lat.append(t)
            affected = len(json.loads(out)["tests"])
            t_tim, out = timed([tim, "run"])
            n_tim = count_run(out)
            edit(root, crate, "99")
            t_all, out = timed(["cargo", "nextest", "run", "--workspace"])
            n_all = count_run(out)
            t_doc, out = timed(["cargo", "test", "--doc", "--workspace"])
            n_doc = count_run(out)
            edit(root, crate, "")  # the original body
            timed([tim, "run"])  # record the original again
            say(
                f"{crate + '/src/lib.rs':<18} {fmt_s(median(lat)):>12} ({affected:>3}) "
                f"{fmt_s(t_tim):>10} ({t_tim / t_all:.2f}x) {fmt_s(t_all):>12} "
                f"{fmt_s(t_all + t_doc):>10} ({t_tim / (t_all + t_doc):.2f}x) {n_tim:>8}/{n_all + n_doc}"
            )
        say("")
        say("affected after edit: `tim affected --json` right after the write (median), and tests it lists;")
        say("tim run / nextest run: incremental build plus the run, after the same kind of edit;")
        say("+ doctests: nextest run plus `cargo test --doc --workspace` (nextest runs no doctests; tim does).")
    finally:
        sh([tim, "daemon", "stop"], cwd=root, env=env)
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
