//! SNS topic and SQS queue names derived from core topic and group names.
//!
//! SNS and SQS allow letters, digits, `-` and `_` (and a `.fifo` suffix); queue names are at
//! most 80 characters, topic names 256. A name that fits is used as is; otherwise characters
//! outside that set become `_`, the name is cut to fit, and a stable 64-bit FNV-1a hash of the
//! original is appended, so different core names never share a queue.

const QUEUE_MAX: usize = 80;
const TOPIC_MAX: usize = 256;
const FIFO: &str = ".fifo";

/// FNV-1a, 64 bit: stable across processes and Rust versions.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn valid(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `base` made valid within `max` characters (before the `.fifo` suffix).
fn fit(base: &str, hash_of: &[&str], max: usize, fifo: bool) -> String {
    let max = if fifo { max - FIFO.len() } else { max };
    let mut name = if !base.is_empty() && base.len() <= max && base.chars().all(valid) {
        base.to_owned()
    } else {
        let suffix = format!("-{:016x}", fnv1a(hash_of));
        let keep = max - suffix.len();
        let mut s: String = base
            .chars()
            .map(|c| if valid(c) { c } else { '_' })
            .take(keep)
            .collect();
        s.push_str(&suffix);
        s
    };
    if fifo {
        name.push_str(FIFO);
    }
    name
}

/// `topic` without a `.fifo` suffix.
fn stem(topic: &str) -> &str {
    topic.strip_suffix(FIFO).unwrap_or(topic)
}

/// The SNS topic name of `topic`.
pub(crate) fn topic_name(topic: &str, fifo: bool) -> String {
    fit(stem(topic), &[topic], TOPIC_MAX, fifo)
}

/// The SQS queue name of `group` on `topic` (`<topic>-<group>`).
pub(crate) fn group_queue_name(topic: &str, group: &str, fifo: bool) -> String {
    let base = format!("{}-{group}", stem(topic));
    fit(&base, &[topic, group], QUEUE_MAX, fifo)
}

/// The SQS queue name of a point-to-point `topic`.
pub(crate) fn queue_name(topic: &str, fifo: bool) -> String {
    fit(stem(topic), &[topic], QUEUE_MAX, fifo)
}

/// A FIFO message group or deduplication id: `s` if it is 1-128 printable ASCII characters,
/// else a hash of it.
pub(crate) fn fifo_id(s: &str) -> String {
    if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
        s.to_owned()
    } else {
        format!("h-{:016x}", fnv1a(&[s]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_fit_are_kept() {
        assert_eq!(topic_name("orders", false), "orders");
        assert_eq!(topic_name("orders", true), "orders.fifo");
        assert_eq!(topic_name("orders.fifo", true), "orders.fifo");
        assert_eq!(
            group_queue_name("orders", "billing", false),
            "orders-billing"
        );
        assert_eq!(queue_name("jobs", true), "jobs.fifo");
    }

    #[test]
    fn other_names_are_made_valid_short_and_distinct() {
        let a = topic_name("orders.dlq", false);
        let b = topic_name("orders_dlq", false);
        assert_ne!(a, b);
        assert!(a.starts_with("orders_dlq-"), "{a}");
        let long = "x".repeat(100);
        let q = group_queue_name(&long, "g", true);
        assert_eq!(q.len(), 80);
        assert!(q.ends_with(".fifo"));
        assert_ne!(q, group_queue_name(&long, "h", true));
        // Stable: the same input gives the same name in every process.
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn fifo_ids_are_valid() {
        assert_eq!(fifo_id("ORD-1"), "ORD-1");
        assert!(fifo_id("with space").starts_with("h-"));
        assert!(fifo_id(&"y".repeat(200)).len() <= 128);
    }
}
