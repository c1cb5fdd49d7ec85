//! The threads that serve client connections (`--threads`): each runs its own current-thread
//! tokio runtime, and every connection from one client address goes to the same one, where it
//! lives from then on.
//!
//! Why: requests of two connections must reach Redis in the order they reached the proxy, as
//! through an L4 splice or directly. A client that blocks on one connection
//! (`XREADGROUP … BLOCK`) and acts on another (`DEL`) relies on it. A current-thread runtime runs
//! the tasks that socket events wake in the order the events arrived, and a session forwards a
//! request the moment it reads it, so on one thread requests leave in arrival order, as Redis's
//! own event loop takes them (neither orders requests sent back to back on two sockets within
//! microseconds: the kernel may deliver those either way). Across threads the order is lost even
//! at larger gaps: two threads woken microseconds apart race. (A work-stealing runtime is
//! worse: the task woken last runs first, from its LIFO slot, so the later request went first
//! nearly every time.) Hence one thread per client host: one application's connections stay in
//! order, and a sidecar (every client on 127.0.0.1) runs on one thread; many client hosts spread
//! over the threads.

use std::hash::{Hash, Hasher};
use std::io;
use std::net::IpAddr;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::mpsc;
use tokio::task::LocalSet;
use tokio_util::sync::CancellationToken;

/// Run on a worker's `LocalSet`, to start a task there (`tokio::task::spawn_local`): built there,
/// so it may hold `Rc`s (pooled mode's shared connections are per thread and need no locks). It
/// spawns the task itself, rather than returning a boxed future to spawn, so that the future sits
/// in the task's own allocation: one allocation per connection, not two.
pub type LocalJob = Box<dyn FnOnce() + Send>;

pub struct Workers {
    handles: Vec<Handle>,
    locals: Vec<mpsc::UnboundedSender<LocalJob>>,
    stop: CancellationToken,
}

impl Workers {
    /// Start `threads` workers (`0`: one per CPU).
    pub fn start(threads: usize) -> io::Result<Workers> {
        let n = match threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Built up in place: if a later worker cannot start, dropping `workers` stops the
        // threads already started.
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            locals: Vec::with_capacity(n),
            stop: CancellationToken::new(),
        };
        for i in 0..n {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            workers.handles.push(runtime.handle().clone());
            let (tx, mut jobs) = mpsc::unbounded_channel::<LocalJob>();
            workers.locals.push(tx);
            let stop = workers.stop.clone();
            thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || {
                    let local = LocalSet::new();
                    runtime.block_on(local.run_until(async move {
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                job = jobs.recv() => match job {
                                    Some(job) => job(),
                                    None => stop.cancelled().await,
                                },
                            }
                        }
                    }))
                })?;
        }
        Ok(workers)
    }

    /// Start `job` on the `LocalSet` of the worker that serves `client`.
    pub fn spawn_local_for(&self, client: IpAddr, job: LocalJob) {
        let _ = self.locals[pick(client, self.locals.len())].send(job);
    }

    /// The runtime that serves connections from `client`.
    pub fn for_client(&self, client: IpAddr) -> &Handle {
        &self.handles[pick(client, self.handles.len())]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// The threads end (and the connections still on them are dropped) when the workers are.
impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn pick(client: IpAddr, workers: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    client.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_host_one_thread_and_hosts_spread() {
        let host = |i: u8| IpAddr::from([10, 0, 0, i]);
        assert_eq!(pick(host(7), 4), pick(host(7), 4));
        let mut used = [0usize; 4];
        for i in 0..=255 {
            used[pick(host(i), 4)] += 1;
        }
        assert!(used.iter().all(|&n| n > 30), "{used:?}");
    }
}
