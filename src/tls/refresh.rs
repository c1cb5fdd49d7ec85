//! Certificate rotation without a signal: every few seconds the TLS files in use (the client
//! ports', and each group's for its Redis nodes and sentinels) are re-read, and a set that
//! changed and loads is used from the next handshake on. A Kubernetes secret or cert-manager
//! rotates files in place; open connections keep the session they negotiated. A set that does
//! not load is logged once (per change) and the one in use stays. SIGHUP re-reads them too,
//! with the whole configuration.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Files, Material, TlsError};
use crate::{Group, Shared};

/// A set of TLS files of either kind.
trait Refresh: Send + Sync {
    fn refresh(&self) -> Result<bool, TlsError>;
}

impl<F: Files + Send + Sync> Refresh for Material<F>
where
    F::Config: Send + Sync,
{
    fn refresh(&self) -> Result<bool, TlsError> {
        Material::refresh(self)
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    live: Arc<ArcSwap<Vec<Arc<Group>>>>,
    shutdown: CancellationToken,
) {
    loop {
        if let Some(t) = shared.config().tls.as_ref().and_then(|t| t.not_after()) {
            shared
                .metrics
                .tls_certificate_expiry
                .with_label_values(&["clients"])
                .set(t);
        }
        let every = shared.config().tls_refresh;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let config = shared.config();
        let mut sets: Vec<(String, Arc<dyn Refresh>)> = Vec::new();
        if let Some(t) = &config.tls {
            sets.push(("client ports".into(), t.clone()));
        }
        for g in live.load_full().iter() {
            let s = g.settings();
            if let Some(t) = &s.master_auth.tls {
                sets.push((format!("group {}: redis", g.name), t.clone()));
            }
            if let Some(t) = &s.sentinel_auth.tls {
                sets.push((format!("group {}: sentinels", g.name), t.clone()));
            }
        }
        for (side, refresh) in sets {
            let result = match refresh.refresh() {
                Ok(false) => continue,
                Ok(true) => {
                    info!(%side, "TLS certificate files changed: in use for new connections");
                    "ok"
                }
                Err(e) => {
                    warn!(%side, error = %e, "TLS files changed but do not load; the ones in use stay");
                    "rejected"
                }
            };
            shared
                .metrics
                .tls_reloads_total
                .with_label_values(&[result])
                .inc();
        }
    }
}
