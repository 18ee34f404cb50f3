//! What the timing and outcome history says: slowest tests, tests getting
//! slower, flaky tests, failing tests.
//!
//! Architecture invariant: pure. Results in (grouped by test, oldest first,
//! as [`crate::store::Store::all_results`] gives them), answer out.

use crate::store::ResultRow;
use tim_proto::{FailingTest, FlakyTest, SlowTest, SlowerTest, StatsReply};

/// A test must be this much slower (ratio and absolute) to count as slower.
const SLOWER_RATIO: f64 = 1.5;
const SLOWER_SECONDS: f64 = 0.010;
/// Results needed to compare a test's older and newer halves.
const SLOWER_MIN_RESULTS: usize = 4;

pub fn stats(rows: &[ResultRow], known: u64, runs: u64, limit: usize) -> StatsReply {
    let mut slowest = Vec::new();
    let mut slower = Vec::new();
    let mut flaky = Vec::new();
    let mut failing = Vec::new();
    for results in rows.chunk_by(|a, b| a.node_id == b.node_id) {
        let id = &results[0].node_id;
        let count = results.len() as u32;
        let seconds: Vec<f64> = results.iter().map(|r| r.seconds).collect();
        slowest.push(SlowTest {
            id: id.clone(),
            median_seconds: median(&seconds),
            last_seconds: *seconds.last().expect("chunks are not empty"),
            results: count,
        });
        if results.len() >= SLOWER_MIN_RESULTS {
            let (older, newer) = seconds.split_at(seconds.len() / 2);
            let (before, after) = (median(older), median(newer));
            if after >= before * SLOWER_RATIO && after - before >= SLOWER_SECONDS {
                slower.push(SlowerTest {
                    id: id.clone(),
                    before_seconds: before,
                    after_seconds: after,
                    results: count,
                });
            }
        }
        // Passed then failed (or back) with the very same dependencies:
        // nothing the test can see changed, yet its outcome did.
        let flips = results
            .windows(2)
            .filter(|w| {
                w[0].deps_digest.is_some()
                    && w[0].deps_digest == w[1].deps_digest
                    && is_failure(&w[0].outcome) != is_failure(&w[1].outcome)
            })
            .count() as u32;
        if flips > 0 {
            flaky.push(FlakyTest {
                id: id.clone(),
                flips,
                results: count,
            });
        }
        let failures = results.iter().filter(|r| is_failure(&r.outcome)).count() as u32;
        if failures > 0 {
            failing.push(FailingTest {
                id: id.clone(),
                failures,
                results: count,
            });
        }
    }
    slowest.sort_by(|a, b| {
        b.median_seconds
            .total_cmp(&a.median_seconds)
            .then_with(|| a.id.cmp(&b.id))
    });
    slower.sort_by(|a, b| {
        (b.after_seconds - b.before_seconds)
            .total_cmp(&(a.after_seconds - a.before_seconds))
            .then_with(|| a.id.cmp(&b.id))
    });
    flaky.sort_by(|a, b| b.flips.cmp(&a.flips).then_with(|| a.id.cmp(&b.id)));
    failing.sort_by(|a, b| {
        // By failure rate, then by how many.
        let rate = |t: &FailingTest| f64::from(t.failures) / f64::from(t.results);
        rate(b)
            .total_cmp(&rate(a))
            .then_with(|| b.failures.cmp(&a.failures))
            .then_with(|| a.id.cmp(&b.id))
    });
    slowest.truncate(limit);
    slower.truncate(limit);
    flaky.truncate(limit);
    failing.truncate(limit);
    StatsReply {
        known,
        runs,
        slowest,
        slower,
        flaky,
        failing,
    }
}

fn is_failure(outcome: &str) -> bool {
    matches!(outcome, "failed" | "error")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(test, [(outcome, seconds, deps)])`: each test's history, oldest
    /// first; `deps` names the dependency set (`None`: not kept).
    type History = &'static [(&'static str, &'static [(&'static str, f64, Option<u8>)])];

    fn rows(history: History) -> Vec<ResultRow> {
        let mut out = Vec::new();
        for (id, results) in history {
            for (run, (outcome, seconds, deps)) in results.iter().enumerate() {
                out.push(ResultRow {
                    node_id: (*id).to_owned(),
                    run: run as u64 + 1,
                    outcome: (*outcome).to_owned(),
                    seconds: *seconds,
                    deps_digest: deps.map(|d| vec![d; 16]),
                });
            }
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id).then(a.run.cmp(&b.run)));
        out
    }

    const HISTORY: History = &[
        ("t::steady", &[("passed", 0.1, Some(1)); 6]),
        (
            "t::slower",
            &[
                ("passed", 0.1, Some(1)),
                ("passed", 0.1, Some(1)),
                ("passed", 0.3, Some(2)),
                ("passed", 0.4, Some(2)),
            ],
        ),
        (
            // Faster by a tiny amount only: not "slower".
            "t::noise",
            &[
                ("passed", 0.001, Some(1)),
                ("passed", 0.001, Some(1)),
                ("passed", 0.004, Some(1)),
                ("passed", 0.004, Some(1)),
            ],
        ),
        (
            "t::flaky",
            &[
                ("passed", 0.2, Some(1)),
                ("failed", 0.2, Some(1)),
                ("passed", 0.2, Some(1)),
                ("error", 0.2, Some(1)),
            ],
        ),
        (
            // Failed after a change, fixed by another: not flaky.
            "t::broken_then_fixed",
            &[
                ("passed", 0.5, Some(1)),
                ("failed", 0.5, Some(2)),
                ("passed", 0.5, Some(3)),
            ],
        ),
        (
            // Recorded before dependencies were kept with results.
            "t::old",
            &[("passed", 2.0, None), ("failed", 2.0, None)],
        ),
    ];

    #[test]
    fn statistics_from_a_history() {
        let s = stats(&rows(HISTORY), 6, 7, 10);
        assert_eq!((s.known, s.runs), (6, 7));
        let ids = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(
            ids(s.slowest.iter().map(|t| &t.id).collect()),
            [
                "t::old",
                "t::broken_then_fixed",
                "t::flaky",
                "t::slower",
                "t::steady",
                "t::noise"
            ]
        );
        assert_eq!(s.slowest[0].median_seconds, 2.0);
        assert_eq!(s.slowest[3].median_seconds, 0.2); // (0.1 + 0.3) / 2
        assert_eq!(ids(s.slower.iter().map(|t| &t.id).collect()), ["t::slower"]);
        assert_eq!(
            (s.slower[0].before_seconds, s.slower[0].after_seconds),
            (0.1, 0.35)
        );
        assert_eq!(ids(s.flaky.iter().map(|t| &t.id).collect()), ["t::flaky"]);
        assert_eq!(s.flaky[0].flips, 3);
        assert_eq!(
            s.failing
                .iter()
                .map(|t| (t.id.as_str(), t.failures, t.results))
                .collect::<Vec<_>>(),
            [
                ("t::flaky", 2, 4),
                ("t::old", 1, 2),
                ("t::broken_then_fixed", 1, 3)
            ]
        );
        let limited = stats(&rows(HISTORY), 6, 7, 2);
        assert_eq!(limited.slowest.len(), 2);
        assert_eq!(limited.failing.len(), 2);
    }
}
