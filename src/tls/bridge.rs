//! The splice between a TLS connection and the plain socket its session uses: a loopback TCP
//! pair made for the one connection, and a task that copies between the TLS stream and the far
//! end until either side closes (a close on one side is passed on as a close on the other).
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

use tokio::io::{AsyncRead, AsyncWrite};
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
    mut outer: S,
    ends: Option<(SocketAddr, SocketAddr)>,
) -> io::Result<TcpStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, mut far) = pair().await?;
    let key = near.local_addr()?;
    if let Some(ends) = ends {
        lock().insert(key, ends);
    }
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut outer, &mut far, COPY_BUF, COPY_BUF)
            .await;
        if ends.is_some() {
            lock().remove(&key);
        }
    });
    Ok(near)
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
