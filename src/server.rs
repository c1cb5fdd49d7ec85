//! The server: every group's listeners bound, then served — a watcher and a listener per group
//! (and a read port's), the admin endpoints, reloads applied while serving (groups added and
//! removed), and the shutdown that waits for sessions.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::GroupConfig;
use crate::upgrade::{Inherited, Role};
use crate::{Config, Error, Group, Shared, admin, listener, read, sentinel, workers};

/// A proxy with its sockets bound, not yet serving.
pub struct Server {
    shared: Arc<Shared>,
    /// Every group, with its client listener and its read port's.
    groups: Vec<(Arc<Group>, Listeners)>,
    admin: TcpListener,
    /// The Sentinel face's listener (`face.rs`), if it has one.
    face: Option<TcpListener>,
    workers: workers::Workers,
    /// Reloaded configurations to apply while serving (see [`Server::reloads`]).
    reloads: Option<mpsc::Receiver<Config>>,
    /// Where sessions handed over by a predecessor go, by group (`Server::resume_sink`).
    resume: std::collections::HashMap<String, mpsc::UnboundedSender<listener::Resumed>>,
}

/// Bind a client or admin listener. Its backlog follows max-clients for client listeners (the
/// kernel caps it at somaxconn): a burst of connections waits in the queue instead of being
/// dropped and retried a second later by the client's SYN timer.
fn bind(addr: SocketAddr, backlog: usize) -> Result<TcpListener, Error> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX))
    };
    listen().map_err(|source| Error::Bind { addr, source })
}

/// A group's client listener, and its read port's if it has one.
struct Listeners {
    main: TcpListener,
    read: Option<TcpListener>,
    /// Sessions a predecessor handed over (`upgrade.rs`), served as the listener's clients.
    resumed: Option<mpsc::UnboundedReceiver<listener::Resumed>>,
}

/// A listener handed over by the process this one took over from (`upgrade.rs`), else bound.
fn bind_or_inherit(
    addr: SocketAddr,
    backlog: usize,
    inherited: &mut Option<&mut Inherited>,
    role: Role,
) -> Result<TcpListener, Error> {
    let Some(l) = inherited.as_mut().and_then(|i| i.take(&role)) else {
        return bind(addr, backlog);
    };
    let adopt = || {
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    };
    adopt().map_err(|source| Error::Bind { addr, source })
}

/// Bind a group's listeners (or take them over); its settings then name the addresses bound
/// (port 0 picks one, which /status shows).
fn bind_group(
    mut g: GroupConfig,
    max_clients: usize,
    mut inherited: Option<&mut Inherited>,
) -> Result<(Listeners, GroupConfig), Error> {
    let backlog = max_clients.max(1024);
    let main = bind_or_inherit(
        g.listen,
        backlog,
        &mut inherited,
        Role::Group(g.name.clone()),
    )?;
    if let Ok(bound) = main.local_addr() {
        g.listen = bound;
    }
    let read = match g.read_listen {
        Some(addr) => {
            let role = Role::Read(g.name.clone());
            let read = bind_or_inherit(addr, backlog, &mut inherited, role)?;
            if let Ok(bound) = read.local_addr() {
                g.read_listen = Some(bound);
            }
            Some(read)
        }
        None => None,
    };
    Ok((
        Listeners {
            main,
            read,
            resumed: None,
        },
        g,
    ))
}

/// A group's listening sockets, for a successor (`upgrade.rs`), if one can come.
fn register(shared: &Shared, name: &str, l: &Listeners) {
    if shared.config().upgrade_socket.is_none() {
        return;
    }
    shared.listening.add(Role::Group(name.to_string()), &l.main);
    if let Some(read) = &l.read {
        shared.listening.add(Role::Read(name.to_string()), read);
    }
}

/// A group being served: stopping `stop` closes its listener and its sessions at their next
/// request boundary, and ends its watcher.
struct Running {
    group: Arc<Group>,
    stop: CancellationToken,
    listener: tokio::task::JoinHandle<()>,
    read: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Bind every group's client listener and the admin listener (port 0 picks a free port; see
    /// [`Server::local_addr`]).
    pub async fn bind(config: Config) -> Result<Server, Error> {
        Server::bind_with(config, None).await
    }

    /// [`Server::bind`], taking the listeners `inherited` has (a live upgrade, `upgrade.rs`).
    pub async fn bind_with(
        config: Config,
        mut inherited: Option<&mut Inherited>,
    ) -> Result<Server, Error> {
        let mut listeners = Vec::new();
        let mut resume = std::collections::HashMap::new();
        for g in config.groups() {
            let (mut l, g) = bind_group(g, config.max_clients, inherited.as_deref_mut())?;
            let (tx, rx) = mpsc::unbounded_channel();
            l.resumed = Some(rx);
            resume.insert(g.name.clone(), tx);
            listeners.push((l, g));
        }
        let admin = bind_or_inherit(config.metrics_listen, 1024, &mut inherited, Role::Admin)?;
        let face = match config.sentinel_listen {
            Some(addr) => Some(bind_or_inherit(addr, 1024, &mut inherited, Role::Sentinel)?),
            None => None,
        };
        let workers = workers::Workers::start(config.threads).map_err(Error::Workers)?;
        let shared = Arc::new(Shared::new(config));
        if shared.config().upgrade_socket.is_some() {
            shared.listening.add(Role::Admin, &admin);
            if let Some(face) = &face {
                shared.listening.add(Role::Sentinel, face);
            }
        }
        for (l, g) in &listeners {
            register(&shared, &g.name, l);
        }
        let groups = listeners
            .into_iter()
            .map(|(listener, g)| (Arc::new(Group::new(shared.clone(), g)), listener))
            .collect();
        Ok(Server {
            shared,
            groups,
            admin,
            face,
            workers,
            reloads: None,
            resume,
        })
    }

    /// Where a predecessor's sessions go (`upgrade::Inherited::serving`): to their group's
    /// listener, which serves each as a client of its own; a group this process does not have
    /// closes it.
    pub fn resume_sink(
        &self,
    ) -> impl Fn(crate::session::Handed, std::net::TcpStream) + Send + 'static {
        let resume = self.resume.clone();
        move |handed, stream| match resume.get(&handed.group) {
            Some(tx) => {
                let _ = tx.send((stream, handed));
            }
            None => {
                warn!(group = %handed.group, "a session handed over for a group this process does not serve: closed")
            }
        }
    }

    /// Where to send reloaded configurations: [`Server::serve`] applies each (the process's
    /// settings, each group's, and groups added or removed).
    pub fn reloads(&mut self) -> mpsc::Sender<Config> {
        let (tx, rx) = mpsc::channel(4);
        self.reloads = Some(rx);
        tx
    }

    /// The first group's client address (the only one without `[[group]]` tables).
    pub fn local_addr(&self) -> SocketAddr {
        self.group_addr(0)
    }

    /// The client address of the `i`-th group (in the order the configuration gives them).
    pub fn group_addr(&self, i: usize) -> SocketAddr {
        self.groups[i].0.settings().listen
    }

    /// The read port address of the `i`-th group, if it has one.
    pub fn read_addr(&self, i: usize) -> Option<SocketAddr> {
        self.groups[i].0.settings().read_listen
    }

    /// The Sentinel face's address, if it has one.
    pub fn sentinel_addr(&self) -> Option<SocketAddr> {
        self.face.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.shared.config().metrics_listen)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Every group, in the order the configuration gives them.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.groups.iter().map(|(g, _)| g.clone()).collect()
    }

    /// Serve until `shutdown` is cancelled; then sessions close at their next request boundary,
    /// waited for at most `shutdown-timeout`.
    pub async fn serve(self, shutdown: CancellationToken) {
        let Server {
            shared,
            groups,
            admin,
            face,
            workers,
            mut reloads,
            resume,
        } = self;
        drop(resume);
        info!(
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            groups = groups.len(),
            threads = workers.len(),
            pool = shared.config().pool,
            "sentinel-proxy started"
        );
        let tracker = TaskTracker::new();
        let live: Arc<ArcSwap<Vec<Arc<Group>>>> = Arc::new(ArcSwap::from_pointee(
            groups.iter().map(|(g, _)| g.clone()).collect(),
        ));
        tokio::spawn(admin::run(
            admin,
            shared.clone(),
            live.clone(),
            shutdown.clone(),
        ));
        if let Some(face) = face {
            tokio::spawn(crate::face::run(
                face,
                shared.clone(),
                live.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(crate::tls::refresh::run(
            shared.clone(),
            live.clone(),
            shutdown.clone(),
        ));
        let serving = Serving {
            // --max-clients counts every group's clients together.
            permits: Arc::new(Semaphore::new(shared.config().max_clients)),
            workers: Arc::new(workers),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        let mut running: Vec<Running> = groups
            .into_iter()
            .map(|(group, listener)| serving.start(group, listener))
            .collect();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(config) = async { reloads.as_mut()?.recv().await } => {
                    serving.reload(&shared, &mut running, config).await;
                    live.store(Arc::new(running.iter().map(|r| r.group.clone()).collect()));
                }
            }
        }
        for r in running {
            let _ = r.listener.await;
            if let Some(read) = r.read {
                let _ = read.await;
            }
        }
        // The copies kept for a successor would keep the ports accepting.
        shared.listening.clear();
        tracker.close();
        let open = tracker.len();
        if tokio::time::timeout(shared.config().shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open,
                "sessions still open at the shutdown deadline; exiting anyway"
            );
        }
        info!("sentinel-proxy stopped");
    }
}

/// What starting a group needs.
struct Serving {
    permits: Arc<Semaphore>,
    workers: Arc<workers::Workers>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Serving {
    fn start(&self, group: Arc<Group>, listeners: Listeners) -> Running {
        info!(
            group = %group.name,
            master_name = %group.master_name,
            listen = %group.settings().listen,
            sentinels = group.settings().sentinels.len(),
            "serving group"
        );
        let stop = self.shutdown.child_token();
        tokio::spawn(sentinel::watcher::run(group.clone(), stop.clone()));
        tokio::spawn(crate::lag::run(group.clone(), stop.clone()));
        tokio::spawn(crate::session::barrier::run(group.clone(), stop.clone()));
        let listener = tokio::spawn(listener::run(
            listeners.main,
            listener::Target::Group(group.clone()),
            listeners.resumed,
            self.permits.clone(),
            self.workers.clone(),
            self.tracker.clone(),
            stop.clone(),
        ));
        let read = listeners.read.map(|l| {
            let port = Arc::new(read::ReadPort::new(group.clone()));
            let side: Arc<dyn crate::group::ReadSide> = port.clone();
            let _ = group.read.set(Arc::downgrade(&side));
            info!(group = %group.name, read_listen = %group.settings().read_listen.map(|a| a.to_string()).unwrap_or_default(), "serving the group's read port");
            tokio::spawn(read::run(port.clone(), stop.clone()));
            tokio::spawn(listener::run(
                l,
                listener::Target::Read(port),
                None,
                self.permits.clone(),
                self.workers.clone(),
                self.tracker.clone(),
                stop.clone(),
            ))
        });
        Running {
            group,
            stop,
            listener,
            read,
        }
    }

    /// Apply a reloaded configuration: settings first, then groups removed (listener closed,
    /// sessions closed at their next boundary) and groups added (a listener opened). Groups that
    /// stay are not touched.
    async fn reload(&self, shared: &Arc<Shared>, running: &mut Vec<Running>, config: Config) {
        let current: Vec<Arc<Group>> = running.iter().map(|r| r.group.clone()).collect();
        let restart = shared.reload(&current, config);
        info!("configuration reloaded");
        if !restart.is_empty() {
            warn!(settings = ?restart, "changed settings need a restart to take effect; kept their running values");
        }
        let cfg = shared.config();
        let wanted = cfg.groups();
        let (kept, removed): (Vec<Running>, Vec<Running>) = std::mem::take(running)
            .into_iter()
            .partition(|r| wanted.iter().any(|w| w.name == r.group.name));
        *running = kept;
        for r in removed {
            info!(group = %r.group.name, "group removed from the configuration: its listener closes and its clients at their next request boundary");
            r.stop.cancel();
            // Its address is free again before a group added in the same reload binds it.
            let _ = r.listener.await;
            if let Some(read) = r.read {
                let _ = read.await;
            }
            shared.metrics.forget_group(&r.group.name);
            shared.listening.remove_group(&r.group.name);
        }
        for w in wanted {
            if running.iter().any(|r| r.group.name == w.name) {
                continue;
            }
            let name = w.name.clone();
            match bind_group(w, cfg.max_clients, None) {
                Ok((listener, settings)) => {
                    register(shared, &settings.name, &listener);
                    let group = Arc::new(Group::new(shared.clone(), settings));
                    running.push(self.start(group, listener));
                }
                Err(e) => {
                    error!(group = %name, error = %e, "cannot serve a group added by the reload; a later reload retries");
                }
            }
        }
    }
}
