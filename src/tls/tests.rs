use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

use crate::test_certs::Certs;

fn server_files(c: &Certs, client_ca: bool) -> ServerFiles {
    ServerFiles {
        cert: c.cert.clone(),
        key: c.key.clone(),
        client_ca: client_ca.then(|| c.ca.clone()),
        client_crl: None,
    }
}

fn client_files(c: &Certs, cert: bool) -> ClientFiles {
    ClientFiles {
        ca: c.ca.clone(),
        cert: cert.then(|| c.cert.clone()),
        key: cert.then(|| c.key.clone()),
        server_name: None,
    }
}

#[test]
fn refresh_swaps_only_on_a_change_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let m = TlsServer::load(server_files(&c, true)).unwrap();
    assert!(!m.refresh().unwrap(), "unchanged files are not a change");
    let before = m.config();

    // A rotated pair: in use from the next handshake.
    c.issue("node", &["127.0.0.1"]);
    assert!(m.refresh().unwrap());
    assert!(!Arc::ptr_eq(&before, &m.config()));
    let rotated = m.config();

    // A key that is not PEM, then a key of another certificate: refused, the rotated pair stays.
    std::fs::write(&c.key, "not a key").unwrap();
    let e = m.refresh().unwrap_err().to_string();
    assert!(e.contains("node.key"), "{e}");
    assert!(!m.refresh().unwrap(), "a bad file is reported once");
    assert!(Arc::ptr_eq(&rotated, &m.config()));
    let (_, other_key) = c.issue("other", &["127.0.0.1"]);
    std::fs::copy(other_key, &c.key).unwrap();
    assert!(
        m.refresh().is_err(),
        "a key that does not match the certificate"
    );
    assert!(Arc::ptr_eq(&rotated, &m.config()));

    // A missing file names itself, and loading fails the same way.
    std::fs::remove_file(&c.cert).unwrap();
    assert!(m.refresh().unwrap_err().to_string().contains("node.pem"));
    assert!(!m.refresh().unwrap());
    assert!(TlsServer::load(server_files(&c, false)).is_err());
}

#[test]
fn debug_shows_paths_never_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let m = TlsClient::load(client_files(&c, true)).unwrap();
    let shown = format!("{m:?}");
    assert!(shown.contains("node.key"), "{shown}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
}

/// A TLS client through `connect` to a TLS server through `accept`, each a link on its own
/// socket: bytes go both ways, the addresses are the sockets' own, and without a client
/// certificate mutual TLS fails.
#[tokio::test]
async fn both_ways_with_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let server = Arc::new(TlsServer::load(server_files(&c, true)).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            match accept(&server, tcp, Duration::ZERO).await {
                Ok(mut s) => {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap();
                    s.send(&buf[..n]).await.unwrap();
                    results.push(true);
                }
                Err(_) => results.push(false),
            }
        }
        results
    });

    let client = TlsClient::load(client_files(&c, true)).unwrap();
    let mut s = connect(at, Some(&client), std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(s.peer_addr().unwrap(), at, "the node's address");
    assert_eq!(s.local_addr().unwrap(), s.tcp().local_addr().unwrap());
    s.send(b"+PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+PING\r\n");

    let anonymous = TlsClient::load(client_files(&c, false)).unwrap();
    if let Ok(mut s) = connect(at, Some(&anonymous), std::time::Duration::ZERO).await {
        // TLS 1.3 finishes the client's side before the server has judged its certificate.
        let _ = s.write_all(b"+PING\r\n").await;
        let mut buf = [0u8; 7];
        assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)));
    }
    assert_eq!(accepting.await.unwrap(), vec![true, false]);
}

/// A node known by a host name (as a sentinel announced it) is verified for that name, though
/// the proxy connects to the address it resolved: a certificate for `localhost` only passes.
#[tokio::test]
async fn an_announced_name_is_verified_not_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let (cert, key) = c.issue("named", &["localhost"]);
    let server = Arc::new(
        TlsServer::load(ServerFiles {
            cert,
            key,
            client_ca: None,
            client_crl: None,
        })
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = accept(&server, tcp, Duration::ZERO).await {
                    let _ = s.write_all(b"+OK\r\n").await;
                    let mut sink = [0u8; 16];
                    let _ = s.read(&mut sink).await;
                }
            });
        }
    });
    let client = TlsClient::load(client_files(&c, false)).unwrap();
    let answer = |mut s: Link| async move {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map(|_| buf)
    };
    // By address: the certificate has no IP, so the handshake fails.
    let s = connect(at, Some(&client), std::time::Duration::ZERO).await;
    assert!(s.is_err() || answer(s.unwrap()).await.is_err());
    remember_name(at, "localhost");
    let s = connect(at, Some(&client), std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(&answer(s).await.unwrap(), b"+OK\r\n");
}

#[test]
fn the_server_name_is_the_override_or_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let mut files = client_files(&c, false);
    let plain = TlsClient::load(files.clone()).unwrap();
    assert_eq!(
        plain.server_name("10.0.0.1").unwrap(),
        ServerName::IpAddress("10.0.0.1".parse::<IpAddr>().unwrap().into())
    );
    assert_eq!(
        plain.server_name("redis-0.redis").unwrap().to_str(),
        "redis-0.redis"
    );
    files.server_name = Some("redis.internal".into());
    let named = TlsClient::load(files).unwrap();
    assert_eq!(
        named.server_name("10.0.0.1").unwrap().to_str(),
        "redis.internal"
    );
}

/// A TLS connection's session works on the connection's own socket, which gets the options of a
/// plain one: read back with getsockopt on a duplicate of the socket, for a client accepted on
/// a TLS port and for a TLS connection to a node.
#[tokio::test]
async fn the_real_sockets_get_nodelay_and_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let server = Arc::new(TlsServer::load(server_files(&c, false)).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let keepalive = Duration::from_secs(77);
    // The same socket twice (dup): one end for the code under test, one to read the options.
    let twice = |tcp: TcpStream| {
        let std = tcp.into_std().unwrap();
        let probe = std.try_clone().unwrap();
        (TcpStream::from_std(std).unwrap(), probe)
    };
    let check = |probe: &std::net::TcpStream, side: &str| {
        let s = socket2::SockRef::from(probe);
        assert!(s.tcp_nodelay().unwrap(), "{side}: nodelay");
        assert!(s.keepalive().unwrap(), "{side}: keepalive");
        assert_eq!(s.tcp_keepalive_time().unwrap(), keepalive, "{side}");
        assert_eq!(
            s.tcp_keepalive_interval().unwrap(),
            crate::sockopt::KEEPALIVE_INTERVAL,
            "{side}"
        );
    };
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (tcp, probe) = twice(tcp);
        let mut s = accept(&server, tcp, keepalive).await.unwrap();
        // The session's socket is the client's own (no loopback hop): the same two ends.
        assert_eq!(s.tcp().peer_addr().unwrap(), probe.peer_addr().unwrap());
        assert_eq!(s.tcp().local_addr().unwrap(), probe.local_addr().unwrap());
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        s.send(&buf).await.unwrap();
        probe
    });
    let client = TlsClient::load(client_files(&c, false)).unwrap();
    let (tcp, probe) = twice(TcpStream::connect(at).await.unwrap());
    crate::sockopt::tune(&tcp, keepalive); // as `connect` does before the handshake
    let mut s = open(tcp, "127.0.0.1", Some(&client)).await.unwrap();
    assert_eq!(s.tcp().local_addr().unwrap(), probe.local_addr().unwrap());
    s.send(b"+PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    check(&probe, "a TLS connection to a node");
    check(&accepting.await.unwrap(), "a client of a TLS port");
}

/// What a TLS client's link takes is all delivered, however full its socket: `try_write` takes
/// plaintext until the socket and rustls's buffer are full, and says `WouldBlock` only with
/// records left to write (`wants_flush`), which `flush_now` writes once the socket has room.
#[tokio::test]
async fn a_full_socket_keeps_tls_records_until_flushed() {
    let (mut link, mut peer, _dir) = linked().await;
    // The peer reads nothing yet: write until nothing more is taken.
    let chunk = vec![b'x'; 64 * 1024];
    let mut taken = 0usize;
    loop {
        match link.try_write(&chunk) {
            Ok(n) => taken += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(link.wants_flush(), "WouldBlock with no records left");
    // Now the peer reads, and the link writes what it kept as the socket makes room.
    let reading = async {
        let mut got = vec![0u8; taken];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == b'x'));
    };
    let flushing = async {
        while link.wants_flush() {
            std::future::poll_fn(|cx| link.poll_write_ready(cx))
                .await
                .unwrap();
            link.flush_now().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(reading, flushing)
    })
    .await
    .expect("every byte taken arrives");
}

/// A link and its TLS peer: (the proxy's end as a client of a TLS port, the peer's end).
async fn linked() -> (
    Link,
    tokio_rustls::client::TlsStream<TcpStream>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    let server = Arc::new(TlsServer::load(server_files(&c, false)).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let client = TlsClient::load(client_files(&c, false)).unwrap();
    let connecting = async {
        let tcp = TcpStream::connect(at).await.unwrap();
        client.handshake("127.0.0.1", tcp).await.unwrap()
    };
    let accepting = async {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(&server, tcp, Duration::ZERO).await.unwrap()
    };
    let (peer, link) = tokio::join!(connecting, accepting);
    (link, peer, dir)
}

/// The peer's end of stream reaches the session as one, whether the peer says `close_notify`
/// first or just closes its socket (as most Redis clients do), after the bytes it sent before.
#[tokio::test]
async fn the_peers_end_of_stream_reaches_the_session_after_its_bytes() {
    for notify in [true, false] {
        let (mut link, mut peer, _dir) = linked().await;
        peer.write_all(b"QUIT\r\n").await.unwrap();
        peer.flush().await.unwrap();
        if notify {
            peer.shutdown().await.unwrap();
        } else {
            // The socket's end under TLS (a FIN: dropping the socket would reset it, as the
            // proxy's session tickets are still unread there, and a reset is an error, as on a
            // plain socket).
            peer.get_mut().0.shutdown().await.unwrap();
        }
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), link.read_to_end(&mut got))
            .await
            .expect("the end of stream")
            .unwrap();
        assert_eq!(got, b"QUIT\r\n", "close_notify first: {notify}");
    }
}

/// The session's last bytes reach the peer when it closes, then `close_notify` and the end.
#[tokio::test]
async fn the_sessions_last_bytes_reach_the_peer_when_it_closes() {
    let (mut link, mut peer, _dir) = linked().await;
    link.send(b"+OK\r\n").await.unwrap();
    link.shutdown().await.unwrap();
    drop(link);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
        .await
        .expect("the end of stream")
        .unwrap();
    assert_eq!(got, b"+OK\r\n");
}

/// Mutual TLS with the CA's revocation list: a good client certificate passes and names its
/// user (`cn`, `san`); an expired one, a revoked one and one of another CA are refused, and
/// `certificate_refused` says why (what the listener logs).
#[tokio::test]
async fn expired_and_revoked_client_certificates_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::make(dir.path());
    c.issue_client("alice", "alice", &["alice.clients.internal"], 100, false);
    c.issue_client("old", "alice", &[], 101, true);
    c.issue_client("eve", "eve", &[], 102, false);
    let crl = c.revoke(&[102]);
    let other_dir = tempfile::tempdir().unwrap();
    let other = Certs::make(other_dir.path());
    other.issue_client("stranger", "alice", &[], 100, false);
    let mut files = server_files(&c, true);
    files.client_crl = Some(crl);
    let server = Arc::new(TlsServer::load(files).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let as_client = |certs: &Certs, stem: &str| {
        TlsClient::load(ClientFiles {
            ca: c.ca.clone(),
            cert: Some(certs.ca.with_file_name(format!("{stem}.pem"))),
            key: Some(certs.ca.with_file_name(format!("{stem}.key"))),
            server_name: None,
        })
        .unwrap()
    };
    for (certs, stem, refused) in [
        (&c, "alice", None),
        (&c, "old", Some("Expired")),
        (&c, "eve", Some("Revoked")),
        // Another CA of the same name: its signature does not verify.
        (&other, "stranger", Some("BadSignature")),
    ] {
        let client = as_client(certs, stem);
        let connecting = async {
            let tcp = TcpStream::connect(at).await.unwrap();
            // TLS 1.3: the client is done before the server has judged its certificate; the
            // refusal reaches it as an alert or a close on its first read.
            let mut s = client.handshake("127.0.0.1", tcp).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf).await.ok().map(|_| buf)
        };
        let accepting = async {
            let (tcp, _) = listener.accept().await.unwrap();
            match accept(&server, tcp, Duration::ZERO).await {
                Ok(mut link) => {
                    let user = certificate_names(link.peer_certificate().unwrap(), CertUser::Cn);
                    let dns = certificate_names(link.peer_certificate().unwrap(), CertUser::San);
                    let mut buf = [0u8; 6];
                    link.read_exact(&mut buf).await.unwrap();
                    link.send(b"+PONG\r\n").await.unwrap();
                    Ok((user, dns))
                }
                Err(e) => Err(certificate_refused(&e)),
            }
        };
        let (answered, accepted) = tokio::join!(connecting, accepting);
        match refused {
            None => {
                let (user, dns) = accepted.expect("a good certificate passes");
                assert_eq!(user, vec!["alice"]);
                assert_eq!(dns, vec!["alice.clients.internal"]);
                assert!(answered.is_some());
            }
            Some(why) => {
                let reason = accepted.expect_err(stem).expect("a certificate reason");
                assert!(reason.contains(why), "{stem}: {reason}");
                assert!(answered.is_none(), "{stem} got an answer");
            }
        }
    }
}
