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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// What every task of the proxy shares.
pub struct Shared {
    /// Replaced whole on a reload (SIGHUP); read with [`Shared::config`].
    config: ArcSwap<Config>,
    pub route: route::RouteTable,
    pub metrics: metrics::Metrics,
    pub watcher: sentinel::watcher::WatcherState,
    /// What sessions did at each switch (moved, by kind; closed, by reason), for /status.
    pub tally: session::tally::Tally,
    /// Tells the watcher that the configuration changed.
    pub reloaded: tokio::sync::Notify,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        Shared {
            config: ArcSwap::from_pointee(config),
            route: route::RouteTable::new(),
            metrics: metrics::Metrics::new(),
            watcher: Default::default(),
            tally: Default::default(),
            reloaded: tokio::sync::Notify::new(),
        }
    }

    /// The configuration in force (a snapshot: a reload does not change it under the caller).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Apply a reloaded configuration. Settings bound at start-up (listen addresses,
    /// max-clients, log format, master name) keep their old values and are returned as
    /// needing a restart; everything else takes effect for new decisions and new sessions.
    pub fn reload(&self, mut new: Config) -> Vec<&'static str> {
        let old = self.config();
        let mut restart = Vec::new();
        if new.listen != old.listen {
            restart.push("listen");
            new.listen = old.listen;
        }
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
        if new.master_name != old.master_name {
            restart.push("master-name");
            new.master_name = old.master_name.clone();
        }
        self.config.store(Arc::new(new));
        self.metrics
            .config_reloads_total
            .with_label_values(&["ok"])
            .inc();
        self.reloaded.notify_one();
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
    listener: TcpListener,
    admin: TcpListener,
    workers: workers::Workers,
}

impl Server {
    /// Bind the client and admin listeners (port 0 picks a free port; see [`Server::local_addr`]).
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
        let listener = bind(config.listen, config.max_clients.max(1024))?;
        let admin = bind(config.metrics_listen, 1024)?;
        let workers = workers::Workers::start(config.threads).map_err(Error::Workers)?;
        let shared = Arc::new(Shared::new(config));
        Ok(Server {
            shared,
            listener,
            admin,
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config().listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.shared.config().metrics_listen)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serve until `shutdown` is cancelled; then sessions close at their next request boundary,
    /// waited for at most `shutdown-timeout`.
    pub async fn serve(self, shutdown: CancellationToken) {
        let Server {
            shared,
            listener,
            admin,
            workers,
        } = self;
        info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            master_name = %shared.config().master_name,
            sentinels = shared.config().sentinels.len(),
            threads = workers.len(),
            pool = shared.config().pool,
            "sentinel-proxy started"
        );
        let tracker = TaskTracker::new();
        tokio::spawn(sentinel::watcher::run(shared.clone(), shutdown.clone()));
        tokio::spawn(admin::run(admin, shared.clone(), shutdown.clone()));
        listener::run(
            listener,
            shared.clone(),
            &workers,
            tracker.clone(),
            shutdown,
        )
        .await;
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
        shutdown::reload_on_sighup(server.shared(), reload, shutdown.clone());
    }
    server.serve(shutdown).await;
    Ok(())
}
