//! How a session's connection to a Redis node is opened, wherever it is made (a new client, a
//! move to a new master, a pooled connection, a spare): TLS when it is on for Redis nodes, and,
//! when the proxy authenticates clients itself, the proxy's own `AUTH` with its master
//! credentials before any client byte (credential injection, `auth.rs`).

use std::io;
use std::net::SocketAddr;

use crate::tls::Link;

use super::io::exchange;
use crate::Group;
use crate::resp::encode_command;

pub(super) async fn open(group: &Group, addr: SocketAddr) -> io::Result<Link> {
    let config = group.config();
    let settings = group.settings();
    let auth = &settings.master_auth;
    let mut stream = crate::tls::connect(addr, auth.tls.as_deref(), config.tcp_keepalive).await?;
    if config.users.is_some()
        && let Some(args) = auth.command()
    {
        let mut command = Vec::with_capacity(64);
        encode_command(&mut command, &args);
        if exchange(&mut stream, &command).await? != b'+' {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "Redis refused the proxy's master credentials",
            ));
        }
    }
    Ok(stream)
}
