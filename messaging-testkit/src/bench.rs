//! Benchmark results in one shape, so one command can turn every benchmark's run into
//! `docs/performance.md` without a figure typed by hand.
//!
//! A benchmark builds a [`Report`], adds [`Comparison`]s (the framework against a baseline,
//! measured run by run in the same process) and [`Measurement`]s (a figure on its own, such as
//! nanoseconds or allocations per operation), and calls [`Report::finish`]. That prints a table
//! and, when `MESSAGING_BENCH_OUT` names a directory, writes `<bench>.json` there; the
//! `perf-report` binary of this crate renders every such file into one Markdown report.
//!
//! Ratios are taken per run (framework ÷ baseline of the same run, so both sides saw the same
//! machine state) and summarised by their median with the lowest and highest run beside it.
//!
//! ```
//! use messaging_testkit::bench::{Better, Comparison, Report};
//!
//! let mut report = Report::new("example", "An example", "cargo bench --bench example");
//! report.push(
//!     Comparison::new("100 B publish", "msg/s", Better::Higher)
//!         .baseline_label("raw client")
//!         .samples(vec![1000.0, 1100.0, 900.0], vec![950.0, 1000.0, 880.0])
//!         .goal(0.9),
//! );
//! let summary = &report.comparisons()[0];
//! assert!((summary.ratio_median() - 0.950).abs() < 0.01);
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Environment variable naming the directory results are written to.
pub const OUT_DIR_VAR: &str = "MESSAGING_BENCH_OUT";

/// Which direction of a figure is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Rates: more is better; a ratio framework ÷ baseline above 1 means the framework is faster.
    Higher,
    /// Costs (time, allocations): less is better; a ratio above 1 means the framework costs more.
    Lower,
}

impl Better {
    /// How a goal in this direction reads: at least (`≥`) or at most (`≤`).
    fn bound(self) -> &'static str {
        match self {
            Better::Higher => "≥",
            Better::Lower => "≤",
        }
    }

    /// Whether `value` is on the good side of `goal` (or on it).
    pub fn meets(self, value: f64, goal: f64) -> bool {
        match self {
            Better::Higher => value >= goal,
            Better::Lower => value <= goal,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Half the range of `values` relative to their median, in percent: "± x %".
pub fn spread_percent(values: &[f64]) -> f64 {
    let m = median(values);
    if values.is_empty() || m == 0.0 {
        return 0.0;
    }
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    (hi - lo) / 2.0 / m * 100.0
}

/// The value at quantile `q` (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The framework against a baseline, one sample per run on each side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// What was measured ("100 B publish with confirms").
    pub case: String,
    /// Unit of the samples ("msg/s", "ns/msg", "ms").
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// Name of the baseline ("raw lapin").
    pub baseline_label: String,
    /// Name of the framework side.
    pub framework_label: String,
    /// Baseline samples, one per run.
    pub baseline: Vec<f64>,
    /// Framework samples, one per run, index for index with `baseline`.
    pub framework: Vec<f64>,
    /// The ratio the issue or design asks for, if any (framework ÷ baseline; at least this for
    /// [`Better::Higher`], at most this for [`Better::Lower`]).
    pub goal: Option<f64>,
    /// A note shown under the table.
    pub note: Option<String>,
}

impl Comparison {
    /// A comparison with no samples yet.
    pub fn new(case: impl Into<String>, unit: impl Into<String>, better: Better) -> Self {
        Self {
            case: case.into(),
            unit: unit.into(),
            better,
            baseline_label: "raw client".into(),
            framework_label: "messaging".into(),
            baseline: Vec::new(),
            framework: Vec::new(),
            goal: None,
            note: None,
        }
    }

    /// Names the baseline.
    #[must_use]
    pub fn baseline_label(mut self, label: impl Into<String>) -> Self {
        self.baseline_label = label.into();
        self
    }

    /// Names the framework side.
    #[must_use]
    pub fn framework_label(mut self, label: impl Into<String>) -> Self {
        self.framework_label = label.into();
        self
    }

    /// Sets the samples, one pair per run.
    ///
    /// # Panics
    ///
    /// When the two sides have different run counts: each ratio pairs one run's two sides.
    #[must_use]
    pub fn samples(mut self, baseline: Vec<f64>, framework: Vec<f64>) -> Self {
        assert_eq!(
            baseline.len(),
            framework.len(),
            "one framework sample per baseline sample"
        );
        self.baseline = baseline;
        self.framework = framework;
        self
    }

    /// Adds one run's pair of samples.
    pub fn add(&mut self, baseline: f64, framework: f64) {
        self.baseline.push(baseline);
        self.framework.push(framework);
    }

    /// Sets the goal ratio.
    #[must_use]
    pub fn goal(mut self, ratio: f64) -> Self {
        self.goal = Some(ratio);
        self
    }

    /// Sets a note.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Framework ÷ baseline, run by run.
    pub fn ratios(&self) -> Vec<f64> {
        self.baseline
            .iter()
            .zip(&self.framework)
            .map(|(b, f)| if *b == 0.0 { f64::NAN } else { f / b })
            .collect()
    }

    /// The median of the per-run ratios.
    pub fn ratio_median(&self) -> f64 {
        median(&self.ratios())
    }

    /// The lowest and highest per-run ratio.
    pub fn ratio_range(&self) -> (f64, f64) {
        self.ratios()
            .into_iter()
            .filter(|r| r.is_finite())
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r), hi.max(r)))
    }

    /// Whether the median ratio meets the goal; `None` without a goal.
    pub fn meets_goal(&self) -> Option<bool> {
        Some(self.better.meets(self.ratio_median(), self.goal?))
    }
}

/// A figure measured on its own (no baseline), one sample per run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// What was measured.
    pub case: String,
    /// Unit of the samples.
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// Samples, one per run.
    pub samples: Vec<f64>,
    /// The bound the figure must stay within (at most for [`Better::Lower`], at least for
    /// [`Better::Higher`]).
    pub goal: Option<f64>,
}

impl Measurement {
    /// A measurement from its samples.
    pub fn new(
        case: impl Into<String>,
        unit: impl Into<String>,
        better: Better,
        samples: Vec<f64>,
    ) -> Self {
        Self {
            case: case.into(),
            unit: unit.into(),
            better,
            samples,
            goal: None,
        }
    }

    /// Sets the bound.
    #[must_use]
    pub fn goal(mut self, bound: f64) -> Self {
        self.goal = Some(bound);
        self
    }

    /// The median sample.
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    /// Whether the median meets the bound; `None` without one.
    pub fn meets_goal(&self) -> Option<bool> {
        Some(self.better.meets(self.median(), self.goal?))
    }
}

/// One benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// File stem and identifier (`kafka_throughput`).
    pub bench: String,
    /// Section title.
    pub title: String,
    /// The command that produced it.
    pub command: String,
    /// What was set up: broker, message counts, settings, in order.
    pub setup: Vec<String>,
    /// Comparisons against a baseline.
    comparisons: Vec<Comparison>,
    /// Figures on their own.
    measurements: Vec<Measurement>,
    /// Free text shown after the tables (profiles, explanations of a measured gap).
    pub notes: Vec<String>,
    /// When the run ended (RFC 3339, UTC).
    pub finished_at: String,
}

impl Report {
    /// An empty report.
    pub fn new(
        bench: impl Into<String>,
        title: impl Into<String>,
        command: impl Into<String>,
    ) -> Self {
        Self {
            bench: bench.into(),
            title: title.into(),
            command: command.into(),
            setup: Vec::new(),
            comparisons: Vec::new(),
            measurements: Vec::new(),
            notes: Vec::new(),
            finished_at: String::new(),
        }
    }

    /// Adds a line describing the setup.
    pub fn setup(&mut self, line: impl Into<String>) {
        self.setup.push(line.into());
    }

    /// Adds a comparison.
    pub fn push(&mut self, comparison: Comparison) {
        self.comparisons.push(comparison);
    }

    /// Adds a measurement.
    pub fn measure(&mut self, measurement: Measurement) {
        self.measurements.push(measurement);
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The comparisons so far.
    pub fn comparisons(&self) -> &[Comparison] {
        &self.comparisons
    }

    /// The measurements so far.
    pub fn measurements(&self) -> &[Measurement] {
        &self.measurements
    }

    /// The report as Markdown: setup, a comparison table, a measurement table, notes.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## {}\n", self.title);
        let _ = writeln!(out, "`{}`\n", self.command);
        for line in &self.setup {
            let _ = writeln!(out, "- {line}");
        }
        if !self.setup.is_empty() {
            out.push('\n');
        }
        if !self.comparisons.is_empty() {
            out.push_str(
                "| case | baseline | median | messaging | median | ratio (median) | ratio range | baseline spread | goal |\n\
                 |---|---|---|---|---|---|---|---|---|\n",
            );
            for c in &self.comparisons {
                let (lo, hi) = c.ratio_range();
                let goal = match (c.goal, c.meets_goal()) {
                    (Some(g), Some(ok)) => format!("{} {g:.2} {}", c.better.bound(), verdict(ok)),
                    _ => "—".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} {} | {} | {} {} | {:.2} | {:.2}–{:.2} | ±{:.0} % | {} |",
                    c.case,
                    c.baseline_label,
                    figure(median(&c.baseline)),
                    c.unit,
                    c.framework_label,
                    figure(median(&c.framework)),
                    c.unit,
                    c.ratio_median(),
                    lo,
                    hi,
                    spread_percent(&c.baseline),
                    goal
                );
            }
            let runs = self
                .comparisons
                .iter()
                .map(|c| c.baseline.len())
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "\nRatio = messaging ÷ baseline, taken per run ({runs} runs); for times, above 1 means messaging costs more."
            );
            for c in self.comparisons.iter().filter(|c| c.note.is_some()) {
                let _ = writeln!(
                    out,
                    "\n*{}*: {}",
                    c.case,
                    c.note.as_deref().unwrap_or_default()
                );
            }
            out.push('\n');
        }
        if !self.measurements.is_empty() {
            out.push_str("| case | median | spread | runs | bound |\n|---|---|---|---|---|\n");
            for m in &self.measurements {
                let goal = match (m.goal, m.meets_goal()) {
                    (Some(g), Some(ok)) => {
                        format!(
                            "{} {} {} {}",
                            m.better.bound(),
                            figure(g),
                            m.unit,
                            verdict(ok)
                        )
                    }
                    _ => "—".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} {} | ±{:.0} % | {} | {} |",
                    m.case,
                    figure(m.median()),
                    m.unit,
                    spread_percent(&m.samples),
                    m.samples.len(),
                    goal
                );
            }
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}\n");
        }
        out
    }

    /// Prints the report and, when [`OUT_DIR_VAR`] is set, writes `<bench>.json` into that
    /// directory. Returns the file written.
    ///
    /// # Panics
    ///
    /// When the directory cannot be written: a benchmark run that was asked for its results
    /// must not end as if it had delivered them.
    pub fn finish(mut self) -> Option<PathBuf> {
        self.finished_at = now_rfc3339();
        println!("{}", self.to_markdown());
        let dir = std::env::var_os(OUT_DIR_VAR)?;
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create the benchmark output directory");
        let path = dir.join(format!("{}.json", self.bench));
        let json = serde_json::to_vec_pretty(&self).expect("a report serialises");
        std::fs::write(&path, json).expect("write the benchmark report");
        println!("results written to {}", path.display());
        Some(path)
    }

    /// Reads a report written by [`finish`](Self::finish).
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// A figure with three significant digits and thin grouping: 316 084, 1.47, 0.073.
pub fn figure(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let n = v.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                grouped.push(' ');
            }
            grouped.push(ch);
        }
        if n < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_per_run_and_goals_follow_the_direction() {
        let c = Comparison::new("x", "msg/s", Better::Higher)
            .samples(vec![100.0, 200.0, 50.0], vec![90.0, 100.0, 50.0])
            .goal(0.9);
        assert_eq!(c.ratios(), vec![0.9, 0.5, 1.0]);
        assert_eq!(c.ratio_median(), 0.9);
        assert_eq!(c.ratio_range(), (0.5, 1.0));
        assert_eq!(c.meets_goal(), Some(true));
        let cost = Comparison::new("y", "ns", Better::Lower)
            .samples(vec![100.0], vec![120.0])
            .goal(1.1);
        assert_eq!(cost.meets_goal(), Some(false));
        assert!(c.clone().goal(0.95).meets_goal() == Some(false));
    }

    #[test]
    fn medians_quantiles_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut v, 1.0), 100.0);
        assert_eq!(spread_percent(&[90.0, 100.0, 110.0]), 10.0);
    }

    #[test]
    fn figures_and_dates_are_formatted() {
        assert_eq!(figure(316_084.4), "316 084");
        assert_eq!(figure(1_000_000.0), "1 000 000");
        assert_eq!(figure(908.4), "908");
        assert_eq!(figure(4.0), "4");
        assert_eq!(figure(1.474), "1.47");
        assert_eq!(figure(0.0734), "0.073");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_429), (2025, 12, 7));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_report_round_trips_through_its_file_and_renders_goals() {
        let dir = std::env::temp_dir().join(format!("bench-{}", uuid::Uuid::new_v4().simple()));
        let mut r = Report::new("t", "T", "cmd");
        r.setup("one broker");
        r.push(
            Comparison::new("publish", "msg/s", Better::Higher)
                .samples(vec![100.0, 100.0], vec![80.0, 70.0])
                .goal(0.9),
        );
        r.measure(Measurement::new("decode", "ns", Better::Lower, vec![250.0, 260.0]).goal(300.0));
        let md = r.to_markdown();
        assert!(
            md.contains(
                "| publish | raw client | 100 msg/s | messaging | 75 msg/s | 0.75 | 0.70–0.80 |"
            ),
            "{md}"
        );
        assert!(md.contains("≥ 0.90 **missed**"), "{md}");
        assert!(
            md.contains("| decode | 255 ns | ±2 % | 2 | ≤ 300 ns met |"),
            "{md}"
        );
        let path = {
            let json = serde_json::to_vec(&r).expect("json");
            std::fs::create_dir_all(&dir).expect("dir");
            let p = dir.join("t.json");
            std::fs::write(&p, json).expect("write");
            p
        };
        let back = Report::read(&path).expect("read");
        assert_eq!(back.to_markdown(), md);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
