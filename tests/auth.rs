//! The proxy's own client authentication (`--users-file`), with real processes: Redis protected
//! by an ACL user the clients never see (credential injection), clients refused with Redis's
//! own errors until they AUTH as a user of the proxy's, pipelined requests behind the AUTH kept,
//! `HELLO 3 AUTH`, redis-cli, a failover, and the users file re-read on reload.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::auth::{Users, hash};
use sentinel_proxy::config::{Auth, Secret};
use sentinel_proxy::sentinel::client::{ClientError, frame_text};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REDIS_PW: &str = "redis-requirepass-5d1c";
const PROXY_USER: &str = "proxy";
const PROXY_PW: &str = "proxy-acl-pw-91aa";

fn users_file(dir: &std::path::Path, users: &[(&str, &str)]) -> Arc<Users> {
    let path = dir.join("users");
    let text: String = users
        .iter()
        .map(|(name, pw)| format!("{name}:{}\n", hash(pw).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    Arc::new(Users::load(&path).unwrap())
}

/// Read from a raw socket until `want` bytes came (or a deadline).
async fn read_n(s: &mut tokio::net::TcpStream, want: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn server_error(r: Result<OwnedFrame, ClientError>) -> String {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_at_the_proxy_which_reaches_redis_as_its_own_user() {
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(REDIS_PW.into()),
        ..Default::default()
    })
    .await;
    // The ACL user the proxy reaches Redis as; clients know nothing of it.
    for r in &lab.redis {
        let mut c = lab.rconn(r.port).await.unwrap();
        let grant = format!(">{PROXY_PW}");
        cmd(
            &mut c,
            &[
                "ACL", "SETUSER", PROXY_USER, "on", &grant, "~*", "&*", "+@all",
            ],
        )
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path(), &[("default", "legacy-pw"), ("app", "app-pw")]);
    let master_auth = Auth {
        username: Some(PROXY_USER.into()),
        password: Some(Secret::new(PROXY_PW)),
        tls: None,
    };
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |cfg| {
        cfg.users = Some(users.clone());
        cfg.master_auth = master_auth.clone();
    })
    .await;
    let old = proxy.wait_ready().await;

    // Before AUTH: Redis's own refusals, and nothing reaches Redis.
    let mut c = conn(proxy.port).await.unwrap();
    assert_eq!(
        server_error(cmd(&mut c, &["GET", "k"]).await),
        "NOAUTH Authentication required."
    );
    assert!(server_error(cmd(&mut c, &["HELLO", "3"]).await).starts_with("NOAUTH HELLO"));
    assert!(server_error(cmd(&mut c, &["AUTH", "app", "wrong"]).await).starts_with("WRONGPASS"));
    assert!(
        server_error(cmd(&mut c, &["AUTH", "nobody", "app-pw"]).await).starts_with("WRONGPASS")
    );
    wait_metric(
        proxy.admin,
        "sentinel_proxy_auth_failures_total",
        2.0,
        Duration::from_secs(5),
    )
    .await;
    cmd(&mut c, &["AUTH", "app", "app-pw"]).await.unwrap();
    let who = cmd(&mut c, &["ACL", "WHOAMI"]).await.unwrap();
    assert_eq!(frame_text(&who), Some(PROXY_USER), "credential injection");

    // A legacy client: AUTH with a password alone (user default), pipelined with its requests.
    let mut raw = tokio::net::TcpStream::connect(addr(proxy.port))
        .await
        .unwrap();
    raw.write_all(
        &[
            multibulk(&["AUTH", "legacy-pw"]),
            multibulk(&["SET", "auth:k", "v"]),
            multibulk(&["GET", "auth:k"]),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_n(&mut raw, 17).await, "+OK\r\n+OK\r\n$1\r\nv\r\n");

    // HELLO 3 AUTH: Redis answers the HELLO (a RESP3 map), without the credentials.
    let mut raw3 = tokio::net::TcpStream::connect(addr(proxy.port))
        .await
        .unwrap();
    raw3.write_all(&multibulk(&[
        "HELLO", "3", "AUTH", "app", "app-pw", "SETNAME", "h3",
    ]))
    .await
    .unwrap();
    let hello = read_n(&mut raw3, 1).await;
    assert!(hello.starts_with('%'), "a RESP3 map from Redis: {hello:?}");
    raw3.write_all(&multibulk(&["CLIENT", "GETNAME"]))
        .await
        .unwrap();
    let name = read_n(&mut raw3, 8).await;
    assert!(name.contains("h3"), "{name:?}");

    // redis-cli with an ACL-style user of the proxy's.
    let out = Command::new("redis-cli")
        .args(["-p", &proxy.port.to_string(), "--no-auth-warning"])
        .args(["--user", "app", "--pass", "app-pw", "ACL", "WHOAMI"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), PROXY_USER);

    // A failover: the authenticated client carries on, still as the proxy's user.
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(30)).await;
    wait_carried_to(&mut c, new, Duration::from_secs(20)).await;
    let who = cmd(&mut c, &["ACL", "WHOAMI"]).await.unwrap();
    assert_eq!(frame_text(&who), Some(PROXY_USER));
    cmd(&mut c, &["SET", "auth:after", "1"]).await.unwrap();

    // A reload with another users file: the new user gets in, a removed one does not.
    let next = users_file(dir.path(), &[("app2", "pw2")]);
    let mut cfg = (*proxy.group.config()).clone();
    cfg.users = Some(next);
    proxy
        .group
        .shared
        .reload(std::slice::from_ref(&proxy.group), cfg);
    let mut c2 = conn(proxy.port).await.unwrap();
    assert!(server_error(cmd(&mut c2, &["AUTH", "app", "app-pw"]).await).starts_with("WRONGPASS"));
    cmd(&mut c2, &["AUTH", "app2", "pw2"]).await.unwrap();
    cmd(&mut c2, &["GET", "auth:after"]).await.unwrap();
}

/// `sentinel-proxy hash-password` prints a hash the users file takes; a users file that does
/// not load is one line and exit 2.
#[test]
fn hash_password_and_a_bad_users_file() {
    let bin = env!("CARGO_BIN_EXE_sentinel-proxy");
    let mut child = Command::new(bin)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(&path, format!("app:{}", h.trim())).unwrap();
    assert!(Users::load(&path).unwrap().verify(b"app", b"hunter2"));
    // --check says what is protected.
    let certs = support::certs::Certs::make(dir.path());
    let out = Command::new(bin)
        .args(["--check", "--sentinels", "127.0.0.1:1", "--users-file"])
        .arg(&path)
        .arg("--tls-cert-file")
        .arg(&certs.cert)
        .arg("--tls-key-file")
        .arg(&certs.key)
        .arg("--master-tls-ca-file")
        .arg(&certs.ca)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("TLS: client ports, redis nodes; 1 proxy user(s)"),
        "{said}"
    );

    std::fs::write(&path, "app:hunter2\n").unwrap();
    let out = Command::new(bin)
        .args(["--check", "--sentinels", "127.0.0.1:1", "--users-file"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("line 1: the hash is not a PHC string"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// Nothing an unauthenticated client sends reaches Redis: the gate answers with no Redis at
/// all behind it. And `idle-timeout` closes a client that never authenticates, as Redis's
/// `timeout` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_needs_no_redis_and_closes_the_idle() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path(), &[("app", "app-pw")]);
    let nowhere = vec![hp(unused_port())];
    let proxy = Proxy::start_with(nowhere, |cfg| {
        cfg.users = Some(users.clone());
        cfg.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = conn(proxy.port).await.unwrap();
    assert_eq!(
        server_error(cmd(&mut c, &["PING"]).await),
        "NOAUTH Authentication required."
    );
    let mut idle = tokio::net::TcpStream::connect(addr(proxy.port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed for idling: {read:?}"
    );
    wait_metric(
        proxy.admin,
        "sentinel_proxy_sessions_closed_total{reason=\"idle_timeout\"}",
        2.0,
        Duration::from_secs(5),
    )
    .await;
}

/// The Sentinel face asks for the proxy's users too: nothing but `NOAUTH` before a login, a
/// wrong password refused as Redis refuses it, then Sentinel's answers naming the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_face_asks_for_the_proxys_users() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path(), &[("app", "app-pw")]);
    let nowhere = vec![hp(unused_port())];
    let proxy = Proxy::start_with(nowhere, |cfg| {
        cfg.users = Some(users.clone());
        cfg.sentinel_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut c = conn(proxy.face.unwrap()).await.unwrap();
    assert_eq!(
        server_error(cmd(&mut c, &["SENTINEL", "masters"]).await),
        "NOAUTH Authentication required."
    );
    assert_eq!(
        server_error(cmd(&mut c, &["AUTH", "app", "wrong"]).await),
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        cmd(&mut c, &["AUTH", "app", "app-pw"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    assert_eq!(
        cmd(&mut c, &["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .await
            .unwrap(),
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"127.0.0.1".to_vec()),
            OwnedFrame::BulkString(proxy.port.to_string().into_bytes()),
        ])
    );
}
