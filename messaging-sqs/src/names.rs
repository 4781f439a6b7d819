//! SNS topic and SQS queue names derived from core topic and group names.
//!
//! SNS and SQS allow letters, digits, `-` and `_` (and a `.fifo` suffix); queue names are at
//! most 80 characters, topic names 256. A name that fits is used as is; otherwise characters
//! outside that set become `_`, the name is cut to fit, and a stable 64-bit FNV-1a hash of the
//! original is appended, so different core names never share a queue.
//!
//! A group's queue joins topic and group with `-`, which groups often contain
//! (`billing-service`): the join is kept only when the *topic* has neither `-` nor `_`, so the
//! topic ends at the first `-`. A topic with `-` or `_` gets
//! `{topic with - as _}_{hash}-{group}` instead
//! ([`group_resource_topic_first`]), so
//! (topic `a-b`, group `c`) and (topic `a`, group `b-c`) no longer share `a-b-c`.

use messaging_core::naming::{Naming, group_resource_topic_first, short_hash};

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

/// The SQS queue name of `group` on `topic`: `<topic>-<group>` when the topic has neither `-`
/// nor `_` (see the module docs).
///
/// Three forms, which cannot meet (short of a hash collision): the plain join (first segment
/// without `_`), the topic-first hashed form of a valid join whose topic has `-` or `_` (first
/// segment ending in `_` and 10 hex digits), and — for joins with characters SQS does not
/// allow, or longer than 80 — the earlier sanitized form with a 64-bit hash of the pair, kept
/// unchanged so those queues keep their names.
pub(crate) fn group_queue_name(topic: &str, group: &str, fifo: bool) -> String {
    let stem = stem(topic);
    let base = format!("{stem}-{group}");
    let max = if fifo {
        QUEUE_MAX - FIFO.len()
    } else {
        QUEUE_MAX
    };
    if base.len() > max || !base.chars().all(valid) {
        return fit(&base, &[topic, group], QUEUE_MAX, fifo);
    }
    let naming = Naming {
        separator: '-',
        marker: '_',
        max_len: max,
    };
    let mut name = group_resource_topic_first(&naming, stem, group);
    if fifo {
        name.push_str(FIFO);
    }
    name
}

/// The name `group_queue_name` gave before topic-first hashing: the plain join where it was
/// valid and fit. Differs from today's name only for topics with `-` or `_`.
pub(crate) fn legacy_group_queue_name(topic: &str, group: &str, fifo: bool) -> String {
    let base = format!("{}-{group}", stem(topic));
    fit(&base, &[topic, group], QUEUE_MAX, fifo)
}

/// The core topics other than `topic` whose group an earlier version could have given the
/// queue `name` — the plain join `<other>-<group>` — i.e. every prefix of `name` (without
/// `.fifo`) that ends before a `-`, other than `topic` itself. Only candidates: whether one
/// of them really holds the queue is for its subscriptions to say.
pub(crate) fn other_owners(topic: &str, name: &str) -> Vec<String> {
    let stem = stem(name);
    if stem.is_empty() || !stem.chars().all(valid) {
        return Vec::new();
    }
    let own = self::stem(topic);
    stem.match_indices('-')
        .map(|(i, _)| &stem[..i])
        .filter(|t| !t.is_empty() && *t != own && stem.len() > t.len() + 1)
        .map(str::to_owned)
        .collect()
}

/// The queue of `group` on a topic without `-` or `_` when its plain name `<topic>-<group>`
/// is still an earlier version's queue of another pair (see `other_owners`): the topic-first
/// hashed form, `{topic}_{hash}-{group}`, which no other pair takes (its first segment is
/// `topic`, the marker and the hash of this pair).
pub(crate) fn displaced_group_queue_name(topic: &str, group: &str, fifo: bool) -> String {
    let stem = stem(topic);
    let max = if fifo {
        QUEUE_MAX - FIFO.len()
    } else {
        QUEUE_MAX
    };
    let head = format!("{stem}_{}-", short_hash(&[stem, group]));
    let mut end = max.saturating_sub(head.len()).min(group.len());
    while !group.is_char_boundary(end) {
        end -= 1;
    }
    let mut name = format!("{head}{}", &group[..end]);
    if name.len() > max {
        // Only for topics near the limit, which take the sanitized form anyway.
        return fit(&format!("{stem}-{group}"), &[topic, group], QUEUE_MAX, fifo);
    }
    if fifo {
        name.push_str(FIFO);
    }
    name
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
    fn group_queue_names_are_injective() {
        // Every topic and group over a small alphabet with the separator, the marker, a
        // character SQS does not allow and a `.fifo` suffix, standard and FIFO.
        let alphabet = ['a', 'b', '-', '_', '.'];
        let mut words = vec![String::new()];
        for len in 1..=3 {
            let mut next = Vec::new();
            for w in words.iter().filter(|w| w.len() == len - 1) {
                for c in alphabet {
                    next.push(format!("{w}{c}"));
                }
            }
            words.extend(next);
        }
        words.push("a.fifo".into());
        words.push("a-b.fifo".into());
        let mut seen: std::collections::HashMap<String, (String, String)> = Default::default();
        for fifo in [false, true] {
            for t in &words {
                for g in &words {
                    let name = group_queue_name(t, g, fifo);
                    assert!(name.len() <= QUEUE_MAX, "{name}");
                    assert!(
                        name.strip_suffix(FIFO).unwrap_or(&name).chars().all(valid),
                        "{name}"
                    );
                    // `x` and `x.fifo` are one topic (the `.fifo` name is the FIFO topic).
                    let key = (stem(t).to_owned(), g.clone());
                    if let Some(prev) = seen.insert(name.clone(), key.clone()) {
                        assert_eq!(prev, key, "{prev:?} and {key:?} share {name}");
                    }
                }
            }
        }
    }

    #[test]
    fn unambiguous_queue_names_are_kept() {
        // Plain topics keep `<topic>-<group>`, whatever the group.
        for (t, g) in [
            ("orders", "billing"),
            ("orders", "billing-service"),
            ("orders", "billing_service"),
            ("Orders2", "a-b-c"),
        ] {
            assert_eq!(
                group_queue_name(t, g, false),
                legacy_group_queue_name(t, g, false)
            );
            assert_eq!(group_queue_name(t, g, true), format!("{t}-{g}.fifo"));
        }
        // Names with characters SQS does not allow, or too long, keep their earlier form.
        for (t, g) in [
            ("orders.v1", "billing"),
            ("orders.dlq", "dead-letters"),
            ("order-events.dlq", "dead-letters"),
            (&"x".repeat(100)[..], "g"),
        ] {
            for fifo in [false, true] {
                assert_eq!(
                    group_queue_name(t, g, fifo),
                    legacy_group_queue_name(t, g, fifo)
                );
            }
        }
        // Only a valid join whose topic has `-` or `_` changes.
        assert_eq!(legacy_group_queue_name("a-b", "c", false), "a-b-c");
        assert_eq!(group_queue_name("a", "b-c", false), "a-b-c");
        let moved = group_queue_name("a-b", "c", false);
        assert!(
            moved.starts_with("a_b_") && moved.ends_with("-c"),
            "{moved}"
        );
        let moved = group_queue_name("order_events", "billing", true);
        assert!(moved.starts_with("order_events_"), "{moved}");
        assert!(moved.ends_with("-billing.fifo"), "{moved}");
        assert!(moved.len() <= QUEUE_MAX);
    }

    #[test]
    fn earlier_owners_of_a_plain_name() {
        assert_eq!(other_owners("a-b", "a-b-c"), vec!["a".to_owned()]);
        assert_eq!(other_owners("a", "a-b-c"), vec!["a-b".to_owned()]);
        assert_eq!(
            other_owners("a", "a-b-c-d.fifo"),
            vec!["a-b".to_owned(), "a-b-c".to_owned()]
        );
        assert!(other_owners("orders", "orders-billing").is_empty());
        // Every other owner's earlier name is this name.
        for (t, g) in [("a-b", "c"), ("a", "b-c"), ("x_y", "p-q-r")] {
            let legacy = legacy_group_queue_name(t, g, false);
            for o in other_owners(t, &legacy) {
                let rest = &legacy[o.len() + 1..];
                assert_eq!(legacy_group_queue_name(&o, rest, false), legacy);
            }
        }
    }

    #[test]
    fn displaced_names_are_distinct_from_every_other_form() {
        let d = displaced_group_queue_name("a", "b-c", false);
        assert!(d.starts_with("a_") && d.ends_with("-b-c"), "{d}");
        assert_ne!(d, group_queue_name("a-b", "c", false));
        assert_ne!(d, group_queue_name("a", "b-c", false));
        assert_ne!(d, group_queue_name("a_", "b-c", false));
        let f = displaced_group_queue_name("a", &"g-".repeat(60), true);
        assert!(f.len() <= QUEUE_MAX && f.ends_with(FIFO), "{f}");
    }

    #[test]
    fn fifo_ids_are_valid() {
        assert_eq!(fifo_id("ORD-1"), "ORD-1");
        assert!(fifo_id("with space").starts_with("h-"));
        assert!(fifo_id(&"y".repeat(200)).len() <= 128);
    }
}
