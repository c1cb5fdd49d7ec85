//! One master group: a Sentinel master the proxy serves on a listener of its own, with its route,
//! its fence and failover timeline (the watcher's state), its tally of what sessions did at each
//! switch, and its metric handles. Every session and the group's watcher hold an `Arc<Group>`;
//! what all groups share (the configuration, the registry, the sentinel subscriptions) is in
//! [`Shared`], reached through [`Group::shared`].
//!
//! A failover in one group touches only that group's route: other groups' sessions never pause
//! or move for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::config::{Config, GroupConfig};
use crate::metrics::GroupMetrics;
use crate::{Shared, route, sentinel, session};

pub struct Group {
    /// What every group shares.
    pub shared: Arc<Shared>,
    /// Unique in the process (keys per-thread state such as pooled mode's connections).
    pub id: usize,
    /// Fixed for the group's life: its label and its master.
    pub name: String,
    pub master_name: String,
    /// Its sentinels and credentials, replaced by a reload.
    settings: ArcSwap<GroupConfig>,
    pub route: route::RouteTable,
    pub metrics: GroupMetrics,
    pub watcher: sentinel::timeline::WatcherState,
    /// What sessions did at each switch (moved, by kind; closed, by reason), for /status.
    pub tally: session::tally::Tally,
    /// Tells the group's watcher that the configuration changed.
    pub reloaded: tokio::sync::Notify,
    /// A read port's lane (`read.rs`): its "master" is a replica, `-READONLY` is an answer
    /// rather than a sign of demotion, and a connection the replica closes is re-made (Sentinel
    /// kills a replica's clients when it reconfigures it) instead of closing the client.
    pub lane: bool,
    /// What the current master said of its commands (`COMMAND`), asked once per master by the
    /// watcher; none until it answers (the command table's hand list stands meanwhile).
    pub commands: arc_swap::ArcSwapOption<LearnedFrom>,
    /// What the operator asked of it (`operator.rs`: pause, switchover).
    pub operator: crate::operator::Operator,
    /// Durable acknowledgements for its dedicated sessions (`session/barrier.rs`).
    pub(crate) barrier: session::barrier::Barrier,
    /// Its read port, if it has one (the port holds the group, not the reverse).
    pub read: std::sync::OnceLock<std::sync::Weak<dyn ReadSide>>,
}

/// The commands a master said it has, and which master said it.
#[derive(Debug)]
pub struct LearnedFrom {
    pub master: std::net::SocketAddr,
    pub commands: crate::command::Learned,
    /// Which of the table's commands write, by the master's word (`Learned::write_set`).
    pub writes: Arc<crate::command::Rows>,
    /// Which of them only read (`Learned::read_rows`).
    pub reads: Arc<crate::command::Rows>,
}

/// What the group asks of its read port (`read.rs`), so that neither file imports the other's
/// back: the watcher tells it of Sentinel events, /status shows its replicas.
pub trait ReadSide: Send + Sync {
    /// Look at the replicas again now (a Sentinel event may have changed them).
    fn nudge(&self);
    /// The replicas with an open lane now, and the read clients on each.
    fn replicas(&self) -> Vec<(std::net::SocketAddr, usize)>;
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

impl Group {
    pub fn new(shared: Arc<Shared>, settings: GroupConfig) -> Group {
        Group::build(shared, settings, false)
    }

    /// A read port's lane (see the `lane` field).
    pub fn new_lane(shared: Arc<Shared>, settings: GroupConfig) -> Group {
        Group::build(shared, settings, true)
    }

    fn build(shared: Arc<Shared>, settings: GroupConfig, lane: bool) -> Group {
        Group {
            lane,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: settings.name.clone(),
            master_name: settings.master_name.clone(),
            metrics: shared.metrics.group(&settings.name),
            shared,
            settings: ArcSwap::from_pointee(settings),
            route: route::RouteTable::new(),
            watcher: Default::default(),
            tally: Default::default(),
            reloaded: tokio::sync::Notify::new(),
            read: std::sync::OnceLock::new(),
            commands: Default::default(),
            barrier: Default::default(),
            operator: Default::default(),
        }
    }

    /// The process's configuration in force (timeouts, limits, modes), a snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// This group's sentinels, credentials and listen address, a snapshot.
    pub fn settings(&self) -> Arc<GroupConfig> {
        self.settings.load_full()
    }

    /// A reload changed this group's sentinels or credentials (its name, master and listen
    /// address are fixed for its life).
    pub(crate) fn update(&self, settings: GroupConfig) {
        self.settings.store(Arc::new(settings));
        self.reloaded.notify_one();
    }
}
