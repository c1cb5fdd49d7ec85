//! The byte-moving primitives of a session: every read lands in one scratch buffer per runtime
//! thread and is written on at once; bytes are kept (in a `Pending`) only while a peer's socket is
//! full or the fence holds them. An idle connection holds no buffer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

use crate::tls::Link;

/// The read buffer of each runtime thread. Every read lands here and is written on at once, so a
/// connection holds no buffer of its own unless a peer's socket is full or the fence holds bytes.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    pub(super) static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// Bytes a session must keep because they could not go on at once: the peer's socket was full, or
/// the fence holds them. Empty and unallocated in the steady state, so idle connections cost no
/// buffer memory; at most one read's worth, because the source is not read while it is non-empty.
#[derive(Default)]
pub(super) struct Pending {
    buf: Vec<u8>,
    off: usize,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.off == self.buf.len()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.off..]
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// `n` bytes went on; the memory is given back once all did.
    pub(super) fn consume(&mut self, n: usize) {
        self.off += n;
        if self.off >= self.buf.len() {
            *self = Pending::default();
        }
    }
}

/// Write as much of `bytes` as the socket takes now, without waiting. On TLS, what is taken may
/// wait in the link's own records ([`Link::wants_flush`]).
pub(super) fn write_now(link: &mut Link, bytes: &[u8]) -> io::Result<usize> {
    write_with(|b| link.try_write(b), bytes)
}

fn write_with(
    mut try_write: impl FnMut(&[u8]) -> io::Result<usize>,
    bytes: &[u8],
) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match try_write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Read once from `stream` into this thread's scratch buffer: `Some(Ok(n))` means
/// `SCRATCH[..n]` holds the bytes, `None` that the readiness was stale. The caller must use the
/// bytes before its next `.await`, so no other session on this thread can overwrite them. A short
/// read clears the readiness (tokio's `poll_read` does), which saves the `EAGAIN` read a
/// `try_read` would cost on every request.
pub(super) async fn read_scratch<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(r) => Poll::Ready(Some(r.map(|()| rb.filled().len()))),
            }
        })
    })
    .await
}

/// A command that shows Redis has accepted a connection, without a trace a client could see:
/// `CONFIG GET` of no parameter answers `*0` (or `-NOAUTH`, `-NOPERM`: any answer will do), and
/// admin commands are not shown to MONITOR (a `PING` would be).
pub(super) const ACCEPTED: &[u8] = b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$14\r\nsentinel-proxy\r\n";

/// Send one command the proxy composed on a connection of its own and read its one-line answer
/// (`+OK`, `+PONG`, an error: any will do; its first byte is returned). Fails on anything else,
/// or an end of stream.
pub(super) async fn exchange(stream: &mut Link, command: &[u8]) -> io::Result<u8> {
    use tokio::io::AsyncReadExt;
    stream.send(command).await?;
    let mut line = [0u8; 256];
    let mut got = 0;
    while !line[..got].contains(&b'\n') {
        if got == line.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        match stream.read(&mut line[got..]).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    if !line[..got].ends_with(b"\n") {
        return Err(io::ErrorKind::InvalidData.into()); // more than one line: not Redis
    }
    Ok(line[0])
}

/// Send the commands of `state` (whole RESP commands, as `Carry::pool_state` keeps them) one by
/// one and read each whole reply (HELLO's is a map): `Ok(false)` if Redis refused one.
pub(super) async fn set_up(stream: &mut Link, state: &[Vec<u8>]) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    for command in state {
        stream.send(command).await?;
        let mut rep = crate::resp::ReplyTracker::new();
        while rep.replies == 0 {
            match stream.read(&mut buf).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => rep
                    .feed(&buf[..n])
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
            }
        }
        if rep.replies > 1 || !rep.at_reply_boundary() {
            return Err(io::ErrorKind::InvalidData.into()); // more than was asked: not Redis
        }
        if rep.last_error {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A session's timer, boxed and only while it has something to wake for: set to the earliest of
/// `a` and `b`, or dropped when neither is set (idle sessions stay small).
pub(super) fn arm(
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) {
    let wake = match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match (wake, timer) {
        (None, timer) => *timer = None,
        (Some(at), Some(timer)) if timer.deadline() != at => timer.as_mut().reset(at),
        (Some(_), Some(_)) => {}
        (Some(at), timer @ None) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}
