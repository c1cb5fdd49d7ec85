//! A connection of the data path (a client's, or one to a Redis node) as its session reads and
//! writes it: the TCP socket itself, or TLS over it that the session decrypts and encrypts in
//! place (rustls driven from the session's own reads and writes), one socket per connection, no
//! second hop. Options set on the connection (`sockopt.rs`) are set on that socket, and the
//! addresses Redis sees (`CLIENT LIST`) are its own. The control plane's client (sentinels, the
//! `ROLE` and `INFO` it asks of nodes) uses it too, through `AsyncRead`/`AsyncWrite`.
//!
//! The primitives are the ones sessions use on a plain socket, with the same meaning:
//! readiness polled in place, a read into the caller's buffer, a write of as much as can go now
//! (`try_write`). What TLS adds is its own output: the records of bytes already taken, which the
//! socket could not take yet (or a reply rustls owes the peer, such as a key update).
//! [`Link::wants_flush`] says some is left; a session then waits for the socket to be writable
//! and calls [`Link::flush_now`], as it does for bytes of its own that are pending. At most
//! rustls's buffer limit (64 KiB) is taken ahead of the socket.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::Connection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a TLS connection takes ahead of its socket (rustls's default).
const BUFFER_LIMIT: usize = 64 * 1024;

pub enum Link {
    Plain(TcpStream),
    Tls(Box<Terminated>),
}

/// TLS on the connection's own socket, the proxy as the server (a client of a TLS port) or as
/// the client (a connection to a TLS node).
pub struct Terminated {
    tcp: TcpStream,
    conn: Connection,
    /// Plaintext may be waiting in rustls (a read filled the caller's buffer, or the handshake
    /// took bytes sent with its last message): readable without the socket.
    more: bool,
}

impl From<TcpStream> for Link {
    fn from(tcp: TcpStream) -> Link {
        Link::Plain(tcp)
    }
}

impl Link {
    /// TLS on `tcp`, its handshake done (by `tokio_rustls`, whose stream is taken apart here:
    /// whatever it read past the handshake is in `conn`), as the server (a client of a TLS
    /// port) or as the client (a connection to a TLS node).
    pub fn tls(tcp: TcpStream, conn: impl Into<Connection>) -> Link {
        let mut conn = conn.into();
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Link::Tls(Box::new(Terminated {
            tcp,
            conn,
            more: true,
        }))
    }

    /// The connection's socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => &t.tcp,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// Nothing to read, and not at its end: a connection kept aside that may be used as it is.
    /// (A TLS peer's own records, such as session tickets, are taken in passing.) A byte read
    /// here is lost: only ask of a connection that is dropped unless it is quiet.
    pub fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Link::Plain(s) => s.poll_read_ready(cx),
            Link::Tls(t) if t.more => Poll::Ready(Ok(())),
            Link::Tls(t) => t.tcp.poll_read_ready(cx),
        }
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Write as much of `bytes` as can go now; `WouldBlock` when none can.
    pub fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.try_write(bytes),
            Link::Tls(t) => t.try_write(bytes),
        }
    }

    /// The certificate the peer showed, verified (a client's, with mutual TLS), as DER.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Link::Plain(_) => None,
            Link::Tls(t) => t.conn.peer_certificates()?.first().map(|c| c.as_ref()),
        }
    }

    /// TLS records the socket has not taken yet (never on a plain socket).
    pub fn wants_flush(&self) -> bool {
        match self {
            Link::Plain(_) => false,
            Link::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Write all of `bytes` and flush them (on TLS, their records too): for an exchange where
    /// the peer's answer is awaited next.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Like `TcpStream::peek`: the bytes at the front, left for the next read.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.peek(buf).await,
            Link::Tls(t) => std::future::poll_fn(|cx| t.poll_peek(cx, buf)).await,
        }
    }

    /// Write out what [`Link::wants_flush`] reports, as far as the socket takes it now.
    pub fn flush_now(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(_) => Ok(()),
            Link::Tls(t) => t.flush_now(),
        }
    }
}

impl Terminated {
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.flush_now()?;
        if self.conn.wants_write() || bytes.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(bytes)?;
        self.flush_now()?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush_now(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SocketWriter(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Plaintext into `buf`: what rustls holds first, then records read from the socket. A TCP
    /// end without `close_notify` is an end of stream too (most Redis clients close that way).
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        if room == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match self.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    self.more = n > 0 && n == room;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.more = false;
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// The plaintext at the front, left where it is (at most `buf`'s length, and perhaps less
    /// than rustls holds): 0 at the end of stream.
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.conn.reader().into_first_chunk() {
                Ok(chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    self.more = n > 0;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Records from the socket into rustls, decrypted: `Pending` when the socket has none.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.more = false;
        let mut socket = SocketReader {
            tcp: &mut self.tcp,
            cx,
        };
        match self.conn.read_tls(&mut socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.flush_now(); // the alert that says why
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        // A reply rustls owes the peer (a key update): sent now if it can be, else when the
        // session flushes next.
        Poll::Ready(self.flush_now())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if bytes.is_empty() && !self.conn.wants_write() {
                        return Poll::Ready(Ok(0));
                    }
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.flush_now()?;
            if !self.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }
}

/// rustls's writes, as far as the socket takes them now.
struct SocketWriter<'a>(&'a TcpStream);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// rustls's reads, through tokio's `poll_read`: a short read clears the socket's readiness, so
/// no read ends in `EAGAIN` just to learn that.
struct SocketReader<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SocketReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Link::Tls(t) => t.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Link::Tls(t) => t.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_flush(cx),
            Link::Tls(t) => t.poll_flush(cx),
        }
    }

    /// On TLS, `close_notify` and whatever is left to write, then the socket's end of stream.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Link::Tls(t) => {
                if !t.conn.is_handshaking() {
                    t.conn.send_close_notify();
                }
                ready!(t.poll_flush(cx))?;
                Pin::new(&mut t.tcp).poll_shutdown(cx)
            }
        }
    }
}
