//! The client → server boundary tracker on arbitrary bytes: it must never panic, the valid
//! prefix it reports must lie within the chunk, and wherever the input is cut, the result must
//! equal feeding it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel_proxy::resp::RequestTracker;

fn state(t: &RequestTracker) -> impl PartialEq + std::fmt::Debug {
    (
        t.requests,
        t.expected_replies,
        t.at_request_boundary(),
        t.in_transaction,
        t.pubsub,
        t.monitor,
        t.blocking_seq,
        t.captured.clone(),
        t.captured_bytes.clone(),
    )
}

fuzz_target!(|input: &[u8]| {
    let Some((&head, data)) = input.split_first() else {
        return;
    };
    let max_bulk = 1u64 << (head % 40);
    let cut = if data.is_empty() { 0 } else { head as usize * 7 % data.len() };

    let mut whole = RequestTracker::new(max_bulk);
    let whole_ok = whole.feed(data).is_ok();

    let mut split = RequestTracker::new(max_bulk);
    let mut split_ok = true;
    for chunk in [&data[..cut], &data[cut..]] {
        if let Err((_, valid)) = split.feed(chunk) {
            assert!(valid <= chunk.len());
            split_ok = false;
            break;
        }
    }
    assert_eq!(whole_ok, split_ok, "an error must not depend on the cut");
    if whole_ok {
        assert_eq!(state(&whole), state(&split));
    }
});
