//! The admin HTTP server (hyper, HTTP/1.1) on `--metrics-listen`:
//!
//! | path       | answer |
//! |------------|--------|
//! | `/metrics` | Prometheus text exposition of every metric (see `metrics.rs`) |
//! | `/healthz` | `200 ok` while the process runs (liveness) |
//! | `/readyz`  | `200 ready` while a verified, answering master is known, else `503` (readiness) |
//! | `/status`  | JSON: master, generation, fence (`paused`), sentinel down reports, problem, sentinels and their health, recent switches, failover timelines, effective config (secrets masked) |
//!
//! It shares nothing with the data path but the metric atomics and the route, read lock-free.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Shared;

pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&req, &shared)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "admin connection error") },
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if shared.route.load().ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no verified master\n".into(),
                )
            }
        }
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            status(shared).to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn status(shared: &Shared) -> serde_json::Value {
    let route = shared.route.load();
    let st = shared.watcher.snapshot();
    let cfg = &shared.config();
    let since = route
        .since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "master_name": cfg.master_name,
        "master": route.master.map(|a| a.to_string()),
        "available": route.ready(),
        "paused": route.paused,
        "generation": route.generation,
        "generation_since_unix_ms": since,
        "client_connections": shared.metrics.client_connections.get(),
        "problem": st.last_problem,
        "master_reported_down": st.master_reported_down,
        "sentinels": st.sentinels,
        "switches": st.switches.iter().map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                // What the sessions did at this switch: moved (by kind) or closed (by reason).
                o.insert("sessions".into(), json!(shared.tally.get(s.generation)));
            }
            v
        }).collect::<Vec<_>>(),
        "failovers": st.failovers,
        "config": {
            "listen": cfg.listen.to_string(),
            "metrics_listen": cfg.metrics_listen.to_string(),
            "sentinels": cfg.sentinels.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "sentinel_username": cfg.sentinel_auth.username,
            "sentinel_password": cfg.sentinel_auth.password.as_ref().map(|_| "***"),
            "master_username": cfg.master_auth.username,
            "master_password": cfg.master_auth.password.as_ref().map(|_| "***"),
            "poll_interval_ms": cfg.poll_interval.as_millis() as u64,
            "sentinel_timeout_ms": cfg.sentinel_timeout.as_millis() as u64,
            "connect_timeout_ms": cfg.connect_timeout.as_millis() as u64,
            "connect_wait_ms": cfg.connect_wait.as_millis() as u64,
            "shutdown_timeout_ms": cfg.shutdown_timeout.as_millis() as u64,
            "failover_pause_ms": cfg.failover_pause.as_millis() as u64,
            "drain_timeout_ms": cfg.drain_timeout.as_millis() as u64,
            "sentinel_prune_after_ms": cfg.sentinel_prune_after.as_millis() as u64,
            "idle_timeout_ms": cfg.idle_timeout.as_millis() as u64,
            "tcp_keepalive_ms": cfg.tcp_keepalive.as_millis() as u64,
            "max_request_bytes": cfg.max_request_bytes,
            "max_clients": cfg.max_clients,
            "threads": cfg.threads,
            "discovery": format!("{:?}", cfg.discovery).to_lowercase(),
            "log_format": format!("{:?}", cfg.log_format).to_lowercase(),
        },
    })
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
