//! Names of the queues the adapter declares, injective in what they are derived from.
//!
//! A group's queue is [`group_resource`](messaging_core::naming::group_resource) of the topic
//! and the group with separator `.` and marker `~`: `<topic>.<group>` while the group has
//! neither `.` nor `~` (the names every earlier version used), otherwise
//! `<topic>.<group>~<hash>`. A delay queue is the group queue's name followed by
//! `~delay-<ms>ms`: its last `.`-separated segment holds a `~` and ends in `ms`, so it is
//! neither a plain group queue name (no `~` in the last segment) nor a hashed one (ends in
//! `~` and ten hex digits), and no topic or group can take it.

use messaging_core::naming::{self, HASH_LEN, Naming};

/// How RabbitMQ queue names are derived: `.` joins, `~` marks a hash, 255 bytes at most.
pub(crate) const NAMING: Naming = Naming {
    separator: '.',
    marker: '~',
    max_len: 255,
};

/// The queue of `group` on `topic`.
pub(crate) fn queue_name(topic: &str, group: &str) -> String {
    naming::group_resource(&NAMING, topic, group)
}

/// The queue earlier versions gave `group` on `topic`: always the plain join
/// `<topic>.<group>`. Differs from [`queue_name`] for groups with `.` or `~` (and joins over
/// 255 bytes, which RabbitMQ refused then).
pub(crate) fn legacy_queue_name(topic: &str, group: &str) -> String {
    format!("{topic}.{group}")
}

/// The topics other than `topic` whose group earlier versions could also have given the
/// queue `<topic>.<group>`: every prefix of it ending before a `.`, except `topic`. Those
/// longer than `topic` come first.
pub(crate) fn other_owners(topic: &str, group: &str) -> Vec<String> {
    let join = legacy_queue_name(topic, group);
    let mut longer = Vec::new();
    let mut shorter = Vec::new();
    for (i, _) in join.match_indices('.') {
        let t = &join[..i];
        if t.is_empty() || t == topic || i + 1 >= join.len() {
            continue;
        }
        if t.len() > topic.len() {
            longer.push(t.to_owned());
        } else {
            shorter.push(t.to_owned());
        }
    }
    longer.extend(shorter);
    longer
}

/// The queue of `group` on `topic` when its plain name is an earlier version's queue that
/// another group keeps: the hashed form `<topic>.<group>~<hash>`, which no other pair takes.
pub(crate) fn displaced_queue_name(topic: &str, group: &str) -> String {
    let suffix = format!("{}{}", NAMING.marker, naming::short_hash(&[topic, group]));
    let plain = legacy_queue_name(topic, group);
    let mut end = NAMING.max_len.saturating_sub(suffix.len()).min(plain.len());
    while !plain.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &plain[..end])
}

/// The delay queue of the group queue `queue` for messages waiting `ms` milliseconds.
pub(crate) fn delay_queue_name(queue: &str, ms: u64) -> String {
    delay_name(&NAMING, queue, ms)
}

fn delay_name(naming: &Naming, queue: &str, ms: u64) -> String {
    let suffix = format!("{}delay-{ms}ms", naming.marker);
    if queue.len() + suffix.len() <= naming.max_len {
        return format!("{queue}{suffix}");
    }
    // Too long: a prefix of the queue's name, then the marker and a hash of the whole name.
    let room = naming
        .max_len
        .saturating_sub(suffix.len() + 1 + HASH_LEN)
        .min(queue.len());
    let mut end = room;
    while !queue.is_char_boundary(end) {
        end -= 1;
    }
    let hash = naming::short_hash(&[queue]);
    format!("{}{}{hash}{suffix}", &queue[..end], naming.marker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn existing_names_are_kept() {
        assert_eq!(queue_name("orders", "billing"), "orders.billing");
        assert_eq!(
            queue_name("orders.v1", "dead-letters"),
            "orders.v1.dead-letters"
        );
        assert_eq!(
            delay_queue_name("orders.billing", 1200),
            "orders.billing~delay-1200ms"
        );
    }

    #[test]
    fn earlier_names_and_their_other_owners() {
        assert_eq!(
            legacy_queue_name("t", "com.acme.billing"),
            "t.com.acme.billing"
        );
        assert_eq!(
            other_owners("t", "com.acme.billing"),
            vec!["t.com".to_owned(), "t.com.acme".to_owned()]
        );
        assert_eq!(
            other_owners("a.b", "c.d"),
            vec!["a.b.c".to_owned(), "a".to_owned()]
        );
        assert!(other_owners("orders", "billing").is_empty());
        let d = displaced_queue_name("t.com.acme", "billing");
        assert!(d.starts_with("t.com.acme.billing~"), "{d}");
        assert_ne!(d, queue_name("t", "com.acme.billing"));
        assert_ne!(d, queue_name("t.com", "acme.billing"));
        assert!(displaced_queue_name(&"x".repeat(300), "g").len() <= 255);
    }

    #[test]
    fn long_delay_names_fit() {
        let queue = "q".repeat(255);
        let a = delay_queue_name(&queue, 1000);
        assert!(a.len() <= 255, "{a}");
        assert!(a.ends_with("~delay-1000ms"), "{a}");
        let mut other = queue.clone();
        other.replace_range(254.., "r");
        assert_ne!(a, delay_queue_name(&other, 1000));
    }

    fn part() -> impl Strategy<Value = String> {
        // Small alphabet so separators, markers and the delay suffix's letters are frequent.
        proptest::string::string_regex("[ad.~\\-ms0-9]{0,8}").unwrap()
    }

    proptest! {
        #[test]
        fn delay_queues_never_take_a_group_queue_name(
            t1 in part(), g1 in part(), ms1 in 0u64..100_000,
            t2 in part(), g2 in part(), ms2 in 0u64..100_000,
        ) {
            for naming in [NAMING, Naming { max_len: 40, ..NAMING }] {
                let q1 = naming::group_resource(&naming, &t1, &g1);
                let q2 = naming::group_resource(&naming, &t2, &g2);
                let (d1, d2) = (delay_name(&naming, &q1, ms1), delay_name(&naming, &q2, ms2));
                prop_assert!(d1.len() <= naming.max_len, "{}", d1);
                prop_assert_ne!(&d1, &q2, "a delay queue named like a group queue");
                if (&t1, &g1, ms1) != (&t2, &g2, ms2) {
                    prop_assert_ne!(d1, d2, "two delay queues share a name");
                }
            }
        }
    }
}
