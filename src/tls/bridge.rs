//! The splice between a TLS connection and the plain socket its session uses: a loopback TCP
//! pair made for the one connection, and a task that copies between the TLS stream and the far
//! end. The peer's end of stream is passed on to the session as one; the session's close ends
//! the bridge at once (the peer gets `close_notify` and the close, as it would from Redis or
//! from the proxy without TLS), rather than waiting for a peer that may never close its side.
//!
//! The pair is made with a listener of its own on 127.0.0.1, closed once the one connection the
//! proxy made itself is accepted: anything else that connects in that instant is dropped, so no
//! other local process can reach a session through it.
//!
//! A bridged backend's real addresses (the node's, and the proxy's own as the node sees it) are
//! kept by the near end's address for as long as the bridge runs: [`addrs`] gives them, as
//! `peer_addr` and `local_addr` would on a plain socket (`CLIENT LIST` finds the proxy's
//! connection by them).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Near end's address → (peer, local) of the bridged TLS connection.
static BRIDGED: LazyLock<Mutex<HashMap<SocketAddr, (SocketAddr, SocketAddr)>>> =
    LazyLock::new(Default::default);

/// Per direction; a TLS record is at most 16 KiB of plaintext.
const COPY_BUF: usize = 16 * 1024;

/// The peer's and the proxy's own address of a backend connection from `super::connect`,
/// bridged or not.
pub fn addrs(stream: &TcpStream) -> io::Result<(SocketAddr, SocketAddr)> {
    let near = stream.local_addr()?;
    if let Some(ends) = lock().get(&near) {
        return Ok(*ends);
    }
    Ok((stream.peer_addr()?, near))
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<SocketAddr, (SocketAddr, SocketAddr)>> {
    BRIDGED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Splice `outer` to a new loopback pair and return the near end. `ends`: the real addresses
/// of a backend connection, for [`addrs`].
pub(super) async fn splice<S>(
    outer: S,
    ends: Option<(SocketAddr, SocketAddr)>,
) -> io::Result<TcpStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Ok(spliced(outer, ends).await?.0)
}

/// [`splice`], with the bridge's task (for tests: it ends when the session closes).
async fn spliced<S>(
    outer: S,
    ends: Option<(SocketAddr, SocketAddr)>,
) -> io::Result<(TcpStream, tokio::task::JoinHandle<()>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = pair().await?;
    let key = near.local_addr()?;
    if let Some(ends) = ends {
        lock().insert(key, ends);
    }
    let task = tokio::spawn(async move {
        let (peer_r, mut peer_w) = tokio::io::split(outer);
        let (far_r, mut far_w) = far.into_split();
        let inbound = async {
            let mut from = BufReader::with_capacity(COPY_BUF, peer_r);
            let _ = tokio::io::copy_buf(&mut from, &mut far_w).await;
            let _ = far_w.shutdown().await; // the session reads the peer's end of stream
        };
        let outbound = async {
            let mut from = BufReader::with_capacity(COPY_BUF, far_r);
            let _ = tokio::io::copy_buf(&mut from, &mut peer_w).await;
            let _ = peer_w.shutdown().await; // close_notify
        };
        tokio::pin!(inbound, outbound);
        tokio::select! {
            () = &mut outbound => {}
            () = &mut inbound => outbound.await,
        }
        if ends.is_some() {
            lock().remove(&key);
        }
    });
    Ok((near, task))
}

/// A connected loopback pair: (the end that connected, the end that was accepted).
async fn pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let near = TcpStream::connect(listener.local_addr()?).await?;
    let me = near.local_addr()?;
    let accept = async {
        loop {
            let (far, from) = listener.accept().await?;
            if from == me {
                return Ok::<_, io::Error>(far);
            }
        }
    };
    let far = timeout(Duration::from_secs(1), accept)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let _ = near.set_nodelay(true);
    let _ = far.set_nodelay(true);
    Ok((near, far))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A peer that never closes its side does not keep a bridge: once the session closes, the
    /// bridge ends, and the peer reads the end of stream.
    #[tokio::test]
    async fn the_sessions_close_ends_the_bridge() {
        let (peer, outer) = tokio::io::duplex(1024);
        let (mut near, task) = spliced(outer, None).await.unwrap();
        let (mut peer_r, mut peer_w) = tokio::io::split(peer);
        peer_w.write_all(b"PING\r\n").await.unwrap();
        let mut got = [0u8; 6];
        near.read_exact(&mut got).await.unwrap();
        near.write_all(b"+PONG\r\n").await.unwrap();
        drop(near);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the bridge ends with the session")
            .unwrap();
        let mut reply = Vec::new();
        peer_r.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"+PONG\r\n");
        drop(peer_w); // kept open until here
    }

    /// The peer's end of stream reaches the session as one, and the session's last replies
    /// still reach the peer.
    #[tokio::test]
    async fn the_peers_end_of_stream_reaches_the_session() {
        let (peer, outer) = tokio::io::duplex(1024);
        let (mut near, task) = spliced(outer, None).await.unwrap();
        let (mut peer_r, mut peer_w) = tokio::io::split(peer);
        peer_w.write_all(b"QUIT\r\n").await.unwrap();
        peer_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        near.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"QUIT\r\n");
        near.write_all(b"+OK\r\n").await.unwrap();
        drop(near);
        task.await.unwrap();
        let mut reply = Vec::new();
        peer_r.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"+OK\r\n");
    }
}
