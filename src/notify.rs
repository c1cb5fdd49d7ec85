//! systemd's service notification (`Type=notify`, `sd_notify(3)`): with `NOTIFY_SOCKET` set, the
//! proxy says `READY=1` once it serves (its listeners bound or taken over), with `MAINPID=` its
//! own pid, so that a successor started by `systemctl reload` (a live upgrade, `upgrade.rs`;
//! the unit has `NotifyAccess=all`) becomes the service's main process before its predecessor
//! exits (so it says it before it tells the predecessor to go). Nothing else: a predecessor
//! draining after a takeover must not tell systemd the service stops. Without `NOTIFY_SOCKET`,
//! nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::debug;

/// Tell systemd `state` (one `KEY=value` per line), if it asked (`NOTIFY_SOCKET`).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(Path::new(&path), state) {
        debug!(error = %e, "could not notify systemd");
    }
}

/// Send `state` to the notification socket at `path` (`@…`: an abstract socket).
pub fn notify_to(path: &Path, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

/// What the proxy says once it serves.
pub fn ready() -> String {
    format!("READY=1\nMAINPID={}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_reaches_the_socket_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(&path, &ready()).unwrap();
        let mut buf = [0u8; 128];
        let n = listener.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert_eq!(got, format!("READY=1\nMAINPID={}", std::process::id()));
        let name = format!("@sentinel-proxy-test-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        notify_to(Path::new(&name), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
