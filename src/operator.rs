//! What an operator asks of a group on the admin port (`admin.rs` routes and checks the token):
//!
//! - **pause**: new requests wait at request boundaries (the route's operator hold: the fence
//!   holds them as it does during a failover's pause, `route.rs`) until resume; each waits at
//!   most the wait asked (`seconds`: 30 s by default, 300 s at most), after which its client gets
//!   the no-master error (`-ERR sentinel-proxy: no master available …`) and is closed, as when no
//!   master is known. (pgbouncer's `PAUSE` with its `query_wait_timeout`.) A failover meanwhile
//!   does not lift it.
//! - **resume**: lift it: what waits goes on.
//! - **switchover**: hold, `SENTINEL FAILOVER` on the first sentinel that answers, wait until the
//!   watcher has verified the new master, lift the hold (sessions move there at their next
//!   boundary, as at any switch) and answer the timeline. Refused, with the hold lifted, when a
//!   sentinel refuses (no replica it can promote, a failover already running) or another
//!   switchover of the group runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tracing::{info, warn};

use crate::Group;
use crate::sentinel::client::{ClientError, RespConn};

/// The longest pause an operator may ask for.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);
/// The pause when none is asked.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(30);
/// How long a switchover waits for the new master to be verified.
const SWITCH_WAIT: Duration = Duration::from_secs(30);

/// A group's operator state.
#[derive(Debug, Default)]
pub struct Operator {
    /// A switchover runs.
    switching: AtomicBool,
    /// How long a request may wait in the pause (ms; 0: `DEFAULT_PAUSE`).
    wait_ms: AtomicU64,
    /// When the hold began.
    since: Mutex<Option<Instant>>,
}

/// Why an action was refused: the HTTP status and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

fn count(group: &Group, action: &str, result: &str) {
    group
        .shared
        .metrics
        .operator_actions_total
        .with_label_values(&[&group.name, action, result])
        .inc();
}

impl Operator {
    /// How long a request may wait in the operator's pause before its client gets the
    /// no-master error.
    pub fn wait(&self) -> Duration {
        match self.wait_ms.load(Ordering::Relaxed) {
            0 => DEFAULT_PAUSE,
            ms => Duration::from_millis(ms),
        }
    }
}

/// Hold new requests until resume, each for at most `wait`.
pub fn pause(group: &Group, wait: Duration) -> Value {
    let ms = (wait.as_millis() as u64).max(1);
    group.operator.wait_ms.store(ms, Ordering::Relaxed);
    let began = group.route.hold(true);
    if began {
        set_since(group, Some(Instant::now()));
    }
    info!(group = %group.name, wait_s = wait.as_secs_f64(), "operator pause: new requests wait until resume");
    count(group, "pause", "ok");
    json!({
        "group": group.name,
        "held": true,
        "wait_ms": ms,
    })
}

/// Lift the hold.
pub fn resume(group: &Group) -> Value {
    let was = group.route.hold(false);
    let held = take_since(group);
    if was {
        info!(group = %group.name, held_ms = held, "operator resume");
    }
    count(group, "resume", "ok");
    json!({ "group": group.name, "held": false, "was_held": was, "held_ms": held })
}

fn set_since(group: &Group, at: Option<Instant>) {
    if let Ok(mut s) = group.operator.since.lock() {
        *s = at;
    }
}

fn take_since(group: &Group) -> Option<u64> {
    let since = group.operator.since.lock().ok()?.take()?;
    Some(since.elapsed().as_millis() as u64)
}

/// Clears `switching` when the switchover ends, however it ends.
struct Switching<'a>(&'a Group);

impl Drop for Switching<'_> {
    fn drop(&mut self) {
        self.0.operator.switching.store(false, Ordering::SeqCst);
    }
}

/// A planned switchover to a replica (see the module doc): the timeline, or why not.
pub async fn switchover(group: &Group) -> Result<Value, Refused> {
    let r = run_switchover(group).await;
    count(
        group,
        "switchover",
        if r.is_ok() { "ok" } else { "refused" },
    );
    r
}

async fn run_switchover(group: &Group) -> Result<Value, Refused> {
    if group.operator.switching.swap(true, Ordering::SeqCst) {
        return Err(refused(
            409,
            "a switchover of this group is already running",
        ));
    }
    let _running = Switching(group);
    let route = group.route.load();
    let (Some(old), true) = (route.master, route.ready()) else {
        return Err(refused(409, "no verified master to switch from"));
    };
    let began = Instant::now();
    let mut timeline = Vec::new();
    let at = |timeline: &mut Vec<Value>, event: &str, extra: Value| {
        let mut e = json!({ "event": event, "at_ms": began.elapsed().as_secs_f64() * 1e3 });
        if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), extra) {
            e.extend(extra);
        }
        timeline.push(e);
    };
    // An operator's pause already on stays on after the switchover.
    let ours = group.route.hold(true);
    if ours {
        set_since(group, Some(began));
    }
    let lift = |group: &Group| {
        if ours {
            group.route.hold(false);
            take_since(group);
        }
    };
    at(&mut timeline, "held", json!({ "master": old.to_string() }));
    let mut changes = group.route.subscribe();
    changes.mark_unchanged();
    let sentinel = match ask_failover(group).await {
        Ok(s) => s,
        Err(e) => {
            lift(group);
            warn!(group = %group.name, reason = %e.reason, "switchover refused");
            return Err(e);
        }
    };
    at(
        &mut timeline,
        "failover_started",
        json!({ "sentinel": sentinel }),
    );
    info!(group = %group.name, %sentinel, "switchover: SENTINEL FAILOVER accepted");
    let verified = timeout(SWITCH_WAIT, async {
        loop {
            let r = group.route.load();
            if r.ready() && r.master != Some(old) {
                return r;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    let Ok(new) = verified else {
        lift(group);
        return Err(refused(
            504,
            format!(
                "no new master verified within {} s (the failover may still complete; the hold is lifted)",
                SWITCH_WAIT.as_secs()
            ),
        ));
    };
    let new_master = new.master.map(|m| m.to_string());
    at(
        &mut timeline,
        "new_master_verified",
        json!({ "master": new_master, "generation": new.generation }),
    );
    lift(group);
    let held_ms = began.elapsed().as_secs_f64() * 1e3;
    at(&mut timeline, "released", json!({}));
    info!(group = %group.name, from = %old, to = ?new_master, held_ms, "switchover done");
    Ok(json!({
        "group": group.name,
        "from": old.to_string(),
        "to": new_master,
        "held_ms": if ours { Some(held_ms) } else { None },
        "timeline": timeline,
    }))
}

/// `SENTINEL FAILOVER` on the first of the group's sentinels that answers: which one took it.
async fn ask_failover(group: &Group) -> Result<String, Refused> {
    let settings = group.settings();
    let t = group.config().sentinel_timeout;
    let mut errors = Vec::new();
    for s in &settings.sentinels {
        let mut c = match RespConn::connect(s, &settings.sentinel_auth, t).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{s}: {e}"));
                continue;
            }
        };
        match c
            .call(&[b"SENTINEL", b"FAILOVER", group.master_name.as_bytes()])
            .await
        {
            Ok(_) => return Ok(s.to_string()),
            // Its answer holds for every sentinel (no replica to promote, one running already).
            Err(ClientError::Server(e)) => {
                return Err(refused(409, format!("sentinel {s} refused: {e}")));
            }
            Err(e) => errors.push(format!("{s}: {e}")),
        }
    }
    Err(refused(
        503,
        format!("no sentinel answered: {}", errors.join("; ")),
    ))
}
