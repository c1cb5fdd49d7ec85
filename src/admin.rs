//! The admin HTTP server (hyper, HTTP/1.1) on `--metrics-listen`:
//!
//! | path       | answer |
//! |------------|--------|
//! | `/metrics` | Prometheus text exposition of every metric (see `metrics.rs`) |
//! | `/healthz` | `200 ok` while the process runs (liveness) |
//! | `/readyz`  | `200 ready` while every group has a verified, answering master, else `503` naming the groups without one (readiness); `/readyz?group=NAME` for one group |
//! | `POST /groups/NAME/pause` | (operator actions: only with `--admin-token` set, and only with it as a bearer token: `403`/`401` otherwise) hold the group's new requests at request boundaries until resume, each `?seconds=N` at most (30 by default, 300 at most; then the no-master error: `operator.rs`) |
//! | `POST /groups/NAME/resume` | lift the hold |
//! | `POST /groups/NAME/switchover` | hold, `SENTINEL FAILOVER`, wait for the new master to be verified, release; JSON: the timeline, or `409`/`503`/`504` and why not |
//! | `/status`  | (with `--admin-token`, only with `Authorization: Bearer <token>`) JSON: per group (`groups`, in configuration order) its read pool (`read`, with a read port), its master, generation, fence (`paused`), sentinel down reports, problem, sentinels and their health, recent switches, failover timelines; the first group's fields also at the top level (a single-group proxy reads them there); the effective config (secrets masked). `/status?group=NAME`: that group's fields at the top level |
//!
//! It shares nothing with the data path but the metric atomics and the routes, read lock-free.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
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

use crate::{Group, Shared};

/// Serve until `shutdown`; `groups` are the groups being served (a reload may change them).
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    groups: Arc<ArcSwap<Vec<Arc<Group>>>>,
    shutdown: CancellationToken,
) {
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
        let (shared, groups) = (shared.clone(), groups.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, groups) = (shared.clone(), groups.clone());
                async move {
                    let groups = groups.load_full();
                    let response = match req.method() == Method::POST {
                        true => act(&req, &shared, &groups).await,
                        false => handle(&req, &shared, &groups),
                    };
                    Ok::<_, Infallible>(response)
                }
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

/// The groups a request is about: all, or the one `?group=NAME` names (None: no such group).
fn selected<'a>(req: &Request<Incoming>, groups: &'a [Arc<Group>]) -> Option<Vec<&'a Group>> {
    let wanted = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("group="))
            .map(str::to_string)
    });
    match wanted {
        None => Some(groups.iter().map(|g| g.as_ref()).collect()),
        Some(name) => groups
            .iter()
            .find(|g| g.name == name)
            .map(|g| vec![g.as_ref()]),
    }
}

fn handle(
    req: &Request<Incoming>,
    shared: &Shared,
    groups: &[Arc<Group>],
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET, or POST for operator actions\n".into(),
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
            let Some(asked) = selected(req, groups) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "no such group\n".into(),
                );
            };
            let missing: Vec<&str> = asked
                .iter()
                .filter(|g| !g.route.load().ready())
                .map(|g| g.name.as_str())
                .collect();
            if missing.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else if groups.len() == 1 {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no verified master\n".into(),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("no verified master for group {}\n", missing.join(", ")),
                )
            }
        }
        "/status" => {
            if !authorized(req, shared) {
                return unauthorized("/status needs");
            }
            let Some(asked) = selected(req, groups) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "no such group\n".into(),
                );
            };
            reply(
                StatusCode::OK,
                "application/json",
                status(shared, &asked).to_string(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// An operator action (`POST /groups/NAME/ACTION`, `operator.rs`): only with the admin token.
async fn act(
    req: &Request<Incoming>,
    shared: &Shared,
    groups: &[Arc<Group>],
) -> Response<Full<Bytes>> {
    if shared.config().admin_token.is_none() {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "operator actions need an admin token (--admin-token): none is set\n".into(),
        );
    }
    if !authorized(req, shared) {
        return unauthorized("operator actions need");
    }
    let path = req.uri().path();
    let Some((name, action)) = path
        .strip_prefix("/groups/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    };
    let Some(group) = groups.iter().find(|g| g.name == name) else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no group named '{name}'\n"),
        );
    };
    let json =
        |code: StatusCode, v: serde_json::Value| reply(code, "application/json", format!("{v}\n"));
    match action {
        "pause" => {
            let seconds = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("seconds="))
                    .map(|s| s.parse::<f64>())
            });
            let asked = match seconds {
                None => crate::operator::DEFAULT_PAUSE,
                Some(Ok(s)) if s > 0.0 && s <= crate::operator::MAX_PAUSE.as_secs_f64() => {
                    Duration::from_secs_f64(s)
                }
                Some(_) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!(
                            "seconds: a number above 0 and at most {}\n",
                            crate::operator::MAX_PAUSE.as_secs()
                        ),
                    );
                }
            };
            json(StatusCode::OK, crate::operator::pause(group, asked))
        }
        "resume" => json(StatusCode::OK, crate::operator::resume(group)),
        "switchover" => match crate::operator::switchover(group).await {
            Ok(v) => json(StatusCode::OK, v),
            Err(e) => json(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::CONFLICT),
                serde_json::json!({ "group": group.name, "error": e.reason }),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Where a TLS side's files are (paths only: the files hold the keys).
fn client_tls(f: &crate::tls::ClientFiles) -> serde_json::Value {
    json!({
        "ca_file": f.ca,
        "cert_file": f.cert,
        "key_file": f.key,
        "server_name": f.server_name,
    })
}

/// `401`: `what` needs the admin token as a bearer token.
fn unauthorized(what: &str) -> Response<Full<Bytes>> {
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        format!("{what} the admin token (Authorization: Bearer …)\n"),
    );
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Whether the request may see /status: no admin token is set, or it carries it as a bearer
/// token (compared in constant time).
fn authorized(req: &Request<Incoming>, shared: &Shared) -> bool {
    let Some(token) = shared.config().admin_token.clone() else {
        return true;
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The first of `groups` at the top level, every one under `groups`, and the process config.
fn status(shared: &Shared, groups: &[&Group]) -> serde_json::Value {
    let each: Vec<serde_json::Value> = groups.iter().map(|g| group_status(g)).collect();
    let mut out = each.first().cloned().unwrap_or_else(|| json!({}));
    let cfg = &shared.config();
    if let Some(o) = out.as_object_mut() {
        o.insert("groups".into(), json!(each));
        o.insert(
            "config".into(),
            json!({
                // The top-level settings: the one group's without [[group]] tables, the
                // defaults the tables were filled from with them.
                "listen": cfg.declared_groups.is_empty().then(|| cfg.listen.to_string()),
                "master_name": cfg.declared_groups.is_empty().then(|| cfg.master_name.clone()),
                "sentinels": cfg.sentinels.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "sentinel_username": cfg.sentinel_auth.username,
                "sentinel_password": cfg.sentinel_auth.password.as_ref().map(|_| "***"),
                "master_username": cfg.master_auth.username,
                "master_password": cfg.master_auth.password.as_ref().map(|_| "***"),
                "tls": cfg.tls.as_ref().map(|t| json!({
                    "cert_file": t.files.cert,
                    "key_file": t.files.key,
                    "client_ca_file": t.files.client_ca,
                })),
                "master_tls": cfg.master_auth.tls.as_ref().map(|t| client_tls(&t.files)),
                "sentinel_tls": cfg.sentinel_auth.tls.as_ref().map(|t| client_tls(&t.files)),
                "users_file": cfg.users.as_ref().map(|u| json!({
                    "path": u.path,
                    "users": u.len(),
                })),
                "admin_token": cfg.admin_token.as_ref().map(|_| "***"),
                "metrics_listen": cfg.metrics_listen.to_string(),
                "poll_interval_ms": cfg.poll_interval.as_millis() as u64,
                "sentinel_timeout_ms": cfg.sentinel_timeout.as_millis() as u64,
                "connect_timeout_ms": cfg.connect_timeout.as_millis() as u64,
                "connect_wait_ms": cfg.connect_wait.as_millis() as u64,
                "shutdown_timeout_ms": cfg.shutdown_timeout.as_millis() as u64,
                "failover_pause_ms": cfg.failover_pause.as_millis() as u64,
                "drain_timeout_ms": cfg.drain_timeout.as_millis() as u64,
                "sentinel_prune_after_ms": cfg.sentinel_prune_after.as_millis() as u64,
                "idle_timeout_ms": cfg.idle_timeout.as_millis() as u64,
                "pool_idle_timeout_ms": cfg.pool_idle_timeout.as_millis() as u64,
                "tcp_keepalive_ms": cfg.tcp_keepalive.as_millis() as u64,
                "max_request_bytes": cfg.max_request_bytes,
                "max_clients": cfg.max_clients,
                "threads": cfg.threads,
                "pool": cfg.pool,
                "ack_timeout_ms": cfg.ack_timeout.as_millis() as u64,
                "discovery": format!("{:?}", cfg.discovery).to_lowercase(),
                "log_format": format!("{:?}", cfg.log_format).to_lowercase(),
            }),
        );
    }
    out
}

fn group_status(group: &Group) -> serde_json::Value {
    let route = group.route.load();
    let st = group.watcher.snapshot();
    let settings = group.settings();
    let since = route
        .since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "group": group.name,
        "master_name": group.master_name,
        "listen": settings.listen.to_string(),
        "ack": settings.ack.to_string(),
        "master": route.master.map(|a| a.to_string()),
        "available": route.ready(),
        "paused": route.paused,
        "held": route.held,
        "generation": route.generation,
        "generation_since_unix_ms": since,
        "client_connections": group.metrics.client_connections.get(),
        "problem": st.last_problem,
        "master_reported_down": st.master_reported_down,
        "sentinels": st.sentinels,
        "switches": st.switches.iter().map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                // What the sessions did at this switch: moved (by kind) or closed (by reason).
                o.insert("sessions".into(), json!(group.tally.get(s.generation)));
            }
            v
        }).collect::<Vec<_>>(),
        "failovers": st.failovers,
        // What the master said of its commands, against the proxy's hand list.
        "commands": group.commands.load().as_ref().map(|c| json!({
            "learned_from": c.master.to_string(),
            "count": c.commands.len(),
            "differ_from_hand_list": c.commands.differences(crate::command::all()),
        })),
        "read": group.read.get().and_then(std::sync::Weak::upgrade).map(|r| json!({
            "listen": settings.read_listen.map(|a| a.to_string()),
            "replicas": r.replicas().iter().map(|(addr, clients)| json!({
                "address": addr.to_string(),
                "clients": clients,
            })).collect::<Vec<_>>(),
        })),
        "settings": {
            "sentinels": settings.sentinels.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "sentinel_username": settings.sentinel_auth.username,
            "sentinel_password": settings.sentinel_auth.password.as_ref().map(|_| "***"),
            "master_username": settings.master_auth.username,
            "master_password": settings.master_auth.password.as_ref().map(|_| "***"),
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
