//! Live upgrade, its first part: a running proxy hands its listening sockets to a successor.
//!
//! A proxy started with `--upgrade-socket PATH` listens there (a Unix socket) for its successor.
//! A new process started with the same configuration and `--takeover` connects to it and
//! receives every listening socket (each group's client port, its read port, the admin port) as
//! file descriptors (`SCM_RIGHTS`), with a header naming what each is. It builds its listeners
//! from them instead of binding, answers `ok`, and serves: the kernel's accept queue is the
//! same socket's, so no connection is refused or reset while the two processes change places.
//! On that `ok` the old process stops accepting and shuts down as on SIGTERM.
//!
//! Then the established client connections: a successor that says so in its `ok` (`ok <pid>
//! sessions`) receives each session at its next request boundary over the same socket, one
//! message per session (a length, a JSON [`Handed`]: its group, what to re-create, the client's
//! bytes read and not yet sent) with the client's socket attached. It reconnects to the master,
//! re-creates the session's state there as a failover's move does, and serves the client on the
//! same socket: the client sees a pause, no reconnect. Sessions that cannot be handed over
//! (TLS, mid-transaction, MONITOR, a replication stream, the read port's, the proxy's own users:
//! `session/handover.rs`) close at their boundary, as they do when the successor is an older
//! version that does not ask for sessions (drain-and-close), within `--shutdown-timeout`.
//!
//! What is handed over is what the old process serves at that moment (`Listening`, kept current
//! as reloads add and remove groups). A `--takeover` with nothing answering at the path binds as
//! usual (logged), and so does one for a listener the old process did not send (a group only
//! the successor's configuration has).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::session::{Handed, Outgoing};
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
    /// The Sentinel face (`face.rs`).
    Sentinel,
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    pid: u32,
    /// One per descriptor, in order.
    listeners: Vec<Role>,
}

/// The listening sockets this process serves, by role: what a successor gets (kept current as a
/// reload adds and removes groups; copies of the descriptors, kept only with an upgrade socket,
/// and dropped once the process stops listening: a copy keeps its port accepting).
#[derive(Default)]
pub struct Listening(std::sync::Mutex<Vec<(Role, OwnedFd)>>);

impl Listening {
    pub fn add(&self, role: Role, socket: &impl AsFd) {
        if let (Ok(fd), Ok(mut all)) = (socket.as_fd().try_clone_to_owned(), self.0.lock()) {
            all.retain(|(r, _)| *r != role);
            all.push((role, fd));
        }
    }

    /// The process stops listening (shutdown, or a successor took over): its ports close.
    pub fn clear(&self) {
        if let Ok(mut all) = self.0.lock() {
            all.clear();
        }
    }

    /// A group's listeners closed (a reload removed it).
    pub fn remove_group(&self, name: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.retain(|(r, _)| !matches!(r, Role::Group(n) | Role::Read(n) if n == name));
        }
    }

    /// Copies of every descriptor, for a successor.
    fn copies(&self) -> Vec<(Role, OwnedFd)> {
        let Ok(all) = self.0.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter_map(|(r, fd)| Some((r.clone(), fd.try_clone().ok()?)))
            .collect()
    }
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

    /// Tell the old process that this one serves now and takes its sessions: it stops
    /// accepting, and each session handed over goes to `sink` (with the client's socket) from a
    /// thread of its own, until the old process has exited.
    pub fn serving(
        &mut self,
        sink: impl Fn(Handed, std::net::TcpStream) + Send + 'static,
    ) -> io::Result<()> {
        let Some(mut s) = self.from.take() else {
            return Ok(());
        };
        s.write_all(format!("ok {} sessions\n", std::process::id()).as_bytes())?;
        s.set_read_timeout(None)?;
        std::thread::Builder::new()
            .name("takeover".into())
            .spawn(move || match receive(&s, sink) {
                Ok(n) => info!(
                    sessions = n,
                    "every session the predecessor handed over is served"
                ),
                Err(e) => warn!(error = %e, "the predecessor's sessions stopped coming"),
            })?;
        Ok(())
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

/// Successor side: read sessions (a length, the JSON, the client's socket attached to the first
/// byte) until the predecessor closes; how many came.
fn receive(stream: &UnixStream, sink: impl Fn(Handed, std::net::TcpStream)) -> io::Result<usize> {
    let mut data: Vec<u8> = Vec::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0;
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if got.bytes == 0 {
            return Ok(count);
        }
        data.extend_from_slice(&buf[..got.bytes]);
        // A socket's descriptor comes with the first byte of its message: it is there by the
        // time the message is whole.
        while let Some(len) = data
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        {
            let end = 4 + len as usize;
            if data.len() < end {
                break;
            }
            let handed: Result<Handed, _> = serde_json::from_slice(&data[4..end]);
            data.drain(..end);
            let fd = fds.pop_front();
            match (handed, fd) {
                (Ok(h), Some(fd)) => {
                    count += 1;
                    sink(h, std::net::TcpStream::from(fd));
                }
                (h, _) => warn!(
                    readable = h.is_ok(),
                    "a session handed over without its socket, or unreadable: dropped"
                ),
            }
        }
    }
}

/// Predecessor side: send each session handed over, until this process ends.
fn pass_sessions(mut stream: UnixStream, rx: mpsc::Receiver<Outgoing>) {
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(10)));
    for out in rx {
        let sent = (|| {
            let json = serde_json::to_vec(&out.handed).map_err(io::Error::other)?;
            let mut bytes = Vec::with_capacity(4 + json.len());
            bytes.extend_from_slice(&(json.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&json);
            let fds = [out.fd.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room for the socket"));
            }
            let n = sendmsg(
                &stream,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::empty(),
            )?;
            stream.write_all(&bytes[n..])
        })();
        if let Err(e) = &sent {
            warn!(error = %e, "could not hand a session over: it closes here");
        }
        let _ = out.done.send(sent.is_ok());
    }
}

/// Predecessor side: listen at `path` for a successor; hand it the listening sockets this
/// process serves then (`Shared::listening`, by role), and once it serves, cancel `shutdown`;
/// if it asked for the sessions, pass each one the process's `Handoff` is given.
pub fn serve(path: PathBuf, shutdown: CancellationToken, shared: std::sync::Arc<crate::Shared>) {
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
                match hand_over(&stream, &shared.listening.copies()) {
                    Ok((pid, false)) => {
                        info!(
                            successor = pid,
                            "the successor serves (and takes no sessions): closing at request boundaries"
                        );
                        shutdown.cancel();
                        return;
                    }
                    Ok((pid, true)) => {
                        info!(
                            successor = pid,
                            "the successor serves: handing sessions over at request boundaries"
                        );
                        let sessions = shared.handoff.open();
                        shutdown.cancel();
                        if let Some(rx) = sessions {
                            pass_sessions(stream, rx);
                        }
                        return;
                    }
                    Err(e) => warn!(error = %e, "a successor's takeover failed; serving on"),
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| warn!(error = %e, "cannot start the upgrade thread"));
}

/// Send the listeners, wait for `ok`: the successor's pid, and whether it takes sessions.
fn hand_over(mut stream: &UnixStream, listeners: &[(Role, OwnedFd)]) -> io::Result<(u32, bool)> {
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
        stream,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    // "ok <pid>[ sessions]\n" once it serves; anything else (or its end) and this process serves on.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < 64 && stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer);
    let mut words = answer.split(' ');
    match (words.next(), words.next()) {
        (Some("ok"), Some(pid)) => Ok((pid.parse().unwrap_or(0), words.any(|w| w == "sessions"))),
        _ => Err(io::Error::other("the successor did not take the sockets")),
    }
}
