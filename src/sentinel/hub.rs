//! The sentinels' event subscriptions, shared by every group: one connection and one
//! `PSUBSCRIBE *` per sentinel, however many groups follow it. Each group's watcher *joins* the
//! sentinels it follows (a `Membership`, left when dropped); the subscription task
//! (`subscription.rs`) hands each event to the groups whose master it names, and tells every
//! member when the subscription comes up or goes down. The last member to leave ends it.
//!
//! A sentinel followed by two groups with different credentials is subscribed to with the
//! credentials of the first that joined (both reach the same sentinel; its events are not
//! per-user).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::input::Msg;
use super::subscription::subscription;
use crate::Shared;
use crate::config::{Auth, HostPort};

#[derive(Default)]
pub struct Hub {
    entries: Mutex<HashMap<HostPort, Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    members: Vec<Member>,
    /// The credentials the subscription uses (the first member's).
    auth: Auth,
    up: bool,
    stop: CancellationToken,
}

#[derive(Clone)]
pub(super) struct Member {
    id: u64,
    master_name: String,
    pub(super) tx: mpsc::Sender<Msg>,
}

/// A group's interest in one sentinel's events; dropping it leaves.
pub(super) struct Membership {
    shared: Arc<Shared>,
    addr: HostPort,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shared.hub.leave(&self.addr, self.id);
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<HostPort, Entry>> {
        // Only membership lists are behind this lock; a panic elsewhere leaves them usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow `addr`'s events about `master_name`, delivered to `tx`. The first member starts
    /// the subscription; a later one is told at once if it is already up.
    pub(super) fn join(
        shared: &Arc<Shared>,
        addr: &HostPort,
        master_name: &str,
        auth: &Auth,
        tx: mpsc::Sender<Msg>,
    ) -> Membership {
        let hub = &shared.hub;
        let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
        let member = Member {
            id,
            master_name: master_name.to_string(),
            tx: tx.clone(),
        };
        let mut entries = hub.lock();
        match entries.get_mut(addr) {
            Some(entry) => {
                entry.members.push(member);
                if entry.up {
                    let _ = tx.try_send(Msg::Subscription {
                        sentinel: addr.clone(),
                        up: true,
                        error: None,
                    });
                }
            }
            None => {
                let stop = CancellationToken::new();
                entries.insert(
                    addr.clone(),
                    Entry {
                        members: vec![member],
                        auth: auth.clone(),
                        up: false,
                        stop: stop.clone(),
                    },
                );
                tokio::spawn(subscription(addr.clone(), shared.clone(), stop));
            }
        }
        Membership {
            shared: shared.clone(),
            addr: addr.clone(),
            id,
        }
    }

    fn leave(&self, addr: &HostPort, id: u64) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(addr) {
            entry.members.retain(|m| m.id != id);
            if entry.members.is_empty() {
                entry.stop.cancel();
                entries.remove(addr);
            }
        }
    }

    /// Whether any group still follows `addr`.
    pub(super) fn follows(&self, addr: &HostPort) -> bool {
        self.lock().contains_key(addr)
    }

    /// The credentials to subscribe to `addr` with (None: nobody follows it any more).
    pub(super) fn auth(&self, addr: &HostPort) -> Option<Auth> {
        self.lock().get(addr).map(|e| e.auth.clone())
    }

    /// The subscription to `addr` came up or went down: every member, to tell them.
    pub(super) fn set_up(&self, addr: &HostPort, up: bool) -> Vec<Member> {
        let mut entries = self.lock();
        match entries.get_mut(addr) {
            Some(e) => {
                e.up = up;
                e.members.clone()
            }
            None => Vec::new(),
        }
    }

    /// The members that follow `master_name` on `addr` (an event's recipients).
    pub(super) fn members_for(&self, addr: &HostPort, master_name: &str) -> Vec<Member> {
        self.lock()
            .get(addr)
            .map(|e| {
                e.members
                    .iter()
                    .filter(|m| m.master_name == master_name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}
