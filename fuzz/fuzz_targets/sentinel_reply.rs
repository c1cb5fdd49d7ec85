//! What the proxy reads from a sentinel: replies to its queries and event messages. A hostile
//! or broken sentinel may send anything; none of it may panic the watcher's parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel_proxy::sentinel::{client, events};

fuzz_target!(|data: &[u8]| {
    client::interpret_reply(data);
    if let Ok(text) = std::str::from_utf8(data) {
        for channel in ["+switch-master", "+selected-slave", "+promoted-slave", "+odown", "-odown"] {
            let _ = events::parse(channel, text);
        }
    }
});
