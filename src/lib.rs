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
//! listener (accept loop) ──► session (forward both ways, resp.rs boundaries, fence, migrate)
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

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// What every task of the proxy shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub route: route::RouteTable,
    pub metrics: metrics::Metrics,
    pub watcher: sentinel::watcher::WatcherState,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A proxy with its sockets bound, not yet serving.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: TcpListener,
}

impl Server {
    /// Bind the client and admin listeners (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin = bind(config.metrics_listen).await?;
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            route: route::RouteTable::new(),
            metrics: metrics::Metrics::new(),
            watcher: Default::default(),
        });
        Ok(Server {
            shared,
            listener,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.shared.config.metrics_listen)
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
        } = self;
        info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            master_name = %shared.config.master_name,
            sentinels = shared.config.sentinels.len(),
            "sentinel-proxy started"
        );
        let tracker = TaskTracker::new();
        tokio::spawn(sentinel::watcher::run(shared.clone(), shutdown.clone()));
        tokio::spawn(admin::run(admin, shared.clone(), shutdown.clone()));
        listener::run(listener, shared.clone(), tracker.clone(), shutdown).await;
        tracker.close();
        let open = tracker.len();
        if tokio::time::timeout(shared.config.shutdown_timeout, tracker.wait())
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

/// Bind and serve until `shutdown`: what the binary runs.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Server::bind(config).await?.serve(shutdown).await;
    Ok(())
}
