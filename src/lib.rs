//! sentinel-proxy: a Sentinel-aware TCP proxy for Redis.
//!
//! Clients connect to the proxy as if it were Redis; each connection is spliced 1:1 to the
//! current master of a Sentinel group. The data flow, one module per box:
//!
//! ```text
//! config ──► run(config, shutdown)
//! sentinel::watcher  (queries + one subscription per sentinel + ROLE verification)
//!        │ swaps
//!        ▼
//! route  (ArcSwap<Route>: master address + generation + pause, read lock-free)
//!        │ read per connection, generation checked per forwarded read
//!        ▼
//! listener (accept loop) ──► workers (a current-thread runtime per thread)
//!        ──► session (forward both ways, resp/ boundaries, fence, carry + migrate)
//! admin (hyper: /metrics /healthz /readyz /status) ◄── metrics, route, watcher state
//! shutdown: signal → CancellationToken → sessions close at a boundary → TaskTracker waits (deadline)
//! ```
//!
//! `main.rs` only parses flags and calls [`run`]; tests call [`Server::bind`] and
//! [`Server::serve`] with a config of their own.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod group;
pub mod listener;
pub mod metrics;
pub mod resp;
pub mod route;
pub mod sentinel;
pub mod session;
pub mod shutdown;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
pub use group::Group;

/// What every group of the proxy shares.
pub struct Shared {
    /// Replaced whole on a reload (SIGHUP); read with [`Shared::config`].
    config: ArcSwap<Config>,
    pub metrics: metrics::Metrics,
    /// One event subscription per sentinel, for every group that follows it.
    pub hub: sentinel::hub::Hub,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        Shared {
            config: ArcSwap::from_pointee(config),
            metrics: metrics::Metrics::new(),
            hub: Default::default(),
        }
    }

    /// The configuration in force (a snapshot: a reload does not change it under the caller).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Apply a reloaded configuration to the process and its `groups`. Settings bound at
    /// start-up (listen addresses, max-clients, threads, pool, log format, the set of groups and
    /// their masters) keep their old values and are returned as needing a restart; everything
    /// else takes effect for new decisions and new sessions (a group's sentinels and
    /// credentials included).
    pub fn reload(&self, groups: &[Arc<Group>], mut new: Config) -> Vec<&'static str> {
        let old = self.config();
        let mut restart = Vec::new();
        if new.metrics_listen != old.metrics_listen {
            restart.push("metrics-listen");
            new.metrics_listen = old.metrics_listen;
        }
        if new.max_clients != old.max_clients {
            restart.push("max-clients");
            new.max_clients = old.max_clients;
        }
        if new.threads != old.threads {
            restart.push("threads");
            new.threads = old.threads;
        }
        if new.pool != old.pool {
            restart.push("pool");
            new.pool = old.pool;
        }
        if new.log_format != old.log_format {
            restart.push("log-format");
            new.log_format = old.log_format;
        }
        let wanted = new.groups();
        let same_set = wanted.len() == groups.len()
            && groups
                .iter()
                .all(|g| wanted.iter().any(|w| w.name == g.name));
        if !same_set {
            // Without [[group]] tables the one group is named after its master.
            let implicit = old.declared_groups.is_empty() && new.declared_groups.is_empty();
            restart.push(if implicit { "master-name" } else { "groups" });
        }
        let configured = old.groups();
        for g in groups {
            let Some(w) = wanted.iter().find(|w| w.name == g.name) else {
                continue;
            };
            let running = g.settings();
            let was = configured.iter().find(|c| c.name == g.name);
            if was.is_some_and(|c| c.listen != w.listen) {
                restart.push("listen");
            }
            if w.master_name != g.master_name {
                restart.push("master-name");
            }
            let mut updated = w.clone();
            updated.listen = running.listen;
            updated.master_name = g.master_name.clone();
            g.update(updated);
        }
        restart.dedup();
        // The groups keep what they were started with: the stored config names them as running.
        new.listen = old.listen;
        new.master_name = old.master_name.clone();
        if !same_set {
            new.declared_groups = old.declared_groups.clone();
        }
        self.config.store(Arc::new(new));
        self.metrics
            .config_reloads_total
            .with_label_values(&["ok"])
            .inc();
        restart
    }
}

/// Produces a fresh configuration on SIGHUP (the binary re-reads flags, env and file).
pub type Reloader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// A proxy with its sockets bound, not yet serving.
pub struct Server {
    shared: Arc<Shared>,
    /// Every group, with its client listener.
    groups: Vec<(Arc<Group>, TcpListener)>,
    admin: TcpListener,
    workers: workers::Workers,
}

impl Server {
    /// Bind every group's client listener and the admin listener (port 0 picks a free port; see
    /// [`Server::local_addr`]).
    pub async fn bind(config: Config) -> Result<Server, Error> {
        // The client listener's backlog follows max-clients (the kernel caps it at somaxconn):
        // a burst of connections waits in the queue instead of being dropped and retried a
        // second later by the client's SYN timer.
        let bind = |addr: SocketAddr, backlog: usize| {
            let listen = || {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX))
            };
            listen().map_err(|source| Error::Bind { addr, source })
        };
        let mut listeners = Vec::new();
        for mut g in config.groups() {
            let listener = bind(g.listen, config.max_clients.max(1024))?;
            // Port 0 picks one: /status shows the one picked.
            if let Ok(bound) = listener.local_addr() {
                g.listen = bound;
            }
            listeners.push((listener, g));
        }
        let admin = bind(config.metrics_listen, 1024)?;
        let workers = workers::Workers::start(config.threads).map_err(Error::Workers)?;
        let shared = Arc::new(Shared::new(config));
        let groups = listeners
            .into_iter()
            .map(|(listener, g)| (Arc::new(Group::new(shared.clone(), g)), listener))
            .collect();
        Ok(Server {
            shared,
            groups,
            admin,
            workers,
        })
    }

    /// The first group's client address (the only one without `[[group]]` tables).
    pub fn local_addr(&self) -> SocketAddr {
        self.group_addr(0)
    }

    /// The client address of the `i`-th group (in the order the configuration gives them).
    pub fn group_addr(&self, i: usize) -> SocketAddr {
        let (group, listener) = &self.groups[i];
        listener
            .local_addr()
            .unwrap_or_else(|_| group.settings().listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.shared.config().metrics_listen)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Every group, in the order the configuration gives them.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.groups.iter().map(|(g, _)| g.clone()).collect()
    }

    /// Serve until `shutdown` is cancelled; then sessions close at their next request boundary,
    /// waited for at most `shutdown-timeout`.
    pub async fn serve(self, shutdown: CancellationToken) {
        let Server {
            shared,
            groups,
            admin,
            workers,
        } = self;
        let all: Vec<Arc<Group>> = groups.iter().map(|(g, _)| g.clone()).collect();
        info!(
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            groups = all.len(),
            threads = workers.len(),
            pool = shared.config().pool,
            "sentinel-proxy started"
        );
        let tracker = TaskTracker::new();
        tokio::spawn(admin::run(admin, shared.clone(), all, shutdown.clone()));
        // --max-clients counts every group's clients together.
        let permits = Arc::new(Semaphore::new(shared.config().max_clients));
        let workers = Arc::new(workers);
        let mut listeners = JoinSet::new();
        for (group, listener) in groups {
            info!(
                group = %group.name,
                master_name = %group.master_name,
                listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                sentinels = group.settings().sentinels.len(),
                "serving group"
            );
            tokio::spawn(sentinel::watcher::run(group.clone(), shutdown.clone()));
            listeners.spawn(listener::run(
                listener,
                group,
                permits.clone(),
                workers.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
        while listeners.join_next().await.is_some() {}
        tracker.close();
        let open = tracker.len();
        if tokio::time::timeout(shared.config().shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open,
                "sessions still open at the shutdown deadline; exiting anyway"
            );
        }
        info!("sentinel-proxy stopped");
    }
}

/// Bind and serve until `shutdown`: what the binary runs. With a `reload` source, SIGHUP
/// re-reads the configuration; an invalid one is logged and the old one stays.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reload: Option<Reloader>,
) -> Result<(), Error> {
    let server = Server::bind(config).await?;
    if let Some(reload) = reload {
        shutdown::reload_on_sighup(server.shared(), server.groups(), reload, shutdown.clone());
    }
    server.serve(shutdown).await;
    Ok(())
}
