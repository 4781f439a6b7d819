//! The cases. Each runs on its own topics and groups and bounds every wait.

mod broker;
mod runtime;

pub use broker::*;
pub use runtime::*;

use super::Needs;

/// Every case, once: its name (the function in this module) and, in brackets, what it needs
/// of the broker beyond the basics ([`Needs`]' builder methods). The suite's tests, [`ALL`]
/// and [`needs`] are all made from this one list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($mode:ident $($args:tt)*) => {
        $crate::__conformance_expand! { $mode [$($args)*]
            publish_subscribe
            publish_to_new_topic_succeeds
            batch_publish
            many_topics
            concurrent_publishers
            competing_consumers_share_a_group
            every_group_gets_every_message
            new_group_and_older_messages
            attributes_round_trip
            typed_json_payload
            non_utf8_body
            empty_body
            large_payload_within_limit
            payload_over_limit_is_rejected [payload_limit]
            publish_after_close_fails
            receive_after_close_fails
            close_then_continue
            restart_loses_nothing
            cancelled_receive_loses_nothing
            recv_batch_returns_up_to_max
            prefetch_bounds_unsettled_deliveries
            ordering_per_key [ordering]
            ordering_per_key_across_consumers [ordering]
            ordering_survives_redelivery [ordering]
            ack_is_final
            nack_redelivers_with_next_attempt
            nack_with_delay_waits [delayed_redelivery]
            unacked_redelivered_after_deadline [ack_deadline]
            extend_deadline_prevents_redelivery [ack_deadline, extend_deadline]
            native_dead_letter_after_max_deliveries [native_dead_letter]
            undecodable_message_is_delivered_as_error [raw_publish]
            runtime_retry_honours_backoff_delays
            runtime_dead_letters_after_max_retries
            runtime_replay_delivers_again
            runtime_idempotent_consumer_absorbs_duplicates
            runtime_poison_message_does_not_block_others
            runtime_undecodable_input_is_dead_lettered [raw_publish]
            runtime_shutdown_under_load_loses_nothing
            runtime_long_handler_keeps_its_lease [ack_deadline, extend_deadline]
            request_reply_round_trip_and_timeout
        }
    };
}

/// Every case, by name.
pub const ALL: &[&str] = crate::__conformance_cases!(names);

/// What case `name` needs from the broker (nothing beyond the basics for an unknown name).
pub fn needs(name: &str) -> Needs {
    crate::__conformance_cases!(needs)
        .into_iter()
        .find(|(case, _)| *case == name)
        .map(|(_, needs)| needs)
        .unwrap_or_default()
}
