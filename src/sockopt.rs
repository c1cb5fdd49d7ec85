//! The options every real TCP connection of the data path gets, plain or TLS, client or node:
//! no Nagle delay (requests and replies are small and latency-bound), and with
//! `--tcp-keepalive`, keepalive probes after that much idle time and then every
//! `KEEPALIVE_INTERVAL`, so a peer that vanished (a dead pod, a cut network) is noticed.

use std::time::Duration;

use tokio::net::TcpStream;

/// Between keepalive probes once they have started.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Set nodelay, and keepalive unless `keepalive` is zero (errors ignored: a socket that refuses
/// an option still serves).
pub fn tune(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    if !keepalive.is_zero() {
        let ka = socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(KEEPALIVE_INTERVAL);
        let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
    }
}
