//! Splitting tests into balanced parts by their durations from history:
//! CI shards (`tim run --shard I/N`) and parallel workers. **Pure.**
//!
//! Longest processing time first (LPT): groups of tests that must stay
//! together, heaviest first, each to the part with the least work so far.
//! Its makespan is at most `4/3 - 1/(3n)` times the optimum (Graham,
//! 1969). The input is sorted before anything is decided, by (duration
//! descending, group name), so every machine that has the same history and
//! collects the same tests computes the same parts, whatever order the
//! tests were collected in.

use std::collections::BTreeMap;

/// One test to place.
#[derive(Clone, Debug, PartialEq)]
pub struct Item<'a> {
    pub id: &'a str,
    /// Tests with the same group go to the same part (an xdist_group, a
    /// module); a test alone has its own id.
    pub group: &'a str,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Parts {
    /// Test ids of each part, in their input order.
    pub parts: Vec<Vec<String>>,
    /// Expected seconds of each part.
    pub loads: Vec<f64>,
}

/// Splits `items` into `n` parts (at least 1).
pub fn lpt(items: &[Item<'_>], n: usize) -> Parts {
    let n = n.max(1);
    let mut groups: BTreeMap<&str, f64> = BTreeMap::new();
    for item in items {
        let seconds = if item.seconds.is_finite() {
            item.seconds.max(0.0)
        } else {
            0.0
        };
        *groups.entry(item.group).or_default() += seconds;
    }
    let mut order: Vec<(&str, f64)> = groups.into_iter().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut loads = vec![0.0f64; n];
    let mut part_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (group, seconds) in order {
        let lightest = (0..n)
            .min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))
            .expect("n >= 1");
        loads[lightest] += seconds;
        part_of.insert(group, lightest);
    }
    let mut parts = vec![Vec::new(); n];
    for item in items {
        parts[part_of[item.group]].push(item.id.to_owned());
    }
    Parts { parts, loads }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(durations: &[(&'static str, &'static str, f64)]) -> Vec<Item<'static>> {
        durations
            .iter()
            .map(|&(id, group, seconds)| Item { id, group, seconds })
            .collect()
    }

    /// The best makespan, by trying every assignment (small inputs only).
    fn optimum(groups: &[f64], n: usize) -> f64 {
        let mut best = f64::INFINITY;
        let total = n.pow(groups.len() as u32);
        for code in 0..total {
            let mut loads = vec![0.0; n];
            let mut c = code;
            for g in groups {
                loads[c % n] += g;
                c /= n;
            }
            best = best.min(loads.iter().cloned().fold(0.0, f64::max));
        }
        best
    }

    #[test]
    fn parts_are_within_the_lpt_bound_of_the_optimum() {
        // Fixture histories: skewed, uniform, and the classic bad case.
        let cases: &[(&[f64], usize)] = &[
            (&[30.0, 1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 0.5], 2),
            (&[1.0; 9], 2),
            (&[3.0, 3.0, 2.0, 2.0, 2.0], 2),
            (&[7.0, 7.0, 6.0, 6.0, 5.0, 5.0, 4.0, 4.0, 4.0], 4),
            (&[0.1, 0.2, 0.3, 4.0, 0.5, 0.6, 0.7, 0.8], 3),
        ];
        for (durations, n) in cases {
            let ids: Vec<String> = (0..durations.len()).map(|i| format!("t{i}")).collect();
            let list: Vec<Item> = ids
                .iter()
                .zip(durations.iter())
                .map(|(id, &seconds)| Item {
                    id,
                    group: id,
                    seconds,
                })
                .collect();
            let parts = lpt(&list, *n);
            let makespan = parts.loads.iter().cloned().fold(0.0, f64::max);
            let best = optimum(durations, *n);
            let bound = 4.0 / 3.0 - 1.0 / (3.0 * *n as f64);
            assert!(
                makespan <= best * bound + 1e-9,
                "{durations:?} on {n}: {makespan} vs optimum {best}"
            );
            let placed: usize = parts.parts.iter().map(Vec::len).sum();
            assert_eq!(placed, durations.len());
        }
    }

    #[test]
    fn the_same_tests_in_any_order_give_the_same_parts() {
        let list = items(&[
            ("a", "a", 3.0),
            ("b", "b", 3.0),
            ("c", "c", 2.0),
            ("d", "d", 2.0),
            ("e", "e", 1.0),
            ("f", "f", 1.0),
        ]);
        let first = lpt(&list, 3);
        let mut reversed = list.clone();
        reversed.reverse();
        let second = lpt(&reversed, 3);
        let sorted = |p: &Parts| {
            p.parts
                .iter()
                .map(|part| {
                    let mut part = part.clone();
                    part.sort();
                    part
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sorted(&first), sorted(&second));
        assert_eq!(first.loads, second.loads);
        assert_eq!(first.loads, [4.0, 4.0, 4.0]);
    }

    #[test]
    fn grouped_tests_stay_together() {
        let list = items(&[
            ("m1::a", "m1", 1.0),
            ("m1::b", "m1", 1.0),
            ("m1::c", "m1", 1.0),
            ("m2::a", "m2", 2.0),
            ("lone", "lone", 2.5),
        ]);
        let parts = lpt(&list, 2);
        let with = |id: &str| parts.parts.iter().position(|p| p.iter().any(|x| x == id));
        assert_eq!(with("m1::a"), with("m1::b"));
        assert_eq!(with("m1::a"), with("m1::c"));
        assert_eq!(parts.loads.iter().sum::<f64>(), 7.5);
        // Input order is kept inside a part.
        let m1 = &parts.parts[with("m1::a").unwrap()];
        let pos = |id: &str| m1.iter().position(|x| x == id).unwrap();
        assert!(pos("m1::a") < pos("m1::b") && pos("m1::b") < pos("m1::c"));
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(lpt(&[], 3).parts, vec![Vec::<String>::new(); 3]);
        let one = items(&[("a", "a", f64::NAN), ("b", "b", -1.0)]);
        let parts = lpt(&one, 0);
        assert_eq!(parts.parts.len(), 1, "at least one part");
        assert_eq!(parts.loads, [0.0]);
    }
}
