//! The reliability report: one Markdown table per broker, written between markers in
//! `docs/reliability.md` so the rest of the page stays hand-written.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::check::Verdict;

/// One drill's result.
#[derive(Debug, Clone)]
pub struct Row {
    /// The drill.
    pub drill: String,
    /// The delivery guarantee the consumer ran with.
    pub guarantee: String,
    /// The faults injected.
    pub faults: String,
    /// What the checker found.
    pub verdict: Verdict,
    /// Whether per-key order was asked for (and so checked).
    pub ordered: bool,
    /// Why the order was reported but not asserted, if it was not.
    pub order_caveat: Option<String>,
    /// Why handling by two workers at once was reported but not asserted, if it was not.
    pub overlap_caveat: Option<String>,
    /// Why duplicates were reported but not asserted in a drill that asserts none, if so.
    pub duplicates_caveat: Option<String>,
    /// The longest recovery after a fault.
    pub recovery: Option<Duration>,
    /// How long the drill ran.
    pub elapsed: Duration,
}

/// A duration as the report writes it: `850 ms`, `5.0 s`.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The table for one broker.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| drill | guarantee | messages | faults injected | lost | duplicates | two at once | max reorder | recovery | run time |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let v = &r.verdict;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.drill,
            r.guarantee,
            v.published,
            r.faults,
            v.lost.len(),
            match &r.duplicates_caveat {
                Some(why) => format!("{} (not asserted: {why})", v.duplicates),
                None => v.duplicates.to_string(),
            },
            match &r.overlap_caveat {
                Some(why) => format!("{} (not asserted: {why})", v.overlaps.len()),
                None => v.overlaps.len().to_string(),
            },
            if r.ordered {
                match &r.order_caveat {
                    Some(why) => format!("{} (not asserted: {why})", v.max_reorder),
                    None => v.max_reorder.to_string(),
                }
            } else {
                "not ordered".into()
            },
            r.recovery.map_or_else(|| "—".into(), secs),
            secs(r.elapsed),
        ));
    }
    out
}

/// Replaces the section of `broker` in the Markdown file at `path` (between
/// `<!-- drills:<broker>:begin -->` and `<!-- drills:<broker>:end -->`) with `body`.
pub fn update_section(path: &Path, broker: &str, body: &str) -> io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let begin = format!("<!-- drills:{broker}:begin -->\n");
    let end = format!("<!-- drills:{broker}:end -->");
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no {begin:?} … {end:?} markers", path.display()),
        ));
    };
    let start = b + begin.len();
    if e < start {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {broker} markers out of order", path.display()),
        ));
    }
    let updated = format!("{}{body}{}", &text[..start], &text[e..]);
    std::fs::write(path, updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_and_the_rest_kept() {
        let path = std::env::temp_dir().join(format!("drill-report-{}.md", std::process::id()));
        std::fs::write(
            &path,
            "# R\n<!-- drills:kafka:begin -->\nold\n<!-- drills:kafka:end -->\ntail\n",
        )
        .unwrap();
        let row = Row {
            drill: "kill".into(),
            guarantee: "at-least-once".into(),
            faults: "3 × SIGKILL".into(),
            verdict: Verdict {
                published: 10,
                handled: 10,
                duplicates: 2,
                ..Verdict::default()
            },
            ordered: false,
            order_caveat: None,
            overlap_caveat: None,
            duplicates_caveat: None,
            recovery: Some(Duration::from_millis(1500)),
            elapsed: Duration::from_secs(9),
        };
        update_section(&path, "kafka", &table(&[row])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# R\n<!-- drills:kafka:begin -->\n| drill |"),
            "{text}"
        );
        assert!(text.contains("| kill | at-least-once | 10 | 3 × SIGKILL | 0 | 2 | 0 | not ordered | 1.5 s | 9.0 s |"), "{text}");
        assert_eq!(secs(Duration::from_millis(30)), "30 ms");
        assert!(
            text.ends_with("<!-- drills:kafka:end -->\ntail\n"),
            "{text}"
        );
        assert!(update_section(&path, "sqs", "x").is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
