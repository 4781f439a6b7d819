//! Broker resource names derived from a topic and a group, made injective.
//!
//! Adapters name per-group resources by joining the topic and the group (`orders.billing` for a
//! RabbitMQ queue, `orders-billing` for an SQS queue, `orders.billing.retry.5s` for a Kafka
//! retry topic). A plain join is not injective: topic `a.b` with group `c` and topic `a` with
//! group `b.c` would share one queue, bound to both topics. [`group_resource`] keeps the plain
//! join where it is unambiguous — the group contains neither the separator nor the marker, so
//! the group is everything after the last separator — and otherwise appends the marker and a
//! hash of the pair. The two forms cannot meet: a plain name's last segment has no marker, a
//! hashed name's last segment has one; two hashed names differ unless SHA-256 collides in its
//! first 40 bits *and* the rest of the name is equal.
//!
//! ```
//! use messaging_core::naming::{Naming, group_resource};
//!
//! let rabbit = Naming { separator: '.', marker: '~', max_len: 255 };
//! assert_eq!(group_resource(&rabbit, "orders.v1", "billing"), "orders.v1.billing");
//! assert_ne!(
//!     group_resource(&rabbit, "a.b", "c"),
//!     group_resource(&rabbit, "a", "b.c"),
//! );
//! ```

use sha2::{Digest, Sha256};

/// How one broker joins a topic and a group into a resource name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Naming {
    /// Joins the topic and the group (`.` on RabbitMQ and Kafka, `-` on SQS).
    pub separator: char,
    /// Introduces the hash suffix of an ambiguous pair; must be a character the broker allows
    /// in names and that is not the separator.
    pub marker: char,
    /// Longest name the broker accepts, in bytes; longer joins are shortened and hashed.
    pub max_len: usize,
}

/// Hex digits of the hash suffix (40 bits).
pub const HASH_LEN: usize = 10;

/// The first [`HASH_LEN`] hex digits of SHA-256 over `parts`, each length-prefixed so that no
/// two different lists of parts hash the same input.
pub fn short_hash(parts: &[&str]) -> String {
    let mut out = full_hash(parts);
    out.truncate(HASH_LEN);
    out
}

/// All 64 hex digits of SHA-256 over `parts`, length-prefixed as in [`short_hash`]: for ids
/// that must not collide even among many (an SQS FIFO deduplication id from an event's
/// `source` and `id`, say), where 40 bits would not do.
pub fn full_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The name of the resource of `group` on `topic`: `{topic}{sep}{group}` when the group has
/// neither the separator nor the marker and the join fits `max_len`; otherwise
/// `{topic}{sep}{group}{marker}{hash}`, with the readable part shortened to fit.
pub fn group_resource(naming: &Naming, topic: &str, group: &str) -> String {
    let sep = naming.separator;
    let plain = format!("{topic}{sep}{group}");
    let ambiguous = group.contains(sep) || group.contains(naming.marker);
    if !ambiguous && plain.len() <= naming.max_len {
        return plain;
    }
    let suffix = format!("{}{}", naming.marker, short_hash(&[topic, group]));
    let room = naming.max_len.saturating_sub(suffix.len());
    let mut end = plain.len().min(room);
    while !plain.is_char_boundary(end) {
        end -= 1;
    }
    let mut readable = plain[..end].to_owned();
    // The readable part's last segment must still hold no marker, or a shortened plain join
    // could end like a hashed one; markers there become the separator's neighbour `_`.
    if readable.contains(naming.marker) {
        readable = readable.replace(naming.marker, "_");
    }
    format!("{readable}{suffix}")
}

/// Whether `name` is a hashed (ambiguous-pair) name under `naming`.
pub fn is_hashed(naming: &Naming, name: &str) -> bool {
    name.rsplit(naming.separator)
        .next()
        .is_some_and(|last| last.contains(naming.marker))
}

/// [`group_resource`] for brokers whose group names often hold the separator (SQS joins with
/// `-`, and groups such as `billing-service` are common): here the *topic* must be plain.
///
/// The name is `{topic}{sep}{group}` when the topic has neither the separator nor the marker
/// and the join fits `max_len` — the group may hold anything, since the topic ends at the first
/// separator. Otherwise it is `{topic'}{marker}{hash}{sep}{group'}`: `topic'` is the topic with
/// each separator replaced by the marker, and `topic'` and `group'` are shortened (the group
/// first, down to half the room) to fit. The two forms cannot meet: a plain name's first
/// segment (up to the first separator) holds no marker, a hashed name's first segment ends in
/// the marker and the hash; two hashed names differ unless SHA-256 collides in its first 40
/// bits *and* the readable parts are equal.
///
/// ```
/// use messaging_core::naming::{Naming, group_resource_topic_first};
///
/// let sqs = Naming { separator: '-', marker: '_', max_len: 80 };
/// assert_eq!(group_resource_topic_first(&sqs, "orders", "billing-service"), "orders-billing-service");
/// let hashed = group_resource_topic_first(&sqs, "order-events", "billing");
/// assert!(hashed.starts_with("order_events_") && hashed.ends_with("-billing"), "{hashed}");
/// ```
pub fn group_resource_topic_first(naming: &Naming, topic: &str, group: &str) -> String {
    let (sep, marker) = (naming.separator, naming.marker);
    let plain = format!("{topic}{sep}{group}");
    if !topic.contains(sep) && !topic.contains(marker) && plain.len() <= naming.max_len {
        return plain;
    }
    let hash = short_hash(&[topic, group]);
    let topic: String = topic.replace(sep, marker.encode_utf8(&mut [0; 4]));
    let fixed = marker.len_utf8() + HASH_LEN + sep.len_utf8();
    let room = naming.max_len.saturating_sub(fixed);
    let (mut t_keep, mut g_keep) = (topic.len(), group.len());
    if t_keep + g_keep > room {
        g_keep = g_keep.min(room.saturating_sub(t_keep).max(room / 2));
        t_keep = t_keep.min(room - g_keep);
    }
    let cut = |s: &str, mut end: usize| {
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    format!(
        "{}{marker}{}{sep}{}",
        cut(&topic, t_keep),
        hash,
        cut(group, g_keep)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RABBIT: Naming = Naming {
        separator: '.',
        marker: '~',
        max_len: 255,
    };
    const SQS: Naming = Naming {
        separator: '-',
        marker: '_',
        max_len: 80,
    };

    #[test]
    fn unambiguous_names_are_kept() {
        assert_eq!(
            group_resource(&RABBIT, "orders", "billing"),
            "orders.billing"
        );
        assert_eq!(
            group_resource(&RABBIT, "orders.v1", "billing"),
            "orders.v1.billing"
        );
        assert_eq!(group_resource(&SQS, "orders", "billing"), "orders-billing");
    }

    #[test]
    fn the_review_collision_is_gone() {
        let a = group_resource(&RABBIT, "a.b", "c");
        let b = group_resource(&RABBIT, "a", "b.c");
        assert_eq!(a, "a.b.c");
        assert_ne!(a, b);
        assert!(is_hashed(&RABBIT, &b) && !is_hashed(&RABBIT, &a));
    }

    #[test]
    fn long_names_fit() {
        let topic = "t".repeat(70);
        let n = group_resource(&SQS, &topic, "billing");
        assert!(n.len() <= 80, "{n}");
        assert_ne!(n, group_resource(&SQS, &topic, "billinh"));
    }

    /// Under every naming: names fit (`max_len`, or `floor` for tiny limits), and two
    /// different pairs never share one.
    fn check_injective(
        name: fn(&Naming, &str, &str) -> String,
        namings: &[Naming],
        floor: usize,
        (t1, g1): (&str, &str),
        (t2, g2): (&str, &str),
    ) -> Result<(), TestCaseError> {
        for naming in namings {
            let (a, b) = (name(naming, t1, g1), name(naming, t2, g2));
            prop_assert!(a.len() <= naming.max_len.max(floor), "{a}");
            if (t1, g1) != (t2, g2) {
                prop_assert_ne!(a, b, "{:?} and {:?} share a name", (t1, g1), (t2, g2));
            }
        }
        Ok(())
    }

    fn part() -> impl Strategy<Value = String> {
        // Small alphabet so separators, markers and shared prefixes are frequent.
        proptest::string::string_regex("[ab.~_-]{0,6}").unwrap()
    }

    proptest! {
        #[test]
        fn injective(t1 in part(), g1 in part(), t2 in part(), g2 in part()) {
            let namings = [RABBIT, SQS, Naming { max_len: 12, ..SQS }];
            check_injective(group_resource, &namings, HASH_LEN + 1, (&t1, &g1), (&t2, &g2))?;
        }

        #[test]
        fn topic_first_is_injective(t1 in part(), g1 in part(), t2 in part(), g2 in part()) {
            let namings = [RABBIT, SQS, Naming { max_len: 12, ..SQS }, Naming { max_len: 24, ..SQS }];
            check_injective(
                group_resource_topic_first,
                &namings,
                HASH_LEN + 2,
                (&t1, &g1),
                (&t2, &g2),
            )?;
        }
    }

    #[test]
    fn topic_first_keeps_plain_topics_and_any_group() {
        assert_eq!(
            group_resource_topic_first(&SQS, "orders", "billing-service"),
            "orders-billing-service"
        );
        assert_eq!(
            group_resource_topic_first(&SQS, "orders", "billing"),
            "orders-billing"
        );
        // The review's pair, SQS-style: the topic with a separator is the hashed one.
        let a = group_resource_topic_first(&SQS, "a-b", "c");
        let b = group_resource_topic_first(&SQS, "a", "b-c");
        assert_eq!(b, "a-b-c");
        assert_eq!(a, format!("a_b_{}-c", short_hash(&["a-b", "c"])));
        // A marker in the topic hashes too, so a plain first segment never holds one.
        assert!(group_resource_topic_first(&SQS, "a_b", "c").starts_with("a_b_"));
        let long = group_resource_topic_first(&SQS, &"t-".repeat(40), &"g".repeat(60));
        assert_eq!(long.len(), 80, "{long}");
        assert!(
            long.contains(&"g".repeat(34)),
            "the group keeps half the room: {long}"
        );
    }

    #[test]
    fn full_hash_extends_short_hash() {
        let full = full_hash(&["urn:a", "id-1"]);
        assert_eq!(full.len(), 64);
        assert!(full.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&full[..HASH_LEN], short_hash(&["urn:a", "id-1"]));
        assert_ne!(full, full_hash(&["urn:b", "id-1"]));
        assert_ne!(full_hash(&["ab", "c"]), full_hash(&["a", "bc"]));
    }
}
