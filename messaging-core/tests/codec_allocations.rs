//! Heap allocations per decode and encode, counted exactly: the codec runs once per message on
//! every consumer, so an allocation added there is paid by every user. One test function in
//! this binary, so no other test allocates while a region is counted.

use std::alloc::System;

use messaging_core::{Binding, ContentMode, EventBuilder};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn allocations<T>(op: impl FnOnce() -> T) -> usize {
    let region = Region::new(GLOBAL);
    let out = op();
    let n = region.change().allocations;
    drop(out);
    n
}

#[test]
fn decoding_a_json_event_allocates_only_the_event_fields() {
    let event = EventBuilder::new("/orders/eu-west-1", "com.example.order.created")
        .id("6f1c2e0a-8d5b-4b7e-9a3f-2c1d0e9b8a7f")
        .json(&serde_json::json!({"orderId": "ORD-5678", "amount": 99.99, "currency": "USD"}))
        .build()
        .expect("event");
    for binding in [Binding::kafka(), Binding::amqp()] {
        let encoded = binding
            .encode(&event, ContentMode::Binary)
            .expect("encode")
            .into_raw();
        let ct = encoded.content_type.as_deref();
        let headers = || {
            encoded
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
        };
        // id, source, type and datacontenttype; the owned body becomes the data.
        let body = encoded.body.clone();
        let owned = allocations(|| {
            binding
                .decode_parts_owned(ct, headers(), body)
                .expect("decodes")
        });
        assert!(
            owned <= 4,
            "{binding:?}: decoding with the body handed over allocated {owned} times"
        );
        // The same, plus the copy of a lent body.
        let borrowed = allocations(|| {
            binding
                .decode_parts(ct, headers(), &encoded.body)
                .expect("decodes")
        });
        assert!(
            borrowed <= 5,
            "{binding:?}: decoding a lent body allocated {borrowed} times"
        );
        // The binary-mode encoder borrows the event's strings and data.
        let encode = allocations(|| binding.encode(&event, ContentMode::Binary).expect("encode"));
        assert!(
            encode <= 2,
            "{binding:?}: binary encode allocated {encode} times"
        );
    }
}
