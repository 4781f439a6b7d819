//! The checker: what the record says about the promises.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::record::{Line, WorkerRecord};
use crate::workload::Published;

/// One run of a handler on one event, by one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handling {
    /// The worker.
    pub worker: String,
    /// When the handler started.
    pub start: u64,
    /// When it finished; `None` if its worker died or stopped first.
    pub end: Option<u64>,
}

/// What the record shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Publishes that returned `Ok`.
    pub published: usize,
    /// Of those, how many were handled to the end at least once.
    pub handled: usize,
    /// Ids published with `Ok` and never handled to the end.
    pub lost: Vec<String>,
    /// Handlings to the end beyond the first, over all events: the duplicate side effects.
    pub duplicates: usize,
    /// Events handled by two workers at overlapping times: `(id, worker, worker)`.
    pub overlaps: Vec<(String, String, String)>,
    /// Events whose first handling started after that of a later event of the same key.
    pub order_violations: usize,
    /// The largest such step back, in positions within the key.
    pub max_reorder: u64,
}

impl Verdict {
    /// Nothing lost; nothing handled by two workers at once if `exclusive`; order kept if
    /// `ordered`.
    pub fn problems(&self, ordered: bool, exclusive: bool) -> Vec<String> {
        let mut out = Vec::new();
        if !self.lost.is_empty() {
            let some: Vec<_> = self.lost.iter().take(10).collect();
            out.push(format!("{} lost, e.g. {some:?}", self.lost.len()));
        }
        if exclusive && !self.overlaps.is_empty() {
            let some: Vec<_> = self.overlaps.iter().take(5).collect();
            out.push(format!(
                "{} handled by two workers at once, e.g. {some:?}",
                self.overlaps.len()
            ));
        }
        if ordered && self.order_violations > 0 {
            out.push(format!(
                "{} handled before an earlier event of their key (max {} back)",
                self.order_violations, self.max_reorder
            ));
        }
        out
    }
}

/// Every handling of every event, by id.
pub fn handlings(records: &[WorkerRecord]) -> HashMap<String, Vec<Handling>> {
    let mut out: HashMap<String, Vec<Handling>> = HashMap::new();
    for record in records {
        let mut open: HashMap<&str, usize> = HashMap::new();
        for line in &record.lines {
            match line {
                Line::Start(m) => {
                    let list = out.entry(m.id.clone()).or_default();
                    list.push(Handling {
                        worker: record.worker.clone(),
                        start: m.at,
                        end: None,
                    });
                    open.insert(&m.id, list.len() - 1);
                }
                Line::End(m) => {
                    if let Some(i) = open.remove(m.id.as_str()) {
                        if let Some(h) = out.get_mut(&m.id).and_then(|l| l.get_mut(i)) {
                            h.end = Some(m.at);
                        }
                    }
                }
                Line::Exit { .. } | Line::Killed(_) => {}
            }
        }
    }
    out
}

/// Checks the record of a drill against what was published.
pub fn check(published: &[Published], records: &[WorkerRecord]) -> Verdict {
    let all = handlings(records);
    let stopped: HashMap<&str, u64> = records
        .iter()
        .filter_map(|r| r.stopped_at().map(|at| (r.worker.as_str(), at)))
        .collect();
    let mut verdict = Verdict {
        published: published.len(),
        ..Verdict::default()
    };
    let mut seen = HashSet::new();
    for p in published {
        if !seen.insert(p.id.as_str()) {
            continue;
        }
        let done = all
            .get(&p.id)
            .map_or(0, |hs| hs.iter().filter(|h| h.end.is_some()).count());
        if done == 0 {
            verdict.lost.push(p.id.clone());
        } else {
            verdict.handled += 1;
            verdict.duplicates += done - 1;
        }
    }
    verdict.published = seen.len();
    for (id, hs) in &all {
        // A handling cut off by its worker's death or exit ended then at the latest.
        let until = |h: &Handling| {
            h.end
                .or_else(|| stopped.get(h.worker.as_str()).copied())
                .unwrap_or(u64::MAX)
        };
        for (i, a) in hs.iter().enumerate() {
            for b in &hs[i + 1..] {
                if a.worker != b.worker && a.start < until(b) && b.start < until(a) {
                    verdict
                        .overlaps
                        .push((id.clone(), a.worker.clone(), b.worker.clone()));
                }
            }
        }
    }
    verdict.overlaps.sort();
    let mut by_key: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for p in published {
        if let Some(first) = all
            .get(&p.id)
            .and_then(|hs| hs.iter().map(|h| h.start).min())
        {
            by_key.entry(&p.key).or_default().push((first, p.seq));
        }
    }
    for starts in by_key.values_mut() {
        starts.sort_unstable();
        starts.dedup();
        let mut highest = None::<u64>;
        for &(_, seq) in starts.iter() {
            match highest {
                Some(h) if seq < h => {
                    verdict.order_violations += 1;
                    verdict.max_reorder = verdict.max_reorder.max(h - seq);
                }
                _ => highest = Some(highest.map_or(seq, |h| h.max(seq))),
            }
        }
    }
    verdict
}

/// What happened after a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The work the fault cut off was done again, this long after the fault (the latest).
    Redone(Duration),
    /// Nothing was cut off; another worker handled an event this long after the fault.
    Continued(Duration),
    /// Nothing was cut off and nothing was left to handle after the fault.
    NothingLeft,
    /// Work the fault cut off was never done.
    Never,
}

impl Recovery {
    /// The time it took, if anything was left to recover.
    pub fn time(self) -> Option<Duration> {
        match self {
            Self::Redone(d) | Self::Continued(d) => Some(d),
            Self::NothingLeft | Self::Never => None,
        }
    }
}

/// How long after `fault_at` the group was settling again without `victim`: the latest first
/// completion, after the fault, of an event whose handling on `victim` was cut off by it (an
/// event already completed before the fault was not cut-off work); with nothing cut off, the
/// first completion after the fault by another worker.
pub fn recovery(records: &[WorkerRecord], victim: &str, fault_at: u64) -> Recovery {
    let all = handlings(records);
    let first_end_after = |hs: &[Handling]| {
        hs.iter()
            .filter_map(|h| h.end)
            .filter(|&end| end >= fault_at)
            .min()
    };
    let cut: Vec<&Vec<Handling>> = all
        .values()
        .filter(|hs| {
            hs.iter()
                .any(|h| h.worker == victim && h.end.is_none() && h.start <= fault_at)
                && !hs.iter().any(|h| h.end.is_some_and(|end| end < fault_at))
        })
        .collect();
    let since = |at: u64| Duration::from_nanos(at.saturating_sub(fault_at));
    if cut.is_empty() {
        let others: Vec<Handling> = all
            .values()
            .flatten()
            .filter(|h| h.worker != victim)
            .cloned()
            .collect();
        return first_end_after(&others)
            .map_or(Recovery::NothingLeft, |at| Recovery::Continued(since(at)));
    }
    match cut
        .iter()
        .map(|hs| first_end_after(hs))
        .collect::<Option<Vec<u64>>>()
    {
        Some(ends) => Recovery::Redone(since(ends.into_iter().max().unwrap_or(fault_at))),
        None => Recovery::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Mark;

    fn published(n: u64) -> Vec<Published> {
        (0..n)
            .map(|seq| Published {
                id: format!("k-{seq}"),
                key: "k".into(),
                seq,
                poison: None,
            })
            .collect()
    }

    fn mark(seq: u64, at: u64) -> Mark {
        Mark {
            id: format!("k-{seq}"),
            key: "k".into(),
            seq,
            at,
        }
    }

    fn done(worker: &str, runs: &[(u64, u64, u64)]) -> WorkerRecord {
        let mut lines = Vec::new();
        for &(seq, start, end) in runs {
            lines.push(Line::Start(mark(seq, start)));
            lines.push(Line::End(mark(seq, end)));
        }
        WorkerRecord {
            worker: worker.into(),
            lines,
        }
    }

    #[test]
    fn a_clean_record_passes() {
        let v = check(
            &published(3),
            &[done("a", &[(0, 1, 2), (1, 3, 4), (2, 5, 6)])],
        );
        assert_eq!(v.handled, 3);
        assert!(v.problems(true, true).is_empty(), "{v:?}");
        assert_eq!(v.duplicates, 0);
    }

    #[test]
    fn a_message_never_finished_is_lost() {
        let mut a = done("a", &[(0, 1, 2)]);
        a.lines.push(Line::Start(mark(1, 3)));
        a.lines.push(Line::Killed(4));
        let v = check(&published(2), &[a]);
        assert_eq!(v.lost, vec!["k-1".to_owned()]);
        assert_eq!(v.problems(false, true).len(), 1);
    }

    #[test]
    fn duplicates_are_counted() {
        let v = check(
            &published(2),
            &[
                done("a", &[(0, 1, 2), (1, 3, 4)]),
                done("b", &[(1, 10, 11)]),
            ],
        );
        assert_eq!(v.duplicates, 1);
        assert!(
            v.problems(true, true).is_empty(),
            "a sequential duplicate is allowed: {v:?}"
        );
    }

    #[test]
    fn two_workers_at_once_is_an_overlap_even_when_one_was_killed() {
        let v = check(
            &published(1),
            &[done("a", &[(0, 1, 5)]), done("b", &[(0, 4, 6)])],
        );
        assert_eq!(v.overlaps.len(), 1, "{v:?}");
        let mut a = WorkerRecord {
            worker: "a".into(),
            lines: vec![Line::Start(mark(0, 1)), Line::Killed(5)],
        };
        let b = done("b", &[(0, 4, 6)]);
        assert_eq!(
            check(&published(1), &[a.clone(), b.clone()]).overlaps.len(),
            1
        );
        a.lines[1] = Line::Killed(3);
        assert!(check(&published(1), &[a, b]).overlaps.is_empty());
    }

    #[test]
    fn order_violations_count_the_step_back() {
        let v = check(
            &published(3),
            &[done("a", &[(2, 1, 2), (0, 3, 4), (1, 5, 6)])],
        );
        assert_eq!(v.order_violations, 2);
        assert_eq!(v.max_reorder, 2);
        assert_eq!(v.problems(true, true).len(), 1);
        assert!(v.problems(false, true).is_empty());
    }

    #[test]
    fn recovery_waits_for_the_work_the_fault_cut_off() {
        let mut a = done("a", &[(0, 1, 2)]);
        a.lines.push(Line::Start(mark(1, 3)));
        a.lines.push(Line::Killed(1_000));
        let b = done("b", &[(2, 1_100, 1_200), (1, 5_000, 6_000)]);
        let r = recovery(&[a.clone(), b], "a", 1_000);
        assert_eq!(r, Recovery::Redone(Duration::from_nanos(5_000)));
        assert_eq!(
            recovery(&[a.clone()], "a", 1_000),
            Recovery::Never,
            "never redone"
        );
        let c = done("c", &[(0, 1, 2)]);
        let d = done("d", &[(1, 1_500, 1_700)]);
        assert_eq!(
            recovery(&[c.clone(), d], "c", 1_000),
            Recovery::Continued(Duration::from_nanos(700)),
            "nothing cut off: the next completion by another worker"
        );
        assert_eq!(recovery(&[c], "c", 1_000), Recovery::NothingLeft);
        // A cut-off redelivery of an event completed before the fault is not cut-off work.
        let earlier = done("e", &[(1, 100, 200)]);
        assert_eq!(
            recovery(&[a, earlier], "a", 1_000),
            Recovery::NothingLeft,
            "{:?}",
            "k-1 was done before the fault"
        );
    }
}
