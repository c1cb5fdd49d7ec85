//! TLS on all three sides, with real processes: a lab whose nodes and sentinels speak TLS only
//! (client certificates required), certificates made at test time (rcgen), and the proxy in
//! front of it. Plain and TLS clients, `redis-cli --tls`, mutual TLS refused without a client
//! certificate, a failover followed over TLS sentinels, and the rotation of the proxy's own
//! certificate without dropping a connection.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sentinel_proxy::config::{Auth, HostPort};
use sentinel_proxy::sentinel::client::{RespConn, frame_text};
use sentinel_proxy::tls::{ClientFiles, ServerFiles, TlsClient, TlsServer};
use support::certs::Certs;
use support::*;

struct TlsLab {
    lab: Lab,
    certs: Arc<Certs>,
    _dir: tempfile::TempDir,
}

async fn tls_lab() -> TlsLab {
    let dir = tempfile::tempdir().unwrap();
    let certs = Arc::new(Certs::make(dir.path()));
    let lab = Lab::start_with(LabOptions {
        tls: Some(certs.clone()),
        ..LabOptions::default()
    })
    .await;
    TlsLab {
        lab,
        certs,
        _dir: dir,
    }
}

/// The proxy's client side: its own certificate (`proxy.pem`), clients' certificates
/// required when `mutual`.
fn proxy_tls(c: &Certs, mutual: bool) -> Arc<TlsServer> {
    let (cert, key) = (
        c.ca.with_file_name("proxy.pem"),
        c.ca.with_file_name("proxy.key"),
    );
    if !cert.exists() {
        c.issue("proxy", &["127.0.0.1"]);
    }
    Arc::new(
        TlsServer::load(ServerFiles {
            cert,
            key,
            client_ca: mutual.then(|| c.ca.clone()),
            client_crl: None,
        })
        .unwrap(),
    )
}

/// How a client reaches the proxy over TLS: with the lab's certificate as its own, or none.
fn client_auth(c: &Certs, with_cert: bool) -> Auth {
    Auth {
        tls: Some(Arc::new(
            TlsClient::load(ClientFiles {
                ca: c.ca.clone(),
                cert: with_cert.then(|| c.cert.clone()),
                key: with_cert.then(|| c.key.clone()),
                server_name: None,
            })
            .unwrap(),
        )),
        ..Auth::default()
    }
}

async fn through(port: u16, auth: &Auth) -> Option<RespConn> {
    RespConn::connect(&hp(port), auth, Duration::from_secs(2))
        .await
        .ok()
}

fn redis_cli(port: u16, c: &Certs, with_cert: bool, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"]).arg(&c.ca);
    if with_cert {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let out = cmd
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("ERR"), text)
}

/// Redis nodes and sentinels over TLS (the proxy presenting a client certificate to both): a
/// plain client and a TLS client each reach the master, the TLS port refuses a client without a
/// certificate, and a failover is followed over the TLS sentinels by a connection that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_side_and_a_failover_followed() {
    let t = tls_lab().await;
    let backend = Some(Arc::new(tls_client(&t.certs)));
    let set_backend = |cfg: &mut sentinel_proxy::Config| {
        cfg.master_auth.tls = backend.clone();
        cfg.sentinel_auth.tls = backend.clone();
    };
    let plain = Proxy::start_with(t.lab.sentinel_addrs(), set_backend).await;
    let master = plain.wait_ready().await;
    let tls = Proxy::start_with(t.lab.sentinel_addrs(), |cfg| {
        set_backend(cfg);
        cfg.tls = Some(proxy_tls(&t.certs, true));
    })
    .await;
    assert_eq!(tls.wait_ready().await, master);

    // Plain client → proxy → TLS master.
    let mut c = conn(plain.port).await.unwrap();
    cmd(&mut c, &["SET", "tls:k", "v"]).await.unwrap();
    assert_eq!(node_port(&mut c).await.unwrap(), master);

    // TLS client (with a certificate) → proxy → TLS master; redis-cli too.
    let mut s = through(tls.port, &client_auth(&t.certs, true))
        .await
        .expect("a TLS client with a certificate");
    let got = cmd(&mut s, &["GET", "tls:k"]).await.unwrap();
    assert_eq!(frame_text(&got), Some("v"));
    let (ok, out) = redis_cli(tls.port, &t.certs, true, &["INCR", "tls:n"]);
    assert!(ok && out.trim() == "1", "redis-cli --tls: {out}");

    // Mutual TLS: no client certificate, no connection (and it is counted).
    let anonymous = client_auth(&t.certs, false);
    if let Some(mut c) = through(tls.port, &anonymous).await {
        assert!(cmd(&mut c, &["PING"]).await.is_err());
    }
    let (ok, out) = redis_cli(tls.port, &t.certs, false, &["PING"]);
    assert!(!ok, "redis-cli without a certificate got in: {out}");
    let mut c = conn(tls.port).await.unwrap();
    assert!(
        cmd(&mut c, &["PING"]).await.is_err(),
        "a plain-text client on the TLS port"
    );
    wait_metric(
        tls.admin,
        "sentinel_proxy_tls_handshake_failures_total",
        3.0,
        Duration::from_secs(5),
    )
    .await;

    // A failover, learned from the TLS sentinels: both proxies follow, and the TLS client's
    // connection carries on to the new master.
    t.lab.failover().await;
    let new = t.lab.wait_new_master(master, Duration::from_secs(30)).await;
    plain.wait_routes_to(new, Duration::from_secs(30)).await;
    tls.wait_routes_to(new, Duration::from_secs(30)).await;
    wait_carried_to(&mut s, new, Duration::from_secs(20)).await;
    let got = cmd(&mut s, &["INCR", "tls:n"]).await.unwrap();
    assert_eq!(got, OwnedFrame::Integer(2));
    let (_, status) = http_get(tls.admin, "/status").await;
    assert!(!status.contains("PRIVATE KEY"), "{status}");
    // Events come over the TLS sentinels' pub/sub, not only the poll: +switch-master, which
    // every sentinel publishes once the failover is over.
    let series = "sentinel_proxy_sentinel_events_total{event=\"+switch-master\"}";
    eventually(
        Duration::from_secs(20),
        "+switch-master over TLS",
        || async {
            let (_, metrics) = http_get(tls.admin, "/metrics").await;
            metric(&metrics, series).filter(|n| *n >= 1.0)
        },
    )
    .await;
}

/// The DER of the certificate the proxy presents to a new TLS client.
async fn presented(port: u16, c: &Certs) -> Vec<u8> {
    let client = tls_client(c);
    let tcp = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
    let s = client.handshake("127.0.0.1", tcp).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// The proxy's certificate rotated on disk (as a Kubernetes secret is): new clients get the new
/// one within a refresh, an open TLS connection carries on, and a broken file is refused while
/// the rotated certificate stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_certificate_rotates_without_dropping_connections() {
    let t = tls_lab().await;
    let backend = Some(Arc::new(tls_client(&t.certs)));
    let server = proxy_tls(&t.certs, false);
    let proxy = Proxy::start_with(t.lab.sentinel_addrs(), |cfg| {
        cfg.master_auth.tls = backend.clone();
        cfg.sentinel_auth.tls = backend.clone();
        cfg.tls = Some(server.clone());
        cfg.tls_refresh = Duration::from_millis(100);
    })
    .await;
    proxy.wait_ready().await;
    let cert = server.files.cert.clone();
    assert_eq!(presented(proxy.port, &t.certs).await, der(&cert));
    // When the certificate expires, for the alert that warns before clients refuse it.
    let (_, metrics) = http_get(proxy.admin, "/metrics").await;
    let series = "sentinel_proxy_tls_certificate_expiry_timestamp_seconds{side=\"clients\"}";
    let expiry = metric(&metrics, series).unwrap_or_else(|| panic!("{series}:\n{metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 86_400.0 * 365.0, "{expiry}");
    let mut open = through(proxy.port, &client_auth(&t.certs, false))
        .await
        .unwrap();
    cmd(&mut open, &["SET", "rot", "1"]).await.unwrap();

    let before = der(&cert);
    t.certs.issue("proxy", &["127.0.0.1", "localhost"]);
    let after = der(&cert);
    assert_ne!(before, after);
    eventually(
        Duration::from_secs(5),
        "the rotated certificate",
        || async { (presented(proxy.port, &t.certs).await == after).then_some(()) },
    )
    .await;
    assert_eq!(
        cmd(&mut open, &["INCR", "rot"]).await.unwrap(),
        OwnedFrame::Integer(2),
        "the connection opened before the rotation"
    );

    std::fs::write(&server.files.key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
    wait_metric(
        proxy.admin,
        "sentinel_proxy_tls_reloads_total{result=\"rejected\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(presented(proxy.port, &t.certs).await, after);
    let mut fresh = through(proxy.port, &client_auth(&t.certs, false))
        .await
        .unwrap();
    assert_eq!(
        cmd(&mut fresh, &["INCR", "rot"]).await.unwrap(),
        OwnedFrame::Integer(3)
    );
}

/// Sentinels that announce host names (`announce-hostnames`, as in Kubernetes) and node
/// certificates for that name only, no address: the proxy verifies each node for the name
/// Sentinel gives, though it connects to the address it resolved, and follows a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_verified_for_the_names_sentinels_announce() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Arc::new(Certs::make(dir.path()));
    certs.issue("node", &["localhost"]);
    let lab = Lab::start_with(LabOptions {
        tls: Some(certs.clone()),
        hostnames: true,
        ..LabOptions::default()
    })
    .await;
    let backend = Some(Arc::new(tls_client(&certs)));
    let sentinels = lab
        .sentinels
        .iter()
        .map(|s| HostPort {
            host: "localhost".into(),
            port: s.port,
        })
        .collect();
    let proxy = Proxy::start_with(sentinels, |cfg| {
        cfg.master_auth.tls = backend.clone();
        cfg.sentinel_auth.tls = backend.clone();
    })
    .await;
    let master = proxy.wait_ready().await;
    let mut c = conn(proxy.port).await.unwrap();
    cmd(&mut c, &["SET", "named", "1"]).await.unwrap();
    assert_eq!(node_port(&mut c).await.unwrap(), master);

    lab.failover().await;
    let new = lab.wait_new_master(master, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(30)).await;
    wait_carried_to(&mut c, new, Duration::from_secs(20)).await;
    assert_eq!(
        cmd(&mut c, &["INCR", "named"]).await.unwrap(),
        OwnedFrame::Integer(2)
    );
}

/// A TLS client's connection carries large values and a deep pipeline whole, both ways, in
/// the session's own TLS (no bridge): 48 values of 192 KiB written and read back in one
/// pipeline, while the client reads as it writes, so that the sockets fill both ways and TLS
/// records wait for room (in both modes: `scripts/test` runs this file in 1:1 too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_and_a_deep_pipeline_cross_a_tls_client_connection_whole() {
    let lab = Lab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |cfg| {
        cfg.tls = Some(proxy_tls(&certs, false));
    })
    .await;
    proxy.wait_ready().await;
    pipeline_whole(proxy.port, &certs).await;
}

/// The same with TLS on the proxy's side to Redis too: the records of requests wait for room
/// on the node's socket as the records of replies do on the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_and_a_deep_pipeline_cross_tls_on_both_sides_whole() {
    let t = tls_lab().await;
    let backend = Some(Arc::new(tls_client(&t.certs)));
    let proxy = Proxy::start_with(t.lab.sentinel_addrs(), |cfg| {
        cfg.master_auth.tls = backend.clone();
        cfg.sentinel_auth.tls = backend.clone();
        cfg.tls = Some(proxy_tls(&t.certs, false));
    })
    .await;
    proxy.wait_ready().await;
    pipeline_whole(proxy.port, &t.certs).await;
}

/// 48 values of 192 KiB SET then GET in one pipeline over TLS to `port`, read as it is
/// written: every reply, whole and in order, within 60 s.
async fn pipeline_whole(port: u16, certs: &Certs) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tls_client(certs).handshake("127.0.0.1", tcp).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    const N: usize = 48;
    const SIZE: usize = 192 * 1024;
    let value = |i: usize| -> Vec<u8> { (0..SIZE).map(|j| b'a' + ((i + j) % 26) as u8).collect() };
    let mut expected = Vec::new();
    let mut pipeline = Vec::new();
    for i in 0..N {
        let v = value(i);
        let key = format!("tls:big:{i}");
        pipeline.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${SIZE}\r\n", key.len()).as_bytes(),
        );
        pipeline.extend_from_slice(&v);
        pipeline.extend_from_slice(b"\r\n");
        expected.extend_from_slice(b"+OK\r\n");
    }
    for i in 0..N {
        let key = format!("tls:big:{i}");
        pipeline.extend_from_slice(
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
        );
        expected.extend_from_slice(format!("${SIZE}\r\n").as_bytes());
        expected.extend_from_slice(&value(i));
        expected.extend_from_slice(b"\r\n");
    }
    let writer = tokio::spawn(async move {
        wr.write_all(&pipeline).await.unwrap();
        wr.flush().await.unwrap();
        wr
    });
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(60), rd.read_exact(&mut got))
        .await
        .expect("every reply within 60 s")
        .unwrap();
    let _wr = writer.await.unwrap();
    assert!(got == expected, "the replies differ from what was written");
}

/// A subscriber, a client blocked in BLPOP and an idle client ride a failover with TLS to the
/// nodes: each is moved to the new master over TLS (the blocked one unblocked on the old master
/// and its BLPOP re-issued), and each gets what is sent there, once, on the socket it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_subscribed_clients_ride_a_failover_over_tls_to_the_nodes() {
    let t = tls_lab().await;
    let backend = Some(Arc::new(tls_client(&t.certs)));
    let proxy = Proxy::start_with(t.lab.sentinel_addrs(), |cfg| {
        cfg.master_auth.tls = backend.clone();
        cfg.sentinel_auth.tls = backend.clone();
    })
    .await;
    let old = proxy.wait_ready().await;
    let mut sub = conn(proxy.port).await.unwrap();
    cmd(&mut sub, &["SUBSCRIBE", "news"]).await.unwrap();
    let mut blocked = conn(proxy.port).await.unwrap();
    blocked.send(&[b"BLPOP", b"queue", b"0"]).await.unwrap();
    let mut idle = conn(proxy.port).await.unwrap();
    assert_eq!(node_port(&mut idle).await.unwrap(), old);
    eventually(Duration::from_secs(5), "the BLPOP is blocked", || async {
        let mut c = conn(proxy.port).await.ok()?;
        let info = cmd(&mut c, &["INFO", "clients"]).await.ok()?;
        frame_text(&info)?
            .contains("blocked_clients:1")
            .then_some(())
    })
    .await;

    t.lab.failover().await;
    let new = t.lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(30)).await;
    wait_carried_to(&mut idle, new, Duration::from_secs(20)).await;
    for kind in ["pubsub", "blocking"] {
        let series = format!("sentinel_proxy_session_moves_total{{kind=\"{kind}\"}}");
        wait_metric(proxy.admin, &series, 1.0, Duration::from_secs(10)).await;
    }
    moved_subscriber_and_blocked_hear_the_new_master(proxy.port, &mut sub, &mut blocked).await;
}

/// Mutual TLS logs a client in as the user its certificate names (`--tls-client-user cn`,
/// with `--users-file`): alice's certificate needs no AUTH, in either mode; a certificate that
/// names no user leaves its client to AUTH like any other; a revoked one (the CA's list,
/// `--tls-client-crl-file`) does not get in, and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_as_the_user_it_names() {
    use sentinel_proxy::auth::{Users, hash};
    let lab = Lab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    certs.issue_client("alice", "alice", &[], 100, false);
    certs.issue_client("mallory", "mallory", &[], 101, false);
    certs.issue_client("eve", "alice", &[], 102, false);
    let crl = certs.revoke(&[102]);
    let users_path = dir.path().join("users");
    std::fs::write(
        &users_path,
        format!("alice:{}\n", hash("alice-pw").unwrap()),
    )
    .unwrap();
    let users = Arc::new(Users::load(&users_path).unwrap());
    certs.issue("proxy", &["127.0.0.1"]);
    let server = Arc::new(
        TlsServer::load(ServerFiles {
            cert: certs.ca.with_file_name("proxy.pem"),
            key: certs.ca.with_file_name("proxy.key"),
            client_ca: Some(certs.ca.clone()),
            client_crl: Some(crl),
        })
        .unwrap(),
    );
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |cfg| {
        cfg.tls = Some(server);
        cfg.users = Some(users);
        cfg.tls_client_user = Some(sentinel_proxy::tls::CertUser::Cn);
    })
    .await;
    proxy.wait_ready().await;
    let as_client = |stem: &str| Auth {
        tls: Some(Arc::new(
            TlsClient::load(ClientFiles {
                ca: certs.ca.clone(),
                cert: Some(certs.ca.with_file_name(format!("{stem}.pem"))),
                key: Some(certs.ca.with_file_name(format!("{stem}.key"))),
                server_name: None,
            })
            .unwrap(),
        )),
        ..Auth::default()
    };
    let mut alice = through(proxy.port, &as_client("alice")).await.unwrap();
    cmd(&mut alice, &["SET", "cert:k", "v"]).await.unwrap();
    let got = cmd(&mut alice, &["GET", "cert:k"]).await.unwrap();
    assert_eq!(frame_text(&got), Some("v"));

    let mut mallory = through(proxy.port, &as_client("mallory")).await.unwrap();
    let refused = cmd(&mut mallory, &["GET", "cert:k"]).await;
    assert!(
        format!("{refused:?}").contains("NOAUTH"),
        "a certificate naming no user: {refused:?}"
    );
    cmd(&mut mallory, &["AUTH", "alice", "alice-pw"])
        .await
        .unwrap();
    let got = cmd(&mut mallory, &["GET", "cert:k"]).await.unwrap();
    assert_eq!(frame_text(&got), Some("v"));

    if let Some(mut eve) = through(proxy.port, &as_client("eve")).await {
        assert!(cmd(&mut eve, &["GET", "cert:k"]).await.is_err());
    }
    wait_metric(
        proxy.admin,
        "sentinel_proxy_tls_handshake_failures_total",
        1.0,
        Duration::from_secs(5),
    )
    .await;
}
