//! `tim audit`: each known test's last duration against its time budget.
//!
//! Architecture invariant: pure. Tests and budgets in, answer out; the glob
//! matcher is passed in so this module knows nothing of pytest.

use crate::config::{Budgets, Matcher};
use tim_proto::{AuditEntry, AuditReply};

/// One known test, as the audit sees it.
pub struct Timed<'a> {
    pub id: &'a str,
    pub file: &'a str,
    pub markers: &'a [String],
    /// setup + call + teardown of its last run.
    pub seconds: f64,
}

pub fn audit<'a>(
    tests: impl IntoIterator<Item = Timed<'a>>,
    budgets: &Budgets,
    glob: impl Fn(&str, &str) -> bool,
) -> AuditReply {
    let mut reply = AuditReply {
        warn_at: budgets.warn_at,
        ..AuditReply::default()
    };
    for t in tests {
        let rule = budgets.rules.iter().find(|r| match &r.matcher {
            Matcher::Marker(m) => t.markers.iter().any(|x| x == m),
            Matcher::Path(p) => glob(p, t.file),
            Matcher::Id(i) => glob(i, t.id),
        });
        let (budget, rule) = match rule {
            Some(r) => (r.seconds, r.matcher.describe()),
            None => (budgets.default_seconds, "default".to_owned()),
        };
        let entry = AuditEntry {
            id: t.id.to_owned(),
            seconds: t.seconds,
            budget_seconds: budget,
            rule,
        };
        if t.seconds > budget {
            reply.violations.push(entry.clone());
        } else if t.seconds >= budget * budgets.warn_at {
            reply.near_budget.push(entry.clone());
        }
        reply.tests.push(entry);
    }
    reply.checked = reply.tests.len() as u64;
    reply.tests.sort_by(|a, b| a.id.cmp(&b.id));
    let share = |e: &AuditEntry| e.seconds / e.budget_seconds;
    for list in [&mut reply.violations, &mut reply.near_budget] {
        list.sort_by(|a, b| share(b).total_cmp(&share(a)).then_with(|| a.id.cmp(&b.id)));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetRule;

    fn glob(pattern: &str, text: &str) -> bool {
        crate::pytest::fnmatch_str(pattern, text)
    }

    #[test]
    fn budgets_thresholds_and_rule_order() {
        // The defaults (1 s, warnings from 80%, `slow` 30 s first), then a
        // path rule and an id rule in place of `integration`.
        let mut budgets = Budgets::default();
        budgets.rules.truncate(1);
        budgets.rules.extend([
            BudgetRule {
                matcher: Matcher::Path("tests/e2e/*".into()),
                seconds: 10.0,
            },
            BudgetRule {
                matcher: Matcher::Id("*::test_big_*".into()),
                seconds: 3.0,
            },
        ]);
        let slow = ["slow".to_owned()];
        // (id, file, markers, seconds, expected: rule, "violation"/"warning"/"ok")
        type Case<'a> = (&'a str, &'a str, &'a [String], f64, &'a str, &'a str);
        let cases: &[Case] = &[
            ("t/a.py::test_unit", "t/a.py", &[], 0.5, "default", "ok"),
            (
                "t/a.py::test_unit_warn",
                "t/a.py",
                &[],
                0.8,
                "default",
                "warning",
            ),
            (
                "t/a.py::test_unit_over",
                "t/a.py",
                &[],
                1.2,
                "default",
                "violation",
            ),
            (
                "t/a.py::test_slow",
                "t/a.py",
                &slow,
                29.0,
                "marker slow",
                "warning",
            ),
            // The first matching rule wins: marker before path.
            (
                "tests/e2e/b.py::test_x",
                "tests/e2e/b.py",
                &slow,
                12.0,
                "marker slow",
                "ok",
            ),
            (
                "tests/e2e/b.py::test_y",
                "tests/e2e/b.py",
                &[],
                12.0,
                "path tests/e2e/*",
                "violation",
            ),
            (
                "t/c.py::test_big_one",
                "t/c.py",
                &[],
                2.0,
                "id *::test_big_*",
                "ok",
            ),
        ];
        let reply = audit(
            cases.iter().map(|(id, file, markers, seconds, ..)| Timed {
                id,
                file,
                markers,
                seconds: *seconds,
            }),
            &budgets,
            glob,
        );
        assert_eq!(reply.checked, cases.len() as u64);
        for (id, _, _, _, rule, verdict) in cases {
            let entry = reply.tests.iter().find(|e| e.id == *id).unwrap();
            assert_eq!(entry.rule, *rule, "{id}");
            let in_violations = reply.violations.iter().any(|e| e.id == *id);
            let in_warnings = reply.near_budget.iter().any(|e| e.id == *id);
            let got = match (in_violations, in_warnings) {
                (true, false) => "violation",
                (false, true) => "warning",
                (false, false) => "ok",
                _ => panic!("{id} is both"),
            };
            assert_eq!(got, *verdict, "{id}");
        }
        // Worst share first.
        assert_eq!(reply.violations[0].id, "t/a.py::test_unit_over");
    }
}
