//! The server → client boundary tracker on arbitrary bytes: it must never panic, and wherever
//! the input is cut, the result must equal feeding it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel_proxy::resp::ReplyTracker;

fuzz_target!(|input: &[u8]| {
    let Some((&head, data)) = input.split_first() else {
        return;
    };
    let cut = if data.is_empty() { 0 } else { head as usize * 7 % data.len() };
    let mut whole = ReplyTracker::new();
    let whole_ok = whole.feed(data).is_ok();
    let mut split = ReplyTracker::new();
    let split_ok = split.feed(&data[..cut]).is_ok() && split.feed(&data[cut..]).is_ok();
    assert_eq!(whole_ok, split_ok, "an error must not depend on the cut");
    if whole_ok {
        assert_eq!(
            (whole.replies, whole.pushes, whole.errors, whole.saw_not_master, whole.at_reply_boundary()),
            (split.replies, split.pushes, split.errors, split.saw_not_master, split.at_reply_boundary())
        );
    }
});
