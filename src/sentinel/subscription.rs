//! One pub/sub subscription per sentinel (`PSUBSCRIBE *`), kept alive: pinged every second, taken
//! for dead after 3 s of silence, re-made with backoff. Failover events are published only by the
//! leading sentinel, so each group's watcher follows every sentinel it knows; the subscription is
//! shared by all of them (`hub.rs`): each event goes to the groups whose master it names, with the
//! instant it arrived, and every member is told when the subscription comes up (look again: events
//! may have been missed meanwhile) or goes down.

use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::client::{ClientError, RespConn, frame_text};
use super::events;
use super::input::Msg;
use crate::Shared;
use crate::config::HostPort;

/// How often a subscription is pinged, and how long silence means it is dead.
const SUB_PING_EVERY: Duration = Duration::from_secs(1);
const SUB_DEAD_AFTER: Duration = Duration::from_secs(3);
/// A sentinel that comes back may lead the next failover at once, and its progress events are the
/// fence's early warning: look for it at least every second (a connect attempt is cheap).
const RESUBSCRIBE_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Keep one subscription to `sentinel` alive until `stop` (the last group left, or shutdown),
/// reconnecting with backoff.
pub(super) async fn subscription(sentinel: HostPort, shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = subscribe_once(&sentinel, &shared) => r,
            _ = stop.cancelled() => return,
        };
        if let Err(e) = &result {
            debug!(sentinel = %sentinel, error = %e, "sentinel subscription lost");
        }
        let error = result.err().map(|e| e.to_string());
        for m in shared.hub.set_up(&sentinel, false) {
            let _ =
                m.tx.send(Msg::Subscription {
                    sentinel: sentinel.clone(),
                    up: false,
                    error: error.clone(),
                })
                .await;
        }
        if started.elapsed() > RESUBSCRIBE_MAX_BACKOFF * 2 {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX_BACKOFF);
    }
}

async fn subscribe_once(sentinel: &HostPort, shared: &Shared) -> Result<(), ClientError> {
    let Some(auth) = shared.hub.auth(sentinel) else {
        return Ok(());
    };
    let cfg = shared.config();
    let mut conn = RespConn::connect(sentinel, &auth, cfg.sentinel_timeout).await?;
    conn.call(&[b"PSUBSCRIBE", b"*"]).await?;
    debug!(sentinel = %sentinel, "subscribed to sentinel events");
    // Events may have been missed while unsubscribed: each group looks again now.
    for m in shared.hub.set_up(sentinel, true) {
        let _ =
            m.tx.send(Msg::Subscription {
                sentinel: sentinel.clone(),
                up: true,
                error: None,
            })
            .await;
    }
    let mut ping = interval(SUB_PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = conn.read_frame() => {
                let frame = frame?;
                last_heard = Instant::now();
                if let Some((channel, payload)) = pmessage(&frame) {
                    let at = Instant::now();
                    shared.metrics.sentinel_events_total
                        .with_label_values(&[events::channel_label(channel)]).inc();
                    debug!(sentinel = %sentinel, channel, payload, "sentinel event");
                    if let Some(event) = events::parse(channel, payload) {
                        for m in shared.hub.members_for(sentinel, &event.master_name) {
                            let _ = m.tx.send(Msg::Event { event: event.clone(), at }).await;
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SUB_DEAD_AFTER {
                    return Err(ClientError::Timeout);
                }
                conn.send(&[b"PING"]).await?;
            }
        }
    }
}

/// `["pmessage", pattern, channel, payload]` → (channel, payload).
fn pmessage(frame: &OwnedFrame) -> Option<(&str, &str)> {
    let OwnedFrame::Array(items) = frame else {
        return None;
    };
    if items.len() != 4 || frame_text(&items[0]) != Some("pmessage") {
        return None;
    }
    Some((frame_text(&items[2])?, frame_text(&items[3])?))
}
