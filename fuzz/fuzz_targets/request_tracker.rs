//! The client → server boundary tracker on arbitrary bytes: it must never panic, the valid
//! prefix it reports must lie within the chunk, and wherever the input is cut, the result must
//! equal feeding it whole. Half the inputs run in pooled mode, where it must stop at the same
//! pinning request (`pin`, `pin_start`, `boundary` within the chunk), but for a transaction: one
//! that arrives whole shares, one cut across the two feeds pins at its MULTI, never later.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel_proxy::resp::{Mode, RequestTracker};

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

    let pool = head & 1 == 1;
    let mode = if pool { Mode::Pool } else { Mode::Own };

    let mut whole = RequestTracker::new(max_bulk);
    whole.mode = mode;
    let whole_ok = whole.feed(data).is_ok();
    assert!(whole.boundary as usize <= data.len());

    let mut split = RequestTracker::new(max_bulk);
    split.mode = mode;
    let mut split_ok = true;
    let mut offset = 0;
    let mut pinned_at = None;
    for chunk in [&data[..cut], &data[cut..]] {
        if split.pin.is_some() {
            break; // a pooled session feeds nothing after a pin
        }
        if let Err((_, valid)) = split.feed(chunk) {
            assert!(valid <= chunk.len());
            split_ok = false;
            break;
        }
        assert!(split.boundary as usize <= chunk.len());
        if split.pin.is_some() {
            pinned_at = split.pin_start().map(|i| offset + i);
        }
        offset += chunk.len();
    }
    if !pool {
        assert_eq!(whole_ok, split_ok, "an error must not depend on the cut");
    }
    let transaction = data.windows(5).any(|w| w.eq_ignore_ascii_case(b"MULTI"));
    if pool && transaction {
        if let (Some(w), Some(s)) = (whole.pin_start(), pinned_at) {
            assert!(s <= w, "a cut transaction pins at its MULTI, never later");
        }
        return;
    }
    if whole_ok && split_ok {
        assert_eq!(state(&whole), state(&split));
        assert_eq!(whole.pin, split.pin, "the pin must not depend on the cut");
        if let (Some(w), Some(s)) = (whole.pin_start(), pinned_at) {
            assert_eq!(w, s);
        }
    }
});
