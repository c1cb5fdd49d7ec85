//! sentinel-proxy: a Sentinel-aware TCP proxy for Redis.
//!
//! Clients connect to the proxy as if it were Redis; each connection is spliced 1:1 (or pooled)
//! to the current master of a Sentinel group. One proxy serves one or several groups, each on a
//! listener of its own, optionally with a read port over its replicas. The data flow, one module
//! per box:
//!
//! ```text
//! config ──► run(config, shutdown) ──► server (groups bound and served; reloads add/remove them)
//! sentinel::hub  (one subscription per sentinel, shared by the groups) ──► events by master name
//! sentinel::watcher  (per group: queries, events, ROLE verification)
//!        │ swaps
//!        ▼
//! route  (per group, ArcSwap<Route>: master address + generation + pause, read lock-free)
//!        │ read per connection, generation checked per forwarded read
//!        ▼
//! listener (a group's accept loop) ──► workers (a current-thread runtime per thread)
//!        ──► session (forward both ways, resp/ boundaries, fence, carry + migrate)
//! read (a group's read port: a lane, i.e. a route, per healthy replica) ──► session
//! admin (hyper: /metrics /healthz /readyz /status) ◄── metrics, routes, watcher states
//! shutdown: signal → CancellationToken → sessions close at a boundary → TaskTracker waits (deadline)
//! ```
//!
//! `main.rs` only parses flags and calls [`run`]; tests call [`Server::bind`] and
//! [`Server::serve`] with a config of their own.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod command;
pub mod config;
pub mod face;
pub mod group;
pub mod lag;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod read;
pub mod resp;
pub mod route;
pub mod sentinel;
mod server;
pub mod session;
pub mod shutdown;
pub mod sockopt;
pub mod tls;
pub mod upgrade;
pub mod workers;

/// Certificates made at test time, shared with the end-to-end tests.
#[cfg(test)]
#[path = "../tests/support/certs.rs"]
mod test_certs;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use config::GroupConfig;
pub use group::Group;
pub use server::Server;

/// What every group of the proxy shares.
pub struct Shared {
    /// Replaced whole on a reload (SIGHUP); read with [`Shared::config`].
    config: ArcSwap<Config>,
    pub metrics: metrics::Metrics,
    /// One event subscription per sentinel, for every group that follows it.
    pub hub: sentinel::hub::Hub,
    /// A live upgrade's successor that takes sessions (`upgrade.rs`, `session/handover.rs`).
    pub handoff: session::Handoff,
    /// The listening sockets served, for a successor (`upgrade.rs`).
    pub listening: upgrade::Listening,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        Shared {
            config: ArcSwap::from_pointee(config),
            metrics: metrics::Metrics::new(),
            hub: Default::default(),
            handoff: Default::default(),
            listening: Default::default(),
        }
    }

    /// The configuration in force (a snapshot: a reload does not change it under the caller).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Apply a reloaded configuration to the process and its `running` groups. Settings bound at
    /// start-up (metrics-listen, max-clients, threads, pool and pool-idle-timeout, log format, a group's listen and
    /// read-listen addresses and master) keep their old values and are returned as needing a restart;
    /// everything else takes effect for new decisions and new sessions (a group's sentinels and
    /// credentials included). Groups added or removed are for the caller (`Server::serve`) to
    /// start and stop: the stored configuration lists the groups wanted.
    pub fn reload(&self, running: &[Arc<Group>], mut new: Config) -> Vec<&'static str> {
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
        if new.pool_idle_timeout != old.pool_idle_timeout {
            restart.push("pool-idle-timeout");
            new.pool_idle_timeout = old.pool_idle_timeout;
        }
        if new.log_format != old.log_format {
            restart.push("log-format");
            new.log_format = old.log_format;
        }
        if new.upgrade_socket != old.upgrade_socket {
            restart.push("upgrade-socket");
            new.upgrade_socket = old.upgrade_socket.clone();
        }
        if new.sentinel_listen != old.sentinel_listen {
            restart.push("sentinel-listen");
            new.sentinel_listen = old.sentinel_listen;
        }
        if old.declared_groups.is_empty() && new.declared_groups.is_empty() {
            // The one implicit group, named after its master: a new name is not a new group.
            let mut w = new.groups().remove(0);
            keep_bound(&mut restart, &old.groups()[0], &mut w);
            (new.listen, new.master_name, new.read_listen) =
                (w.listen, w.master_name, w.read_listen);
        } else {
            // Groups come and go by name (`Server::serve` opens and closes their listeners); a
            // group that stays keeps its listeners and its master.
            let configured = old.groups();
            for w in &mut new.declared_groups {
                if let Some(c) = configured.iter().find(|c| c.name == w.name) {
                    keep_bound(&mut restart, c, w);
                }
            }
        }
        let wanted = new.groups();
        for g in running {
            if let Some(w) = wanted.iter().find(|w| w.name == g.name) {
                let mut updated = w.clone();
                updated.listen = g.settings().listen;
                updated.read_listen = g.settings().read_listen;
                g.update(updated);
            }
        }
        restart.dedup();
        self.config.store(Arc::new(new));
        self.metrics
            .config_reloads_total
            .with_label_values(&["ok"])
            .inc();
        restart
    }
}

/// What a running group was started with and a reload cannot change: its listen and
/// read-listen addresses and its master. A change is noted as needing a restart and undone.
fn keep_bound(restart: &mut Vec<&'static str>, running: &GroupConfig, wanted: &mut GroupConfig) {
    if running.listen != wanted.listen {
        restart.push("listen");
        wanted.listen = running.listen;
    }
    if running.master_name != wanted.master_name {
        restart.push("master-name");
        wanted.master_name = running.master_name.clone();
    }
    if running.read_listen != wanted.read_listen {
        restart.push("read-listen");
        wanted.read_listen = running.read_listen;
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

/// Bind and serve until `shutdown`: what the binary runs. With a `reload` source, SIGHUP
/// re-reads the configuration; an invalid one is logged and the old one stays.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reload: Option<Reloader>,
) -> Result<(), Error> {
    // A live upgrade: take the running proxy's listening sockets (`upgrade.rs`).
    let mut inherited = match (&config.upgrade_socket, config.takeover) {
        (Some(path), true) => {
            let path = path.clone();
            match tokio::task::spawn_blocking(move || upgrade::take_over(&path)).await {
                Ok(Ok(i)) => {
                    tracing::info!(
                        predecessor = i.pid,
                        "took over the listening sockets of the running proxy"
                    );
                    Some(i)
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "no running proxy to take over from: binding");
                    None
                }
                Err(_) => None,
            }
        }
        _ => None,
    };
    let upgrade_socket = config.upgrade_socket.clone();
    let mut server = Server::bind_with(config, inherited.as_mut()).await?;
    if let Some(path) = upgrade_socket {
        upgrade::serve(path, shutdown.clone(), server.shared());
    }
    // systemd (`Type=notify`): this process serves (its listeners are bound or taken over), and
    // is the service's main one; a successor says so before its predecessor is told to go.
    notify::notify(&notify::ready());
    if let Some(mut i) = inherited
        && let Err(e) = i.serving(server.resume_sink())
    {
        tracing::warn!(error = %e, "could not tell the predecessor that this process serves");
    }
    if let Some(reload) = reload {
        shutdown::reload_on_sighup(server.shared(), server.reloads(), reload, shutdown.clone());
    }
    server.serve(shutdown).await;
    Ok(())
}
