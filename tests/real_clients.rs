//! Pooled mode with real clients configured as applications configure them (redis-py from pip:
//! `tests/real_clients/redis_py.py`): RESP3, a password, a database, all at once, doing what
//! applications do all day (plain commands, pipelined and optimistic transactions, RESP3 maps,
//! blocking pops, a registered script). None of it pins a client, and the master sees a handful of
//! connections. A Celery worker and producer (`tests/real_clients/celery_app.py`) lose no task
//! across a failover.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use support::*;

/// Run the redis-py clients against `port`; their report.
async fn redis_py(
    port: u16,
    password: &str,
    clients: usize,
    (rounds, seconds): (usize, u64),
    tag: &str,
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/real_clients/redis_py.py");
    let (py, password, tag) = (python(), password.to_string(), tag.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([
                port.to_string(),
                password,
                clients.to_string(),
                rounds.to_string(),
                seconds.to_string(),
                tag,
            ])
            .output()
            .expect("run the redis-py clients")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "redis-py: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Forty redis-py clients with `protocol=3`, a password, `db=1` and a name, all at once, through a
/// sidecar's proxy (one thread, `--pool 2`), then again across a failover: no error, nothing
/// pinned, and the master sees at most 10 connections from the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_with_resp3_a_password_and_a_database_shares_the_pool() {
    const PW: &str = "real-clients-pw";
    let py = python(); // installed before the lab starts its clocks
    drop(py);
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(PW.into()),
        ..Default::default()
    })
    .await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 2;
        c.threads = 1;
        c.master_auth.password = Some(sentinel_proxy::config::Secret::new(PW));
    })
    .await;
    let old = proxy.wait_ready().await;

    let report = redis_py(proxy.port, PW, 40, (20, 0), "first").await;
    eprintln!("redis-py: {report}");
    assert_eq!(report["error_count"], 0, "{report}");
    assert_eq!(report["ops"], 40 * 20, "{report}");
    let on_master = proxy_connections(&mut lab.rconn(old).await.unwrap()).await;
    eprintln!("{on_master} master connections from the proxy after 40 redis-py clients");
    assert!(on_master <= 10, "{on_master} master connections");

    // Across a failover (the clients run for 10 s at least, the switch comes in the first
    // seconds): the pools' connections reopen on the new master with their state, and the
    // borrowed ones move inside their spans.
    let failover = async {
        lab.failover().await;
        let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
        proxy.wait_routes_to(new, Duration::from_secs(10)).await;
        Instant::now()
    };
    let clients = async {
        let report = redis_py(proxy.port, PW, 40, (20, 10), "failover").await;
        (report, Instant::now())
    };
    let (switched, (report, ended)) = tokio::join!(failover, clients);
    eprintln!("redis-py across a failover: {report}");
    assert!(switched < ended, "the clients ended before the switch");
    assert_eq!(report["error_count"], 0, "{report}");

    let (_, text) = http_get(proxy.admin, "/metrics").await;
    let pinned: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sentinel_proxy_pinned_sessions_total"))
        .collect();
    assert!(pinned.is_empty(), "{pinned:?}");
    let lent: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sentinel_proxy_borrow_seconds_count"))
        .collect();
    eprintln!("lent: {lent:#?}");
}

/// A Celery worker (threads pool) and producer through a sidecar's proxy in pooled mode, broker
/// and result backend both on Redis (the backend in db 1), a task every 5 ms for at least 12 s
/// across a failover: every task sent runs and its result comes back, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_worker_and_producer_lose_no_task_across_a_failover() {
    let py = venv("celery", "celery", "ensure_celery"); // before the lab starts its clocks
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 2;
        c.threads = 1;
    })
    .await;
    let old = proxy.wait_ready().await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/real_clients");
    let mut app = Command::new(py);
    app.arg(dir.join("celery_app.py"))
        .args(["200", "12"])
        .env("PROXY_PORT", proxy.port.to_string())
        .current_dir(&dir);
    // Once the worker is at work: 50 results stored (db 1) on the master.
    let (report, kept) = across_a_failover(&lab, &proxy, old, app, "50 Celery results", || async {
        let mut m = lab.rconn(old).await.ok()?;
        cmd(&mut m, &["SELECT", "1"]).await.ok()?;
        match cmd(&mut m, &["DBSIZE"]).await.ok()? {
            OwnedFrame::Integer(n) if n >= 50 => Some(()),
            _ => None,
        }
    })
    .await;
    eprintln!("celery across a failover: {report}");
    assert_eq!(report["error_count"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["done"], report["sent"], "{report}");
    eprintln!("pinned and lent: {kept:#?}");
    // Its result consumer subscribes (pinned by design); QUIT at the end pins for its answer.
    let pinned = |l: &&String| l.starts_with("sentinel_proxy_pinned_sessions_total");
    for l in kept.iter().filter(pinned) {
        assert!(
            l.contains("reason=\"pubsub\"") || l.contains("reason=\"reset\""),
            "{l}"
        );
    }
}

/// A BullMQ queue and worker (ioredis, from npm) through pooled mode: BullMQ moves every job with
/// Lua scripts (EVALSHA, on the pool's connection for scripts) and its worker waits with
/// BZPOPMIN (a borrowed connection); a job every 5 ms for at least 12 s across a failover once 50
/// jobs are done: every job completes, no error reaches the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_queue_and_worker_lose_no_job_across_a_failover() {
    let modules = bullmq_modules(); // before the lab starts its clocks
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 2;
        c.threads = 1;
    })
    .await;
    let old = proxy.wait_ready().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/real_clients/bullmq.js");
    let port = proxy.port;
    let mut app = Command::new("node");
    app.arg(script)
        .args([port.to_string().as_str(), "200", "12"])
        .env("NODE_PATH", modules);
    // Once the worker is at work: the job ids handed out past 50 (BullMQ keeps no completed
    // count with removeOnComplete).
    let (report, kept) = across_a_failover(&lab, &proxy, old, app, "50 BullMQ jobs", || async {
        let mut m = lab.rconn(old).await.ok()?;
        let key = format!("bull:proxytest-{port}:id");
        match cmd(&mut m, &["GET", &key]).await.ok()? {
            OwnedFrame::BulkString(b) if String::from_utf8_lossy(&b).parse::<u64>().ok()? >= 50 => {
                Some(())
            }
            _ => None,
        }
    })
    .await;
    eprintln!("BullMQ across a failover: {report}");
    assert_eq!(report["error_count"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    eprintln!("pinned and lent: {kept:#?}");
    // Its workers name their connections and block in BZPOPMIN on borrowed ones; only QUIT at
    // the end pins (for its answer).
    let pinned = |l: &&String| l.starts_with("sentinel_proxy_pinned_sessions_total");
    for l in kept.iter().filter(pinned) {
        assert!(l.contains("reason=\"reset\""), "{l}");
    }
}

/// Run `app` (it prints its report as one JSON line, last) through the proxy, and fail the
/// master over once `ready` holds: the report, checked to have come after the switch, and the
/// proxy's pinned and borrowed counts then (its `/metrics` lines).
async fn across_a_failover<F, Fut>(
    lab: &Lab,
    proxy: &Proxy,
    old: u16,
    mut app: Command,
    ready_when: &str,
    ready: F,
) -> (serde_json::Value, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let run = tokio::task::spawn_blocking(move || {
        let out = app.output().expect("run the application");
        (out, Instant::now())
    });
    let failover = async {
        eventually(Duration::from_secs(30), ready_when, ready).await;
        lab.failover().await;
        let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
        proxy.wait_routes_to(new, Duration::from_secs(10)).await;
        Instant::now()
    };
    let (switched, ran) = tokio::join!(failover, run);
    let (out, ended) = ran.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        switched < ended,
        "the application ended before the switch: {report}"
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    let kept = text
        .lines()
        .filter(|l| {
            l.starts_with("sentinel_proxy_pinned_sessions_total")
                || l.starts_with("sentinel_proxy_borrow_seconds_count")
        })
        .map(str::to_string)
        .collect();
    (report, kept)
}
