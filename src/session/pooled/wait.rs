//! What a pooled client waits for between two steps, and what each event changes: its socket
//! readable (unless requests are held, or a pin, a protocol error or its end is being waited
//! out), room in its socket for replies it could not take, an event from its connection or the
//! thread's watcher (`Client::events`), a deadline, the idle check. One poll function over state
//! kept in the session, so an idle client's task holds no future of its own (docs/PERFORMANCE.md).

use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use super::{Pooled, Step};
use crate::session::Close;
use crate::session::io::{SCRATCH, arm};

#[derive(Clone, Copy)]
pub(super) struct Waiting {
    /// `client.events` when the wait began: a change is an event.
    seen: u64,
    flush: bool,
    read_client: bool,
}

pub(super) enum Event {
    Read(std::io::Result<usize>),
    Flushed(usize),
    WriteFailed,
    Woken,
    Timer,
    IdleTick,
}

impl Pooled<'_> {
    /// `step()`, then wait for the next thing to happen, until a step ends the client's time in
    /// the pool (`Step::Close`, `Refuse` or `Pin`).
    pub(super) fn poll_loop(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            let waiting = match self.waiting {
                Some(w) => w,
                None => {
                    match self.step() {
                        Step::Continue => {}
                        done => return Poll::Ready(done),
                    }
                    if std::mem::take(&mut self.again) {
                        continue;
                    }
                    self.wait_for()
                }
            };
            let event = std::task::ready!(self.poll_event(cx, waiting));
            self.waiting = None;
            if let Some(c) = self.on_event(event) {
                return Poll::Ready(Step::Close(c));
            }
        }
    }

    /// What to wait for after a step: client bytes (unless requests are held or a pin, an error
    /// or the end is being waited out), room for its pending replies, an event from its
    /// connection or the thread's watcher (route change, shutdown, a connect ended), a deadline.
    /// No timer unless one is set, no lock.
    fn wait_for(&mut self) -> Waiting {
        // On TLS, records of replies already taken may wait for the socket too.
        let flush =
            !self.client.out.borrow().is_empty() || self.client.stream.borrow().wants_flush();
        let read_client = self.held_empty()
            && !self.pinning()
            && !self.local_full()
            && self.protocol_error.is_none()
            && !self.client_eof
            && !self.shutting_down
            && !flush;
        let (deadline, wake_at) = self
            .slow
            .as_ref()
            .map_or((None, None), |s| (s.deadline, s.wake_at));
        arm(&mut self.timer, deadline, wake_at);
        let waiting = Waiting {
            seen: self.client.events.get(),
            flush,
            read_client,
        };
        self.waiting = Some(waiting);
        waiting
    }

    fn poll_event(&mut self, cx: &mut Context<'_>, waiting: Waiting) -> Poll<Event> {
        let Waiting {
            seen,
            flush,
            read_client,
        } = waiting;
        let (client, timer, idle) = (&self.client, &mut self.timer, &mut self.idle_check);
        if read_client {
            let r = SCRATCH.with_borrow_mut(|scratch| {
                let mut rb = tokio::io::ReadBuf::new(scratch);
                let mut stream = client.stream.borrow_mut();
                match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                    Poll::Pending => None,
                    Poll::Ready(r) => Some(r.map(|()| rb.filled().len())),
                }
            });
            if let Some(r) = r {
                return Poll::Ready(Event::Read(r));
            }
        }
        if flush {
            let mut out = client.out.borrow_mut();
            let mut write = client.stream.borrow_mut();
            if let Poll::Ready(r) = std::pin::Pin::new(&mut *write).poll_write(cx, out.bytes()) {
                return Poll::Ready(match r {
                    Ok(n) => {
                        out.consume(n);
                        Event::Flushed(n)
                    }
                    Err(_) => Event::WriteFailed,
                });
            }
        }
        if client.events.get() != seen || client.broken.get().is_some() {
            return Poll::Ready(Event::Woken);
        }
        let mut w = client.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        drop(w);
        if let Some(t) = timer
            && t.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::Timer);
        }
        if let Some(i) = idle
            && i.poll_tick(cx).is_ready()
        {
            return Poll::Ready(Event::IdleTick);
        }
        Poll::Pending
    }

    /// What an event changes; `Some` when the client must close.
    fn on_event(&mut self, event: Event) -> Option<Close> {
        match event {
            Event::Read(Ok(0)) => {
                self.client_eof = true;
                self.open = false;
            }
            Event::Read(Ok(n)) => SCRATCH.with_borrow(|s| self.take(&s[..n])),
            Event::Read(Err(e)) => {
                debug!(error = %e, "client read error");
                return Some(Close::IoError);
            }
            Event::Flushed(n) => {
                self.group.metrics.client_bytes_sent_total.inc_by(n as u64);
                self.open = false;
            }
            Event::WriteFailed => return Some(Close::ClientClosed),
            // What `step()` looks at changed: it must not take its fast path.
            Event::Woken => self.open = false,
            Event::Timer => {
                self.open = false;
                let deadline = self.slow.as_ref().and_then(|s| s.deadline);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    if self.shutting_down {
                        return Some(Close::Shutdown);
                    }
                    let owed = self.client.owed.get();
                    return Some(if owed == 0 {
                        Close::NoMaster
                    } else {
                        Close::DrainDeadline
                    });
                }
            }
            Event::IdleTick => {
                let idle = self.group.config().idle_timeout;
                let since = self.client.last_active.get().map(|t| t.elapsed());
                let quiet = since.is_some_and(|d| d >= idle)
                    && self.client.owed.get() == 0
                    && self.client.out.borrow().is_empty()
                    && self
                        .slow
                        .as_ref()
                        .is_none_or(|s| s.held.is_empty() && s.partial.is_empty());
                if quiet {
                    return Some(Close::IdleTimeout);
                }
            }
        }
        None
    }
}
