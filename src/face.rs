//! The Sentinel face (`--sentinel-listen`): the proxy answers the Sentinel API, so a client that
//! speaks Sentinel (redis-py's `Sentinel`, Celery's `sentinel://`, ioredis's `sentinels`) and is
//! pointed at the proxy gets the proxy's own address for each group it serves, and keeps the
//! proxy's fencing, pooling and failover-hiding. What it answers is decided in `face/answer.rs`
//! (pure); here, the listener and one task per connection: read commands, answer, log in with
//! the proxy's users off the async threads, and tell subscribers `+switch-master` when the
//! address the proxy gives out for a group changes (an `announce-host` reloaded), never for the
//! backends' failovers, which the proxy hides.
//!
//! The host given out is `--announce-host` if set, else the address the client reached the
//! face at (a client that reached it can reach the proxy's ports there).

pub mod answer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::{Group, Shared};
use answer::{Conn, Master, Step, View};

/// A command bigger than this closes the connection (Sentinel's commands are small).
const MAX_COMMAND: usize = 64 * 1024;
/// How often a subscribed connection looks whether an address it was given changed.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Serve the face on `listener` until `shutdown`, for the groups `live` lists.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    live: Arc<ArcSwap<Vec<Arc<Group>>>>,
    shutdown: CancellationToken,
) {
    info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "serving the Sentinel face"
    );
    let ids = Arc::new(AtomicU64::new(1));
    let myid: Arc<str> = run_id().into();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "Sentinel face: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (shared, live, shutdown, myid) =
            (shared.clone(), live.clone(), shutdown.clone(), myid.clone());
        tokio::spawn(
            async move { serve(stream, id, &shared, &live, &myid, &shutdown).await }
                .instrument(debug_span!("sentinel_face", client = %peer)),
        );
    }
}

/// A run id for `SENTINEL myid`: 40 hex digits, new at each start.
fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..3u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i ^ u64::from(std::process::id()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(40);
    out
}

/// What the face shows now, to a client that reached it at `reached`.
fn view(shared: &Shared, live: &ArcSwap<Vec<Arc<Group>>>, reached: &str, myid: &str) -> View {
    let config = shared.config();
    let host = config
        .announce_host
        .clone()
        .unwrap_or_else(|| reached.to_string());
    let masters = live
        .load()
        .iter()
        .map(|g| {
            let s = g.settings();
            Master {
                name: g.master_name.clone(),
                host: host.clone(),
                port: s.listen.port(),
                replica: s.read_listen.map(|a| a.port()),
            }
        })
        .collect();
    View {
        masters,
        auth: config.users.is_some(),
        myid: myid.to_string(),
    }
}

async fn serve(
    mut stream: TcpStream,
    id: u64,
    shared: &Shared,
    live: &ArcSwap<Vec<Arc<Group>>>,
    myid: &str,
    shutdown: &CancellationToken,
) {
    let reached = match stream.local_addr() {
        Ok(a) => a.ip().to_string(),
        Err(_) => return,
    };
    let mut conn = Conn {
        id,
        ..Conn::default()
    };
    let mut buf = BytesMut::with_capacity(1024);
    // The addresses subscribers were last shown (`+switch-master` when one changes).
    let mut shown: Vec<Master> = view(shared, live, &reached, myid).masters;
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Every command already read, in order.
        while let Some(args) = match next_command(&mut buf) {
            Ok(a) => a,
            Err(e) => {
                let _ = stream
                    .write_all(format!("-ERR Protocol error: {e}\r\n").as_bytes())
                    .await;
                return;
            }
        } {
            let v = view(shared, live, &reached, myid);
            let reply = match answer::answer(&args, &v, &mut conn) {
                Step::Reply(r) => r,
                Step::Close(r) => {
                    let _ = stream.write_all(&r).await;
                    return;
                }
                Step::Login {
                    user,
                    password,
                    then,
                } => match login(shared, user, password).await {
                    true => {
                        conn.authed = true;
                        then
                    }
                    false => answer::WRONGPASS.to_vec(),
                },
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) if buf.len() > MAX_COMMAND => {
                    let _ = stream.write_all(b"-ERR Protocol error: too big a command\r\n").await;
                    return;
                }
                Ok(_) => {}
            },
            _ = look.tick(), if conn.subscribed() => {
                let now = view(shared, live, &reached, myid).masters;
                for m in &now {
                    let Some(before) = shown.iter().find(|b| b.name == m.name) else {
                        continue;
                    };
                    if (&before.host, before.port) == (&m.host, m.port) {
                        continue;
                    }
                    let payload = format!(
                        "{} {} {} {} {}",
                        m.name, before.host, before.port, m.host, m.port
                    );
                    if let Some(out) = switch_message(&conn, payload.as_bytes())
                        && stream.write_all(&out).await.is_err()
                    {
                        return;
                    }
                }
                shown = now;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// `+switch-master` as this connection hears it (by its channel, or a pattern that matches).
fn switch_message(conn: &Conn, payload: &[u8]) -> Option<Vec<u8>> {
    const CHANNEL: &[u8] = b"+switch-master";
    if conn.channels.contains(CHANNEL) {
        return Some(answer::message(CHANNEL, None, payload));
    }
    let pattern = conn.pattern_for(CHANNEL)?;
    Some(answer::message(CHANNEL, Some(pattern), payload))
}

/// Check credentials against the proxy's users (Argon2 off the async threads, unless the pair
/// verified before).
async fn login(shared: &Shared, user: Vec<u8>, password: Vec<u8>) -> bool {
    let Some(users) = shared.config().users.clone() else {
        return false;
    };
    let name = String::from_utf8_lossy(&user).into_owned();
    let ok = users.verified_before(&user, &password)
        || tokio::task::spawn_blocking(move || users.verify(&user, &password))
            .await
            .unwrap_or(false);
    if !ok {
        debug!(user = %name, "Sentinel face: authentication failed");
    }
    ok
}

/// The next whole command in `buf` (taken out of it): a RESP array of bulk strings, or an inline
/// command (words separated by spaces, as `redis-cli` and telnet send); `None` until one is whole.
fn next_command(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, String> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != b'*' {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            let line = buf.split_to(end + 1);
            let words: Vec<Vec<u8>> = line[..]
                .split(|b: &u8| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if words.is_empty() {
                continue; // an empty line, as Redis skips it
            }
            return Ok(Some(words));
        }
        let (frame, used) = match decode(buf) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        buf.advance(used);
        let OwnedFrame::Array(items) = frame else {
            return Err("expected an array of bulk strings".into());
        };
        let mut args = Vec::with_capacity(items.len());
        for item in items {
            match item {
                OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => args.push(b),
                _ => return Err("expected an array of bulk strings".into()),
            }
        }
        if !args.is_empty() {
            return Ok(Some(args));
        }
    }
}
