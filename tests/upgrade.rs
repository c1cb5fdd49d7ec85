//! Live upgrade (`src/upgrade.rs`, `src/session/handover.rs`), with the real binary: a successor
//! started with `--takeover` receives the running proxy's listening sockets and then its
//! established client connections, each at a request boundary with what it carried; no new
//! connection is refused and no established one sees an error or a close while the two change
//! places (a redis-benchmark run, a subscriber, a client with a database and a name); a client
//! that cannot be handed over (a transaction open) is closed at its boundary; the old process
//! exits; the new one serves on the same ports, and listens for its own successor.

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use support::binary::Binary;
use support::*;

fn args(lab: &Lab, listen: u16, admin: u16, socket: &str) -> Vec<String> {
    let sentinels: Vec<String> = lab
        .sentinel_addrs()
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let mut a: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--metrics-listen",
        &format!("127.0.0.1:{admin}"),
        "--sentinels",
        &sentinels.join(","),
        "--upgrade-socket",
        socket,
        "--shutdown-timeout",
        "10s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(pool) = std::env::var("SENTINEL_PROXY_TEST_POOL") {
        a.extend(["--pool".to_string(), pool]);
    }
    a
}

fn spawn(args: &[String], extra: &[&str]) -> Binary {
    spawn_notifying(args, extra, None)
}

/// With `NOTIFY_SOCKET` set to `notify` (systemd's `Type=notify`), if given.
fn spawn_notifying(args: &[String], extra: &[&str], notify: Option<&str>) -> Binary {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    let mut env = vec![("RUST_LOG", "info"), ("NO_COLOR", "1")];
    if let Some(path) = notify {
        env.push(("NOTIFY_SOCKET", path));
    }
    Binary::spawn(&all, &env)
}

/// A place for the upgrade socket (`dir`, removed on drop), free ports, and the arguments of a
/// proxy of `lab` that waits there for a successor.
struct Setup {
    dir: tempfile::TempDir,
    socket: String,
    port: u16,
    admin: u16,
    args: Vec<String>,
}

fn setup(lab: &Lab) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir
        .path()
        .join("upgrade.sock")
        .to_str()
        .unwrap()
        .to_string();
    let (port, admin) = (unused_port(), unused_port());
    let args = args(lab, port, admin, &socket);
    Setup {
        dir,
        socket,
        port,
        admin,
        args,
    }
}

/// Until the proxy whose admin port is `admin` says it is ready.
async fn ready(admin: u16) {
    eventually(Duration::from_secs(15), "the proxy ready", || async {
        (http_get(addr(admin), "/readyz").await.0 == 200).then_some(())
    })
    .await;
}

/// Wait (30 s at most) for the old process to exit: its exit code and its log.
async fn exits(mut old: Binary) -> (Option<i32>, String) {
    let code = tokio::task::spawn_blocking(move || (old.wait(), old.log()));
    tokio::time::timeout(Duration::from_secs(30), code)
        .await
        .expect("the old process exits")
        .unwrap()
}

/// The next notification systemd would get on `socket`.
fn notified(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within 15 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_the_sockets_and_the_established_clients_see_nothing() {
    let lab = Lab::start().await;
    let Setup {
        dir,
        socket,
        port,
        admin,
        args: a,
    } = setup(&lab);
    // As under systemd (Type=notify): each process says it serves, and that it is the main one.
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let notify_path = notify_path.to_str().unwrap().to_string();
    let old = spawn_notifying(&a, &[], Some(&notify_path));
    assert_eq!(notified(&notify), format!("READY=1\nMAINPID={}", old.pid()));
    ready(admin).await;
    let ok = || OwnedFrame::SimpleString(b"OK".to_vec());
    let bulk = |b: &str| OwnedFrame::BulkString(b.as_bytes().to_vec());
    let mut idle = conn(port).await.unwrap();
    assert_eq!(cmd(&mut idle, &["SET", "up", "1"]).await.unwrap(), ok());
    // A client with a database and a name of its own.
    let mut state = conn(port).await.unwrap();
    assert_eq!(cmd(&mut state, &["SELECT", "3"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut state, &["SET", "in3", "three"]).await.unwrap(),
        ok()
    );
    assert_eq!(
        cmd(&mut state, &["CLIENT", "SETNAME", "kept"])
            .await
            .unwrap(),
        ok()
    );
    let mut sub = conn(port).await.unwrap();
    cmd(&mut sub, &["SUBSCRIBE", "news"]).await.unwrap();
    // A transaction open: not handed over, closed at its boundary.
    let mut multi = conn(port).await.unwrap();
    assert_eq!(cmd(&mut multi, &["MULTI"]).await.unwrap(), ok());

    // New connections keep coming while the processes change places.
    let stop = tokio_util::sync::CancellationToken::new();
    let prober = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                let asked = async {
                    let mut c = conn(port).await?;
                    cmd(&mut c, &["GET", "up"]).await
                };
                match tokio::time::timeout(Duration::from_secs(5), asked).await {
                    Ok(Ok(_)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    // One connection asks all along: how long its longest wait was.
    let ticker = {
        let stop = stop.clone();
        let mut c = conn(port).await.unwrap();
        tokio::spawn(async move {
            let (mut asked, mut longest) = (0u32, Duration::ZERO);
            while !stop.is_cancelled() {
                let t = Instant::now();
                let answer = cmd(&mut c, &["GET", "up"]).await;
                longest = longest.max(t.elapsed());
                match answer {
                    Ok(OwnedFrame::BulkString(b)) if b == b"1" => asked += 1,
                    other => return Err(format!("after {asked}: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok((asked, longest))
        })
    };
    // And redis-benchmark's 20 connections send all along.
    let bench = tokio::spawn(redis_benchmark(port, 200_000, 20));
    eventually(
        Duration::from_secs(15),
        "redis-benchmark connected",
        || async {
            let (_, text) = http_get(addr(admin), "/metrics").await;
            let open = metric(&text, "sentinel_proxy_client_connections")?;
            (open >= 25.0).then_some(())
        },
    )
    .await;

    let began = Instant::now();
    let mut new = spawn_notifying(&a, &["--takeover"], Some(&notify_path));
    let new_pid = new.pid();
    let said = tokio::task::spawn_blocking(move || notified(&notify))
        .await
        .unwrap();
    assert_eq!(said, format!("READY=1\nMAINPID={new_pid}"));
    let (code, old_log) = exits(old).await;
    let took = began.elapsed();
    assert_eq!(code, Some(0), "{old_log}");
    assert!(old_log.contains("handing sessions over"), "{old_log}");
    assert!(
        new.log().contains("took over the listening sockets"),
        "{}",
        new.log()
    );
    let out = bench.await.unwrap();
    stop.cancel();
    let (served, failed) = prober.await.unwrap();
    let (asked, longest) = ticker.await.unwrap().expect("one connection, no error");
    let (_, text) = http_get(addr(admin), "/metrics").await;
    let resumed = metric(&text, "sentinel_proxy_sessions_resumed_total");
    eprintln!(
        "the old process exited {took:?} after the successor started; {served} new connections \
         served meanwhile, {} failed; {resumed:?} sessions resumed by the successor; one \
         connection asked {asked} times, its longest wait {longest:?}",
        failed.len()
    );
    assert_eq!(failed, Vec::<String>::new(), "no connection refused or cut");
    assert!(served >= 3, "{served}");
    // redis-benchmark's connections were handed over with everything else: no error, no close.
    let stdout = benchmark_clean(&out);
    eprintln!("{stdout}");
    assert!(
        resumed.is_some_and(|n| n >= 24.0),
        "{text}\n{old_log}\n{}",
        new.log()
    );

    // The established clients are served by the successor on their same connections.
    assert_eq!(cmd(&mut idle, &["GET", "up"]).await.unwrap(), bulk("1"));
    assert_eq!(
        cmd(&mut state, &["GET", "in3"]).await.unwrap(),
        bulk("three")
    );
    assert_eq!(
        cmd(&mut state, &["CLIENT", "GETNAME"]).await.unwrap(),
        bulk("kept")
    );
    subscriber_hears_after(port, &mut sub, "the upgrade").await;
    // The transaction's client was closed at its boundary (drain-and-close), its queue never run.
    assert!(cmd(&mut multi, &["EXEC"]).await.is_err());

    let mut c = conn(port).await.unwrap();
    assert_eq!(cmd(&mut c, &["GET", "up"]).await.unwrap(), bulk("1"));
    assert_eq!(http_get(addr(admin), "/healthz").await.0, 200);
    assert!(new.is_running());
    // And it listens for its own successor.
    assert!(std::path::Path::new(&socket).exists());
}

/// A successor of an older version (it answers `ok <pid>` without asking for sessions): the old
/// process falls back to drain-and-close, logged, and its clients are closed at their boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_takes_no_sessions_gets_the_drain_and_close() {
    use std::io::{Read, Write};
    let lab = Lab::start().await;
    // (`_dir` kept: the socket's directory lives as long as the test.)
    let Setup {
        dir: _dir,
        socket,
        port,
        admin,
        args,
    } = setup(&lab);
    let old = spawn(&args, &[]);
    ready(admin).await;
    let mut idle = conn(port).await.unwrap();
    assert_eq!(
        cmd(&mut idle, &["SET", "up", "1"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    // The older successor: takes the listening sockets (a plain read drops them), answers `ok`.
    let path = socket.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        let mut header = [0u8; 4096];
        let n = s.read(&mut header).unwrap();
        s.write_all(b"ok 4242\n").unwrap();
        String::from_utf8_lossy(&header[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answered.contains("\"listeners\""), "{answered}");
    let (code, log) = exits(old).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("takes no sessions"), "{log}");
    assert!(cmd(&mut idle, &["GET", "up"]).await.is_err());
}

/// A group a reload added to the running proxy is handed over too: its listener (the successor
/// does not bind it anew) and its clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_by_a_reload_is_handed_over_too() {
    const CACHE: &str = "cache";
    let lab = Lab::start_with(LabOptions {
        extra_groups: vec![CACHE],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let (broker_port, cache_port, admin) = (unused_port(), unused_port(), unused_port());
    let sentinels: Vec<String> = lab
        .sentinel_addrs()
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect();
    let table = |name: &str, port: u16| {
        format!(
            "[[group]]\nname = \"{name}\"\nmaster-name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n"
        )
    };
    let file_text = |tables: &[String]| {
        format!(
            "metrics-listen = \"127.0.0.1:{admin}\"\nsentinels = [{}]\nupgrade-socket = \"{}\"\nshutdown-timeout = \"10s\"\n{}",
            sentinels.join(", "),
            socket.display(),
            tables.concat()
        )
    };
    let file = dir.path().join("proxy.toml");
    let broker = table(MASTER_NAME, broker_port);
    std::fs::write(&file, file_text(std::slice::from_ref(&broker))).unwrap();
    let path = file.to_str().unwrap().to_string();
    let mut pool = vec!["--config".to_string(), path];
    if let Ok(p) = std::env::var("SENTINEL_PROXY_TEST_POOL") {
        pool.extend(["--pool".to_string(), p]);
    }
    let old = spawn(&pool, &[]);
    ready(admin).await;

    std::fs::write(&file, file_text(&[broker, table(CACHE, cache_port)])).unwrap();
    old.signal("-HUP");
    let mut added = eventually(
        Duration::from_secs(15),
        "the added group to serve",
        || async {
            let mut c = conn(cache_port).await.ok()?;
            let ok = cmd(&mut c, &["SET", "added", "1"]).await.ok()?;
            (ok == OwnedFrame::SimpleString(b"OK".to_vec())).then_some(c)
        },
    )
    .await;

    let mut new = spawn(&pool, &["--takeover"]);
    let (code, log) = exits(old).await;
    assert_eq!(code, Some(0), "{log}");
    // Its client, on the same connection; and its port, served by the successor.
    assert_eq!(
        cmd(&mut added, &["GET", "added"]).await.unwrap(),
        OwnedFrame::BulkString(b"1".to_vec())
    );
    let mut c = conn(cache_port).await.unwrap();
    assert_eq!(
        cmd(&mut c, &["GET", "added"]).await.unwrap(),
        OwnedFrame::BulkString(b"1".to_vec())
    );
    assert!(new.is_running(), "{}", new.log());
    assert!(!new.log().contains("cannot listen"), "{}", new.log());
}
