//! What the resolver of a group (`watcher.rs`) is told, on one channel so that its decisions never
//! race: events from the sentinels' subscriptions (`subscription.rs`, `hub.rs`), a subscription
//! coming up or going down, a poll's answers, and the promotion watch's news.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::client::{ClientError, SentinelAnswer};
use super::events::Event;
use crate::config::HostPort;

pub(crate) enum Msg {
    Event {
        event: Event,
        at: Instant,
    },
    /// A poll's answers, each with the sentinel that gave it (the known list may change while
    /// a poll is out: answers are matched by address, never by position).
    Polled(Vec<(HostPort, Result<SentinelAnswer, ClientError>)>),
    /// A sentinel's subscription came up (events may have been missed: look again) or went
    /// down (`hub.rs`).
    Subscription {
        sentinel: HostPort,
        up: bool,
        error: Option<String>,
    },
    /// The promotion watch saw the selected replica answer `ROLE` as master.
    Promoted {
        addr: SocketAddr,
        at: Instant,
    },
}
