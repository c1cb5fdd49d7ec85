//! Live upgrade, its first part: a running proxy hands its listening sockets to a successor.
//!
//! A proxy started with `--upgrade-socket PATH` listens there (a Unix socket) for its successor.
//! A new process started with the same configuration and `--takeover` connects to it and
//! receives every listening socket (each group's client port, its read port, the admin port) as
//! file descriptors (`SCM_RIGHTS`), with a header naming what each is. It builds its listeners
//! from them instead of binding, answers `ok`, and serves: the kernel's accept queue is the
//! same socket's, so no connection is refused or reset while the two processes change places.
//! On that `ok` the old process stops accepting and shuts down as on SIGTERM: its sessions close
//! at their next request boundary (drain-and-close; handing the established client connections
//! over is not done yet), within `--shutdown-timeout`.
//!
//! A `--takeover` with nothing answering at the path binds as usual (logged); a listener the old
//! process did not send (a group added by a reload there) is bound.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The most listening sockets handed over at once.
const MAX_FDS: usize = 64;

/// What a handed-over socket is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    /// A group's client port.
    Group(String),
    /// A group's read port.
    Read(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    pid: u32,
    /// One per descriptor, in order.
    listeners: Vec<Role>,
}

/// The listening sockets a successor took over, by role.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: HashMap<Role, std::net::TcpListener>,
    /// Told `ok` once the successor serves (`Inherited::serving`).
    from: Option<UnixStream>,
    pub pid: u32,
}

impl Inherited {
    /// The listener handed over for `role`, if one was (taken: each is used once).
    pub fn take(&mut self, role: &Role) -> Option<std::net::TcpListener> {
        self.listeners.remove(role)
    }

    /// Tell the old process that this one serves now: it stops accepting and drains.
    pub fn serving(&mut self) -> io::Result<()> {
        match self.from.take() {
            Some(mut s) => s.write_all(format!("ok {}\n", std::process::id()).as_bytes()),
            None => Ok(()),
        }
    }
}

/// Successor side: take the listening sockets of the proxy serving `path`.
pub fn take_over(path: &Path) -> io::Result<Inherited> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut header = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let header: Header = serde_json::from_slice(&header[..got.bytes])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if header.version != 1 || header.listeners.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "an answer this version cannot read (version {}, {} sockets for {} named)",
                header.version,
                fds.len(),
                header.listeners.len()
            ),
        ));
    }
    let listeners = header
        .listeners
        .into_iter()
        .zip(fds)
        .map(|(role, fd)| (role, std::net::TcpListener::from(fd)))
        .collect();
    Ok(Inherited {
        listeners,
        from: Some(stream),
        pid: header.pid,
    })
}

/// Predecessor side: listen at `path` for a successor; hand it `listeners` (descriptors of this
/// process's listening sockets, by role), and once it serves, cancel `shutdown`.
pub fn serve(path: PathBuf, listeners: Vec<(Role, OwnedFd)>, shutdown: CancellationToken) {
    // A socket file left by a process gone (or by the predecessor this one took over from,
    // which no longer needs it) is replaced.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot listen for a successor (live upgrade off)");
            return;
        }
    };
    // Whoever can connect gets the listening sockets: the proxy's own user only.
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            warn!(path = %path.display(), error = %e, "cannot restrict the upgrade socket to this user");
        }
    }
    info!(path = %path.display(), "listening for a successor (live upgrade)");
    std::thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if shutdown.is_cancelled() {
                    return;
                }
                let Ok(stream) = stream else { continue };
                match hand_over(stream, &listeners) {
                    Ok(pid) => {
                        info!(
                            successor = pid,
                            "the successor serves: closing at request boundaries"
                        );
                        shutdown.cancel();
                        return;
                    }
                    Err(e) => warn!(error = %e, "a successor's takeover failed; serving on"),
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| warn!(error = %e, "cannot start the upgrade thread"));
}

/// Send the listeners, wait for `ok`: the successor's pid.
fn hand_over(mut stream: UnixStream, listeners: &[(Role, OwnedFd)]) -> io::Result<u32> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let header = Header {
        version: 1,
        pid: std::process::id(),
        listeners: listeners.iter().map(|(r, _)| r.clone()).collect(),
    };
    let bytes = serde_json::to_vec(&header).map_err(io::Error::other)?;
    let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many listening sockets to hand over"));
    }
    sendmsg(
        &stream,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    // "ok <pid>\n" once it serves; anything else (or its end) and this process serves on.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < 32 && stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    match answer.strip_prefix(b"ok ") {
        Some(pid) => Ok(String::from_utf8_lossy(pid).parse().unwrap_or(0)),
        None => Err(io::Error::other("the successor did not take the sockets")),
    }
}
