//! A small RESP client for the proxy's own control-plane queries: `SENTINEL get-master-addr-by-name`,
//! `ROLE` checks, and the pub/sub subscription to Sentinel events.
//!
//! It is deliberately tiny (one request at a time, replies decoded with `redis-protocol`) and every
//! call is bounded by a timeout, so a hung or hostile peer can delay a query but never block the
//! watcher. Replies are capped in size for the same reason. Client traffic never passes through here.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::command::Learned;
use crate::config::{Auth, HostPort};
use crate::resp::encode_command;
use crate::tls::Link;

/// Control-plane replies are small; anything larger is a broken or hostile peer.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("reply larger than {MAX_REPLY_BYTES} bytes")]
    TooLarge,
    #[error("server error: {0}")]
    Server(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// One connection speaking RESP2, with a per-call timeout.
pub struct RespConn {
    stream: Link,
    buf: BytesMut,
    out: Vec<u8>,
    timeout: Duration,
}

impl RespConn {
    /// Connect (by name or address) within `timeout`, then `AUTH` if `auth` has a password.
    pub async fn connect(
        addr: &HostPort,
        auth: &Auth,
        t: Duration,
    ) -> Result<RespConn, ClientError> {
        let open = async {
            let tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
            crate::sockopt::tune(&tcp, Duration::ZERO);
            crate::tls::open(tcp, &addr.host, auth.tls.as_deref()).await
        };
        let stream = match timeout(t, open).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            Err(_) => return Err(ClientError::Timeout),
        };
        let mut conn = RespConn {
            stream,
            buf: BytesMut::with_capacity(4096),
            out: Vec::with_capacity(256),
            timeout: t,
        };
        if let Some(command) = auth.command() {
            expect_ok(conn.call(&command).await?)?;
        }
        Ok(conn)
    }

    /// Connect to a resolved address (the ROLE probe of a candidate master).
    pub async fn connect_addr(
        addr: SocketAddr,
        auth: &Auth,
        t: Duration,
    ) -> Result<RespConn, ClientError> {
        RespConn::connect(&HostPort::from(addr), auth, t).await
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Send one command and read its reply; `-ERR` replies come back as [`ClientError::Server`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<OwnedFrame, ClientError> {
        self.send(args).await?;
        let t = self.timeout;
        match timeout(t, self.read_frame()).await {
            Ok(Ok(OwnedFrame::Error(e))) => Err(ClientError::Server(e)),
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Write one command as a RESP array of bulk strings.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), ClientError> {
        self.out.clear();
        encode_command(&mut self.out, args);
        let t = self.timeout;
        // TLS holds written bytes until a flush.
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match timeout(t, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Read the next frame, however long it takes (subscriptions wait for events).
    pub async fn read_frame(&mut self) -> Result<OwnedFrame, ClientError> {
        loop {
            if let Some((frame, used)) = decode_reply(&self.buf)? {
                self.buf.advance(used);
                return Ok(frame);
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

/// The first complete reply in `buf` and the bytes it used; `None` if it is not complete yet.
/// A reply still incomplete past 4 MiB is refused: a sentinel's answers are small, and a
/// hostile or broken one must not make the proxy buffer without bound.
pub fn decode_reply(buf: &[u8]) -> Result<Option<(OwnedFrame, usize)>, ClientError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match decode(buf) {
        Ok(Some(done)) => Ok(Some(done)),
        Ok(None) if buf.len() > MAX_REPLY_BYTES => Err(ClientError::TooLarge),
        Ok(None) => Ok(None),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}

/// Decode a reply and apply every reading the watcher makes of one. For the property tests and
/// the fuzzer: whatever the bytes, this must not panic.
pub fn interpret_reply(buf: &[u8]) {
    if let Ok(Some((frame, _))) = decode_reply(buf) {
        let _ = parse_role(&frame);
        let _ = parse_master_addr(&frame);
        let _ = parse_sentinels(&frame);
        let _ = frame_text(&frame);
        let _ = parse_commands(&frame);
    }
}

fn expect_ok(frame: OwnedFrame) -> Result<(), ClientError> {
    match frame {
        OwnedFrame::SimpleString(s) if s == b"OK" => Ok(()),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// The text of a bulk or simple string frame.
pub fn frame_text(frame: &OwnedFrame) -> Option<&str> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// What `ROLE` said about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Master,
    /// `slave`/`replica` or `sentinel`: not a node to send client writes to.
    Other(String),
}

/// Ask a node its `ROLE`.
pub async fn role(addr: SocketAddr, auth: &Auth, t: Duration) -> Result<Role, ClientError> {
    let mut conn = RespConn::connect_addr(addr, auth, t).await?;
    let reply = conn.call(&[b"ROLE"]).await?;
    parse_role(&reply)
}

/// What the server at `addr` says of its commands (`COMMAND`: each one's name and flags), for
/// the command table (`command::Learned`).
pub async fn commands(addr: SocketAddr, auth: &Auth, t: Duration) -> Result<Learned, ClientError> {
    let mut conn = RespConn::connect_addr(addr, auth, t).await?;
    let reply = conn.call(&[b"COMMAND"]).await?;
    parse_commands(&reply)
}

/// `COMMAND`'s reply: an entry per command, its name first and its flags third.
pub fn parse_commands(reply: &OwnedFrame) -> Result<Learned, ClientError> {
    let unexpected = || ClientError::Unexpected("COMMAND reply is not a list of commands".into());
    let OwnedFrame::Array(entries) = reply else {
        return Err(unexpected());
    };
    let mut learned = Vec::with_capacity(entries.len());
    for e in entries {
        let OwnedFrame::Array(fields) = e else {
            return Err(unexpected());
        };
        let (Some(name), Some(OwnedFrame::Array(flags))) =
            (fields.first().and_then(frame_text), fields.get(2))
        else {
            return Err(unexpected());
        };
        let flags: Vec<&[u8]> = flags
            .iter()
            .filter_map(frame_text)
            .map(str::as_bytes)
            .collect();
        learned.push((name.as_bytes(), flags));
    }
    Ok(Learned::from_entries(learned))
}

pub fn parse_role(reply: &OwnedFrame) -> Result<Role, ClientError> {
    let first = match reply {
        OwnedFrame::Array(items) => items.first().and_then(frame_text),
        _ => None,
    };
    match first {
        Some("master") => Ok(Role::Master),
        Some(other) => Ok(Role::Other(other.to_string())),
        None => Err(ClientError::Unexpected(format!("ROLE reply {reply:?}"))),
    }
}

/// What one sentinel said in one poll: the master's address and the other sentinels it knows.
pub struct SentinelAnswer {
    pub master: Option<HostPort>,
    pub peers: Vec<HostPort>,
}

/// `get-master-addr-by-name` and `SENTINEL sentinels` on one connection to one sentinel.
pub async fn query_sentinel(
    sentinel: &HostPort,
    name: &str,
    auth: &Auth,
    t: Duration,
) -> Result<SentinelAnswer, ClientError> {
    let mut conn = RespConn::connect(sentinel, auth, t).await?;
    let reply = conn
        .call(&[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()])
        .await?;
    let master = parse_master_addr(&reply)?;
    // An unknown name is an error reply here; the peers list is only a bonus.
    let peers = match conn
        .call(&[b"SENTINEL", b"sentinels", name.as_bytes()])
        .await
    {
        Ok(reply) => parse_sentinels(&reply),
        Err(ClientError::Server(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(SentinelAnswer { master, peers })
}

/// Why an address a sentinel gave is not a node to connect to.
#[derive(Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// `0.0.0.0` or `::`: Sentinel's placeholder for an address it does not know yet.
    Unspecified,
    /// A host name that did not resolve within the timeout.
    Lookup,
}

/// `hp` as a socket address: an IP as it is, a host name resolved at use (first address) within
/// `t`, as sentinels that announce host names (Docker Compose, Kubernetes) need.
pub async fn resolve(hp: &HostPort, t: Duration) -> Result<SocketAddr, Unresolved> {
    if let Ok(ip) = hp.host.parse::<std::net::IpAddr>() {
        if ip.is_unspecified() {
            return Err(Unresolved::Unspecified);
        }
        return Ok(SocketAddr::new(ip, hp.port));
    }
    let lookup = tokio::net::lookup_host((hp.host.as_str(), hp.port));
    let addr = match timeout(t, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or(Unresolved::Lookup)?,
        _ => return Err(Unresolved::Lookup),
    };
    // TLS verifies a node by the name it was given as.
    crate::tls::remember_name(addr, &hp.host);
    Ok(addr)
}

/// The entries of a `SENTINEL sentinels` / `SENTINEL replicas` reply, each an array of
/// alternating field names and values, as lookups by field name.
pub fn entries(reply: &OwnedFrame) -> impl Iterator<Item = Entry<'_>> {
    let entries: &[OwnedFrame] = match reply {
        OwnedFrame::Array(entries) => entries,
        _ => &[],
    };
    entries.iter().filter_map(|entry| match entry {
        OwnedFrame::Array(fields) => Some(Entry(fields)),
        _ => None,
    })
}

/// One entry of a Sentinel listing (see [`entries`]).
pub struct Entry<'a>(&'a [OwnedFrame]);

impl<'a> Entry<'a> {
    /// The value of field `name`, if the entry has it as text.
    pub fn field(&self, name: &str) -> Option<&'a str> {
        self.0
            .chunks(2)
            .find(|kv| kv.len() == 2 && frame_text(&kv[0]) == Some(name))
            .and_then(|kv| frame_text(&kv[1]))
    }
}

/// The `ip`/`port` of each entry of a `SENTINEL sentinels` reply (flat field/value arrays).
/// Entries with an unspecified address (`0.0.0.0`, `::`) or no port are skipped.
pub fn parse_sentinels(reply: &OwnedFrame) -> Vec<HostPort> {
    entries(reply)
        .filter_map(|entry| {
            let field = |name: &str| entry.field(name);
            let ip = field("ip")?;
            let port: u16 = field("port")?.parse().ok().filter(|p| *p != 0)?;
            if ip.is_empty()
                || ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_unspecified())
            {
                return None;
            }
            Some(HostPort {
                host: ip.to_string(),
                port,
            })
        })
        .collect()
}

pub fn parse_master_addr(reply: &OwnedFrame) -> Result<Option<HostPort>, ClientError> {
    match reply {
        OwnedFrame::Null => Ok(None),
        OwnedFrame::Array(items) if items.is_empty() => Ok(None),
        OwnedFrame::Array(items) if items.len() == 2 => {
            let host = frame_text(&items[0]);
            let port = frame_text(&items[1]).and_then(|p| p.parse::<u16>().ok());
            match (host, port) {
                (Some(h), Some(p)) if !h.is_empty() && p != 0 => Ok(Some(HostPort {
                    host: h.to_string(),
                    port: p,
                })),
                _ => Err(ClientError::Unexpected(format!("master address {reply:?}"))),
            }
        }
        other => Err(ClientError::Unexpected(format!("master address {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn resolves_ips_names_and_not_the_placeholder() {
        let hp = |host: &str| HostPort {
            host: host.into(),
            port: 6379,
        };
        let t = Duration::from_secs(2);
        assert_eq!(
            resolve(&hp("10.1.2.3"), t).await,
            Ok("10.1.2.3:6379".parse().unwrap())
        );
        assert_eq!(
            resolve(&hp("0.0.0.0"), t).await,
            Err(Unresolved::Unspecified)
        );
        assert_eq!(resolve(&hp("::"), t).await, Err(Unresolved::Unspecified));
        let local = resolve(&hp("localhost"), t).await.unwrap();
        assert!(local.ip().is_loopback() && local.port() == 6379, "{local}");
        assert_eq!(
            resolve(&hp("no-such-host.invalid"), t).await,
            Err(Unresolved::Lookup)
        );
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SENTINEL", b"get-master-addr-by-name", b"m"]);
        assert_eq!(
            out,
            b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$1\r\nm\r\n"
        );
    }

    #[test]
    fn parses_master_addr() {
        let r = OwnedFrame::Array(vec![bulk("127.0.0.1"), bulk("6380")]);
        assert_eq!(
            parse_master_addr(&r).unwrap(),
            Some(HostPort {
                host: "127.0.0.1".into(),
                port: 6380
            })
        );
        assert_eq!(parse_master_addr(&OwnedFrame::Null).unwrap(), None);
        assert!(parse_master_addr(&OwnedFrame::Array(vec![bulk("h"), bulk("x")])).is_err());
        assert!(parse_master_addr(&OwnedFrame::Integer(3)).is_err());
    }

    #[test]
    fn parses_sentinels() {
        let entry = |ip: &str, port: &str| {
            OwnedFrame::Array(vec![
                bulk("name"),
                bulk("abc"),
                bulk("ip"),
                bulk(ip),
                bulk("port"),
                bulk(port),
                bulk("flags"),
                bulk("sentinel"),
            ])
        };
        let reply = OwnedFrame::Array(vec![
            entry("127.0.0.1", "26380"),
            entry("0.0.0.0", "26381"),
            entry("10.0.0.9", "zero"),
            OwnedFrame::Integer(1),
        ]);
        assert_eq!(
            parse_sentinels(&reply),
            vec![HostPort {
                host: "127.0.0.1".into(),
                port: 26380
            }]
        );
        assert!(parse_sentinels(&OwnedFrame::Null).is_empty());
    }

    #[test]
    fn parses_role() {
        let master = OwnedFrame::Array(vec![
            bulk("master"),
            OwnedFrame::Integer(0),
            OwnedFrame::Array(vec![]),
        ]);
        assert_eq!(parse_role(&master).unwrap(), Role::Master);
        let slave = OwnedFrame::Array(vec![bulk("slave"), bulk("127.0.0.1")]);
        assert_eq!(parse_role(&slave).unwrap(), Role::Other("slave".into()));
        assert!(parse_role(&OwnedFrame::Integer(1)).is_err());
    }
}
