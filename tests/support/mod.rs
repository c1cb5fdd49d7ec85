//! The test lab: real `redis-server` (1 master, 2 replicas) and `redis-sentinel` (3 sentinels,
//! quorum 2) processes on free loopback ports in a temp dir, killed on drop (also on panic), plus
//! helpers to run the proxy in-process, speak RESP, fetch admin pages and wait on conditions.
//!
//! Every wait is a condition polled against a deadline, never a fixed sleep.

#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod fake_master;
pub mod fake_sentinel;
pub mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::{Auth, Config, HostPort};
use sentinel_proxy::sentinel::client::{ClientError, RespConn, frame_text};
use sentinel_proxy::{Group, Server};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const MASTER_NAME: &str = "mymaster";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        // The test logs go to files (target/*-test.log, CI's output): plain text.
        .with_ansi(false)
        .try_init();
}

/// Poll `check` every 20 ms until it yields a value or `limit` passes (then panic with `what`).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

/// A loopback port that nothing listens on right now (for addresses a test needs up front).
pub fn unused_port() -> u16 {
    free_port().1
}

pub fn hp(port: u16) -> HostPort {
    HostPort {
        host: "127.0.0.1".into(),
        port,
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Connect to a loopback port (2 s timeout per call).
pub async fn conn(port: u16) -> Result<RespConn, ClientError> {
    RespConn::connect(&hp(port), &Auth::default(), Duration::from_secs(2)).await
}

/// One command on a connection; bulk/simple replies as text.
pub async fn cmd(c: &mut RespConn, args: &[&str]) -> Result<OwnedFrame, ClientError> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.call(&args).await
}

/// `CONFIG GET port` through a connection: which node it reaches.
/// A node of a TLS lab listens on its `tls-port` only (`port 0`).
pub async fn node_port(c: &mut RespConn) -> Result<u16, ClientError> {
    for key in ["port", "tls-port"] {
        let port: u16 = match cmd(c, &["CONFIG", "GET", key]).await? {
            OwnedFrame::Array(items) if items.len() == 2 => frame_text(&items[1])
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| ClientError::Unexpected("port".into()))?,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        if port != 0 {
            return Ok(port);
        }
    }
    Err(ClientError::Unexpected("port 0 and tls-port 0".into()))
}

/// A PING answered, or refused for want of AUTH: the server is up either way.
fn alive(reply: Result<OwnedFrame, ClientError>) -> bool {
    matches!(reply, Ok(_) | Err(ClientError::Server(_)))
}

/// A process we started, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    program: String,
    args: Vec<String>,
    dir: PathBuf,
    /// How to reach it to see it answer (TLS in a TLS lab).
    probe: Auth,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Send a signal (`-STOP`, `-CONT`) to the running process, by PID.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("a running process").to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Start the same program again, same port and arguments (a restarted sentinel keeps the
    /// config file it rewrote).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running process");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart");
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "restarted process to answer PING",
            || async {
                let mut c = RespConn::connect(&hp(port), &self.probe, Duration::from_secs(2))
                    .await
                    .ok()?;
                cmd(&mut c, &["PING"]).await.ok().map(|_| ())
            },
        )
        .await;
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The executable for `program` (`redis-server` or `redis-sentinel`) and the arguments it takes
/// after its own: the installed Redis, or the server `SENTINEL_PROXY_TEST_SERVER` names (another
/// version, e.g. `valkey-server`, which runs a sentinel with `--sentinel`; `scripts/test` runs
/// the end-to-end failover tests once per server it has).
pub fn executable(program: &str) -> (String, Vec<String>) {
    match std::env::var("SENTINEL_PROXY_TEST_SERVER") {
        Ok(server) if !server.is_empty() => {
            let sentinel = program == "redis-sentinel";
            (
                server,
                if sentinel {
                    vec!["--sentinel".into()]
                } else {
                    vec![]
                },
            )
        }
        _ => (program.to_string(), Vec::new()),
    }
}

/// Spawn `program` with args from `make(port)` on a free port; retry on a port race.
async fn spawn_on_free_port(
    dir: &Path,
    program: &str,
    probe: Auth,
    make: impl Fn(u16, &Path) -> Vec<String>,
) -> Proc {
    let (exe, after) = executable(program);
    for _ in 0..5 {
        let (hold, port) = free_port();
        let log = dir.join(format!("{program}-{port}.log"));
        let mut args = make(port, &log);
        args.extend(after.iter().cloned());
        drop(hold);
        let child = Command::new(&exe)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (is it installed?): {e}"));
        let mut proc = Proc {
            port,
            child: Some(child),
            log,
            program: exe.clone(),
            args,
            dir: dir.to_path_buf(),
            probe: probe.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = proc.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                break; // exited: most likely the port was taken meanwhile; try another
            }
            if let Ok(mut c) = RespConn::connect(&hp(port), &probe, Duration::from_secs(2)).await
                && alive(cmd(&mut c, &["PING"]).await)
            {
                return proc;
            }
            if Instant::now() > deadline {
                panic!(
                    "{program} on {port} did not answer PING:\n{}",
                    proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proc.child = None;
    }
    panic!("could not start {program} on a free port after 5 tries");
}

#[derive(Clone)]
pub struct LabOptions {
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    /// `requirepass` of the Redis nodes (sentinels get `auth-pass`), if any.
    pub redis_password: Option<String>,
    /// `requirepass` of the sentinels (and `sentinel-pass` between them), if any.
    pub sentinel_password: Option<String>,
    /// More master groups (each a master and 2 replicas) the same sentinels monitor, by name.
    pub extra_groups: Vec<&'static str>,
    /// TLS only, everywhere: nodes and sentinels on `tls-port` (`port 0`), replication and
    /// Sentinel's links over TLS, client certificates required (`tls-auth-clients yes`).
    pub tls: Option<Arc<certs::Certs>>,
    /// Nodes and sentinels known by the name `localhost` (Sentinel's `resolve-hostnames` and
    /// `announce-hostnames`, replicas' `replica-announce-ip`), as in Docker Compose and
    /// Kubernetes; with `tls`, the lab's own clients verify that name.
    pub hostnames: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            down_after_ms: 1000,
            failover_timeout_ms: 10_000,
            redis_password: None,
            sentinel_password: None,
            extra_groups: Vec::new(),
            tls: None,
            hostnames: false,
        }
    }
}

fn auth(password: &Option<String>, opts: &LabOptions) -> Auth {
    let name = opts.hostnames.then(|| "localhost".to_string());
    Auth {
        username: None,
        password: password.as_ref().map(sentinel_proxy::config::Secret::new),
        tls: opts
            .tls
            .as_ref()
            .map(|c| Arc::new(tls_client_named(c, name))),
    }
}

/// TLS to a TLS lab's nodes: its CA, and its certificate as the client's.
pub fn tls_client(c: &certs::Certs) -> sentinel_proxy::tls::TlsClient {
    tls_client_named(c, None)
}

/// [`tls_client`], verifying `server_name` instead of the host connected to.
pub fn tls_client_named(
    c: &certs::Certs,
    server_name: Option<String>,
) -> sentinel_proxy::tls::TlsClient {
    sentinel_proxy::tls::TlsClient::load(sentinel_proxy::tls::ClientFiles {
        ca: c.ca.clone(),
        cert: Some(c.cert.clone()),
        key: Some(c.key.clone()),
        server_name,
    })
    .expect("TLS client files")
}

/// A TLS lab's settings for redis-server or redis-sentinel, as `(name, value)` pairs.
fn tls_settings(c: &certs::Certs, port: u16) -> Vec<(String, String)> {
    let path = |p: &Path| p.display().to_string();
    [
        ("port", "0".to_string()),
        ("tls-port", port.to_string()),
        ("tls-cert-file", path(&c.cert)),
        ("tls-key-file", path(&c.key)),
        ("tls-ca-cert-file", path(&c.ca)),
        ("tls-auth-clients", "yes".into()),
        ("tls-replication", "yes".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub redis: Vec<Proc>,
    pub sentinels: Vec<Proc>,
    opts: LabOptions,
    /// Each group's name and the ports of its nodes (`MASTER_NAME` first).
    groups: Vec<(&'static str, Vec<u16>)>,
}

impl Lab {
    pub async fn start() -> Lab {
        Lab::start_with(LabOptions::default()).await
    }

    pub async fn start_with(opts: LabOptions) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = Vec::new();
        let mut groups = Vec::new();
        let pw = opts.redis_password.clone();
        let names: Vec<&'static str> = std::iter::once(MASTER_NAME)
            .chain(opts.extra_groups.iter().copied())
            .collect();
        for name in names {
            let master = start_redis(dir.path(), None, pw.clone(), &opts).await;
            let master_port = master.port;
            redis.push(master);
            for _ in 0..2 {
                redis.push(start_redis(dir.path(), Some(master_port), pw.clone(), &opts).await);
            }
            let ports = redis[redis.len() - 3..].iter().map(|r| r.port).collect();
            groups.push((name, ports));
        }
        let mut lab = Lab {
            dir,
            redis,
            sentinels: Vec::new(),
            opts,
            groups,
        };
        for _ in 0..3 {
            let s = lab.start_sentinel().await;
            lab.sentinels.push(s);
        }
        for (name, _) in lab.groups.clone() {
            lab.wait_settled_of(name, Duration::from_secs(40)).await;
        }
        lab
    }

    async fn start_sentinel(&self) -> Proc {
        let dir = self.dir.path().to_path_buf();
        let (down, fo) = (self.opts.down_after_ms, self.opts.failover_timeout_ms);
        let mut monitors = String::new();
        let (host, bind) = match self.opts.hostnames {
            true => ("localhost", "127.0.0.1 -::1"),
            false => ("127.0.0.1", "127.0.0.1"),
        };
        if self.opts.hostnames {
            monitors += "sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n";
        }
        for (name, ports) in &self.groups {
            monitors += &format!(
                "sentinel monitor {name} {host} {} 2\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} {fo}\n\
                 sentinel parallel-syncs {name} 1\n",
                ports[0]
            );
            if let Some(pw) = &self.opts.redis_password {
                monitors += &format!("sentinel auth-pass {name} {pw}\n");
            }
        }
        let mut extra = String::new();
        if let Some(pw) = &self.opts.sentinel_password {
            extra += &format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n");
        }
        let tls = self.opts.tls.clone();
        let probe = auth(&self.opts.sentinel_password, &self.opts);
        spawn_on_free_port(&dir.clone(), "redis-sentinel", probe, move |port, log| {
            // Sentinel rewrites its config file: each one gets its own copy in the temp dir.
            let conf = dir.join(format!("sentinel-{port}.conf"));
            let ports = match &tls {
                Some(c) => tls_settings(c, port)
                    .iter()
                    .map(|(k, v)| format!("{k} {v}\n"))
                    .collect(),
                None => format!("port {port}\n"),
            };
            let text = format!(
                "{ports}bind {bind}\nprotected-mode no\ndaemonize no\n\
                 dir {d}\nlogfile {log}\n{monitors}{extra}",
                d = dir.display(),
                log = log.display(),
            );
            std::fs::write(&conf, text).expect("write sentinel config");
            vec![conf.display().to_string()]
        })
        .await
    }

    /// A connection to a sentinel / a Redis node of this lab, authenticated as the lab requires.
    pub async fn sconn(&self, port: u16) -> Result<RespConn, ClientError> {
        RespConn::connect(
            &hp(port),
            &auth(&self.opts.sentinel_password, &self.opts),
            Duration::from_secs(2),
        )
        .await
    }

    pub async fn rconn(&self, port: u16) -> Result<RespConn, ClientError> {
        RespConn::connect(
            &hp(port),
            &auth(&self.opts.redis_password, &self.opts),
            Duration::from_secs(2),
        )
        .await
    }

    pub fn sentinel_addrs(&self) -> Vec<HostPort> {
        self.sentinels.iter().map(|s| hp(s.port)).collect()
    }

    /// The master according to the first sentinel that answers.
    pub async fn master_port(&self) -> Option<u16> {
        self.master_port_of(MASTER_NAME).await
    }

    /// The master of group `name` according to the first sentinel that answers.
    pub async fn master_port_of(&self, name: &str) -> Option<u16> {
        for s in self.sentinels.iter().filter(|s| s.is_running()) {
            if let Ok(mut c) = self.sconn(s.port).await
                && let Ok(OwnedFrame::Array(items)) =
                    cmd(&mut c, &["SENTINEL", "get-master-addr-by-name", name]).await
                && items.len() == 2
            {
                return frame_text(&items[1]).and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// The Redis ports of `master`'s group other than `master`'s.
    pub fn replicas_of(&self, master: u16) -> Vec<u16> {
        self.groups
            .iter()
            .find(|(_, ports)| ports.contains(&master))
            .map(|(_, ports)| ports.iter().copied().filter(|p| *p != master).collect())
            .unwrap_or_default()
    }

    pub fn proc_by_port(&mut self, port: u16) -> &mut Proc {
        self.redis
            .iter_mut()
            .find(|p| p.port == port)
            .expect("a lab redis port")
    }

    /// Wait until every running sentinel agrees on one master that says `role:master`, knows
    /// both replicas and both other sentinels, and no failover is in progress.
    pub async fn wait_settled(&self, limit: Duration) -> u16 {
        self.wait_settled_of(MASTER_NAME, limit).await
    }

    /// [`Lab::wait_settled`] for group `name`.
    pub async fn wait_settled_of(&self, name: &str, limit: Duration) -> u16 {
        let running = self.sentinels.iter().filter(|s| s.is_running()).count();
        let ports = &self
            .groups
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a lab group")
            .1;
        let live_redis = self
            .redis
            .iter()
            .filter(|r| ports.contains(&r.port) && r.is_running())
            .count();
        eventually(limit, "the sentinel lab to settle", || async {
            let mut agreed: Option<u16> = None;
            for s in self.sentinels.iter().filter(|s| s.is_running()) {
                let mut c = self.sconn(s.port).await.ok()?;
                let info = flat_map(cmd(&mut c, &["SENTINEL", "master", name]).await.ok()?);
                let port: u16 = info.get("port")?.parse().ok()?;
                let ok = info.get("flags")? == "master"
                    && info.get("num-other-sentinels")? == &(running - 1).to_string()
                    && info.get("num-slaves")?.parse::<usize>().ok()? >= live_redis - 1;
                if !ok || agreed.is_some_and(|p| p != port) {
                    return None;
                }
                let OwnedFrame::Array(replicas) =
                    cmd(&mut c, &["SENTINEL", "replicas", name]).await.ok()?
                else {
                    return None;
                };
                let good = replicas
                    .into_iter()
                    .map(flat_map)
                    .filter(|r| {
                        r.get("flags").map(String::as_str) == Some("slave")
                            && r.get("master-link-status").map(String::as_str) == Some("ok")
                    })
                    .count();
                if good < live_redis - 1 {
                    return None;
                }
                agreed = Some(port);
            }
            let port = agreed?;
            let mut m = self.rconn(port).await.ok()?;
            let role = cmd(&mut m, &["ROLE"]).await.ok()?;
            match role {
                OwnedFrame::Array(items) if frame_text(&items[0]) == Some("master") => Some(port),
                _ => None,
            }
        })
        .await
    }

    /// `SENTINEL FAILOVER`, retried while Sentinel is not ready for it. Returns when accepted.
    pub async fn failover(&self) -> Instant {
        self.failover_of(MASTER_NAME).await
    }

    /// [`Lab::failover`] of group `name`.
    pub async fn failover_of(&self, name: &str) -> Instant {
        eventually(
            Duration::from_secs(30),
            "SENTINEL FAILOVER to be accepted",
            || async {
                for s in self.sentinels.iter().filter(|s| s.is_running()) {
                    let mut c = self.sconn(s.port).await.ok()?;
                    if cmd(&mut c, &["SENTINEL", "FAILOVER", name]).await.is_ok() {
                        return Some(Instant::now());
                    }
                }
                None
            },
        )
        .await
    }

    /// Wait until every replica of `master` has acknowledged its replication stream up to now
    /// (`INFO replication`: each `slaveN:…,offset=` reaches the `master_repl_offset` read first;
    /// replicas acknowledge once a second), so a kill -9 of `master` then loses no write
    /// acknowledged before the call to asynchronous replication.
    pub async fn wait_replicated(&self, master: u16, limit: Duration) {
        let group = self.replicas_of(master);
        let replicas = self
            .redis
            .iter()
            .filter(|r| group.contains(&r.port) && r.is_running())
            .count();
        let read = || async {
            let mut m = self.rconn(master).await.ok()?;
            let frame = cmd(&mut m, &["INFO", "replication"]).await.ok()?;
            frame_text(&frame).map(str::to_string)
        };
        let offset_of = |text: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"))?
                .trim()
                .parse()
                .ok()
        };
        let now = eventually(limit, "the master's replication offset", || async {
            offset_of(&read().await?)
        })
        .await;
        eventually(
            limit,
            "the replicas to catch up with the master",
            || async {
                let text = read().await?;
                let caught_up = text
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .filter(|l| {
                        l.split(',').any(|kv| {
                            kv.strip_prefix("offset=")
                                .and_then(|v| v.parse::<u64>().ok())
                                .is_some_and(|o| o >= now)
                        })
                    })
                    .count();
                (caught_up >= replicas).then_some(())
            },
        )
        .await
    }

    /// Wait until the sentinels name a master other than `old` that answers `role:master`.
    pub async fn wait_new_master(&self, old: u16, limit: Duration) -> u16 {
        self.wait_new_master_of(MASTER_NAME, old, limit).await
    }

    /// [`Lab::wait_new_master`] of group `name`.
    pub async fn wait_new_master_of(&self, name: &str, old: u16, limit: Duration) -> u16 {
        eventually(limit, "a new master", || async {
            let p = self.master_port_of(name).await?;
            if p == old {
                return None;
            }
            let mut m = self.rconn(p).await.ok()?;
            match cmd(&mut m, &["ROLE"]).await.ok()? {
                OwnedFrame::Array(items) if frame_text(&items[0]) == Some("master") => Some(p),
                _ => None,
            }
        })
        .await
    }
}

async fn start_redis(
    dir: &Path,
    replica_of: Option<u16>,
    password: Option<String>,
    opts: &LabOptions,
) -> Proc {
    let dir_s = dir.display().to_string();
    let probe = auth(&password, opts);
    let (tls, hostnames) = (opts.tls.clone(), opts.hostnames);
    spawn_on_free_port(dir, "redis-server", probe, move |port, log| {
        let ports = match &tls {
            Some(c) => tls_settings(c, port),
            None => vec![("port".to_string(), port.to_string())],
        };
        let mut args: Vec<String> = ports
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect();
        args.extend(
            [
                "--dir",
                &dir_s,
                "--dbfilename",
                &format!("dump-{port}.rdb"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--enable-debug-command",
                "yes",
                // A replica's first sync starts at once, not after Redis's default 5 s wait for
                // more replicas to join the same transfer (after every failover too).
                "--repl-diskless-sync-delay",
                "0",
                "--logfile",
                &log.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        match hostnames {
            // Optional ::1 (`-`), so that "localhost" reaches it whichever address it resolves to.
            true => args.extend(
                [
                    "--bind",
                    "127.0.0.1",
                    "-::1",
                    "--replica-announce-ip",
                    "localhost",
                ]
                .map(String::from),
            ),
            false => args.extend(["--bind".into(), "127.0.0.1".into()]),
        }
        if let Some(m) = replica_of {
            let host = if hostnames { "localhost" } else { "127.0.0.1" };
            args.extend(["--replicaof".into(), host.into(), m.to_string()]);
        }
        if let Some(pw) = &password {
            args.extend([
                "--requirepass".into(),
                pw.clone(),
                "--masterauth".into(),
                pw.clone(),
            ]);
        }
        args
    })
    .await
}

/// A Sentinel reply of alternating field names and values, as a map.
pub fn flat_map(frame: OwnedFrame) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if let OwnedFrame::Array(items) = frame {
        for pair in items.chunks(2) {
            if let [k, v] = pair
                && let (Some(k), Some(v)) = (frame_text(k), frame_text(v))
            {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    m
}

/// The proxy, in-process on free ports, pointed at a lab's sentinels; cancelled on drop.
pub struct Proxy {
    pub port: u16,
    pub admin: SocketAddr,
    /// The first (in most tests the only) group.
    pub group: Arc<Group>,
    /// Every group: its client port and handle, in configuration order.
    pub groups: Vec<(u16, Arc<Group>)>,
    /// The first group's read port, if it has one.
    pub read_port: Option<u16>,
    /// The Sentinel face's port, if it has one.
    pub face: Option<u16>,
    token: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(sentinels: Vec<HostPort>) -> Proxy {
        Proxy::start_with(sentinels, |_| {}).await
    }

    pub async fn start_with(sentinels: Vec<HostPort>, tweak: impl FnOnce(&mut Config)) -> Proxy {
        init_logs();
        let mut cfg = Config::new(sentinels, MASTER_NAME);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.metrics_listen = "127.0.0.1:0".parse().unwrap();
        // `scripts/test` runs the end-to-end tests a second time in pooled mode.
        if let Ok(n) = std::env::var("SENTINEL_PROXY_TEST_POOL") {
            cfg.pool = n.parse().expect("SENTINEL_PROXY_TEST_POOL: a pool size");
        }
        tweak(&mut cfg);
        let server = Server::bind(cfg).await.expect("bind proxy");
        let token = CancellationToken::new();
        let groups: Vec<(u16, Arc<Group>)> = server
            .groups()
            .into_iter()
            .enumerate()
            .map(|(i, g)| (server.group_addr(i).port(), g))
            .collect();
        let read_port = server.read_addr(0).map(|a| a.port());
        let face = server.sentinel_addr().map(|a| a.port());
        let (port, admin, group) = (
            server.local_addr().port(),
            server.admin_addr(),
            groups[0].1.clone(),
        );
        let task = tokio::spawn(server.serve(token.clone()));
        Proxy {
            port,
            admin,
            group,
            groups,
            read_port,
            face,
            token,
            task: Some(task),
        }
    }

    /// Wait until /readyz says a verified master is known; returns its port.
    pub async fn wait_ready(&self) -> u16 {
        eventually(Duration::from_secs(15), "proxy ready", || async {
            let (code, _) = http_get(self.admin, "/readyz").await;
            (code == 200).then(|| self.group.route.load().master.map(|a| a.port()))?
        })
        .await
    }

    /// Wait until the proxy routes to `port`.
    pub async fn wait_routes_to(&self, port: u16, limit: Duration) {
        eventually(limit, "proxy to route to the new master", || async {
            (self.group.route.load().target() == Some(addr(port))).then_some(())
        })
        .await
    }

    pub fn shutdown(&self) {
        self.token.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// `sub` (subscribed to `news` through the proxy at `port`) still hears: a message published
/// through the proxy after `what` reaches it, on its same connection.
pub async fn subscriber_hears_after(port: u16, sub: &mut RespConn, what: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("a message after {what}"),
        || async move {
            let mut publisher = conn(port).await.ok()?;
            let n = cmd(&mut publisher, &["PUBLISH", "news", "after"])
                .await
                .ok()?;
            (n == OwnedFrame::Integer(1)).then_some(())
        },
    )
    .await;
    let message = sub.read_frame().await.unwrap();
    let bulk = |b: &str| OwnedFrame::BulkString(b.as_bytes().to_vec());
    assert_eq!(
        message,
        OwnedFrame::Array(vec![bulk("message"), bulk("news"), bulk("after")])
    );
}

/// BullMQ's modules, ioredis among them (target/bullmq, made by `scripts/lib.sh`'s
/// `ensure_bullmq` if need be).
pub fn bullmq_modules() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("target/bullmq/node_modules");
    if !modules.join("bullmq/package.json").exists() {
        let status = Command::new("bash")
            .args(["-c", "source scripts/lib.sh && ensure_bullmq"])
            .current_dir(&root)
            .status()
            .expect("run ensure_bullmq");
        assert!(status.success(), "could not install BullMQ");
    }
    modules
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "").await
}

/// `redis-benchmark -t set,get -n requests -c clients -q` against `port` on loopback.
pub async fn redis_benchmark(port: u16, requests: u32, clients: u32) -> std::process::Output {
    let args = [
        "-h".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        "set,get".into(),
        "-n".into(),
        requests.to_string(),
        "-c".into(),
        clients.to_string(),
        "-q".into(),
    ];
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-benchmark")
            .args(args)
            .output()
            .expect("run redis-benchmark")
    })
    .await
    .expect("redis-benchmark's thread")
}

/// A `redis-benchmark` run that succeeded with no error in its output: its standard output.
pub fn benchmark_clean(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-benchmark failed: {stdout}\n{stderr}"
    );
    assert!(
        !stdout.to_lowercase().contains("error") && !stderr.to_lowercase().contains("error"),
        "{stdout}\n{stderr}"
    );
    stdout
}

/// `POST path` on the admin port, with `token` as the bearer token if given: the status and
/// the body (a switchover's answer takes as long as the failover).
pub async fn http_post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("POST {path} HTTP/1.0\r\nHost: test\r\n{auth}Content-Length: 0\r\n\r\n");
    http_exchange(addr, request, Duration::from_secs(60)).await
}

/// [`http_get`] with more header lines (each ending in `\r\n`).
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n{headers}\r\n");
    http_exchange(addr, request, Duration::from_secs(5)).await
}

/// Send one HTTP/1.0 request, read the answer to its end: the status (0: none) and the body.
async fn http_exchange(addr: SocketAddr, request: String, limit: Duration) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => return (0, String::new()),
        };
        let _ = s.set_read_timeout(Some(limit));
        let _ = s.write_all(request.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body.to_string())
    })
    .await
    .unwrap_or((0, String::new()))
}

/// Ask `c`'s node (`CONFIG GET port`) until it is `port`: a client through the proxy carried to
/// the new master. Any error on the way fails the test: a planned failover shows a client none.
pub async fn wait_carried_to(c: &mut RespConn, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let at = node_port(c)
            .await
            .expect("the client sees no error across the failover");
        if at == port {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the client still on {at}, not {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one sample line in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .map(without_group)
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

/// A series line without its `group="…"` label: single-group tests name series as before
/// groups existed (`sentinel_proxy_client_connections`, `…_total{reason="quit"}`).
fn without_group(line: &str) -> String {
    let Some(start) = line.find("group=\"") else {
        return line.to_string();
    };
    let Some(len) = line[start + 7..].find('"') else {
        return line.to_string();
    };
    let mut end = start + 7 + len + 1;
    let mut begin = start;
    if line[end..].starts_with(',') {
        end += 1;
    } else if line[..begin].ends_with(',') {
        begin -= 1;
    }
    let out = format!("{}{}", &line[..begin], &line[end..]);
    out.replace("{}", "")
}

/// Wait until one series of the proxy's /metrics reads `value` (a session is counted just after
/// its client saw the close).
pub async fn wait_metric(admin: SocketAddr, series: &str, value: f64, limit: Duration) {
    let what = format!("{series} to read {value}");
    eventually(limit, &what, || async {
        let (_, text) = http_get(admin, "/metrics").await;
        (metric(&text, series) == Some(value)).then_some(())
    })
    .await
}

/// The next RESP2 frame a fake server's peer sends, or `None` when it has gone.
pub async fn next_frame(
    stream: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> Option<OwnedFrame> {
    use bytes::Buf;
    use tokio::io::AsyncReadExt;
    loop {
        if let Ok(Some((frame, used))) = redis_protocol::resp2::decode::decode(buf) {
            buf.advance(used);
            return Some(frame);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// /readyz is 200 and /metrics counts `switches` master switches; returns the metrics text.
pub async fn assert_ready_after_switches(proxy: &Proxy, switches: f64) -> String {
    let (code, _) = http_get(proxy.admin, "/readyz").await;
    assert_eq!(code, 200);
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_master_switches_total"),
        Some(switches),
        "{text}"
    );
    text
}

/// redis-py's interpreter: target/redis-py, made by `scripts/lib.sh`'s `ensure_redis_py` (run
/// here when missing, so `cargo test` alone works too).
pub fn python() -> PathBuf {
    venv("redis-py", "redis", "ensure_redis_py")
}

/// The Python of a venv under `target/` that imports `module`, made by `scripts/lib.sh`'s
/// `ensure` function if need be.
pub fn venv(name: &str, module: &str, ensure: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = root.join("target").join(name).join("bin/python");
    let ok = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&py) {
        let status = Command::new("bash")
            .args(["-c", &format!("source scripts/lib.sh && {ensure}")])
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("run {ensure}: {e}"));
        assert!(status.success() && ok(&py), "could not install {module}");
    }
    py
}

/// The master's client connections from the proxy that serve clients (`CLIENT LIST TYPE
/// normal` on `probe`, a connection to the master): not the sentinels', not the one asking, not
/// the proxy's own that reads the replication lag (`sentinel-proxy-lag`).
pub async fn proxy_connections(probe: &mut RespConn) -> usize {
    match cmd(probe, &["CLIENT", "LIST", "TYPE", "normal"])
        .await
        .unwrap()
    {
        OwnedFrame::BulkString(b) => String::from_utf8_lossy(&b)
            .lines()
            .filter(|l| !l.contains(" name=sentinel-") || l.contains(" name=sentinel-proxy"))
            .filter(|l| !l.contains(" name=sentinel-proxy-lag "))
            .filter(|l| !l.contains(" cmd=client|list"))
            .count(),
        other => panic!("CLIENT LIST: {other:?}"),
    }
}

/// `promtool check metrics` on an exposition: None if promtool is not installed (scripts/test
/// installs it), else its complaints (empty when clean).
pub fn promtool_check(text: &str) -> Option<String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let mut complaints = String::from_utf8_lossy(&out.stdout).into_owned();
    complaints += &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && complaints.is_empty() {
        complaints = format!("promtool exited with {}", out.status);
    }
    Some(complaints.trim().to_string())
}

/// A request as clients send it: a RESP array of bulk strings.
pub fn multibulk<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Read one RESP reply (RESP2 or RESP3) from a raw socket.
pub async fn read_reply(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut rep = sentinel_proxy::resp::ReplyTracker::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while rep.replies == 0 {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        .expect("a reply within 10 s")
        .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        rep.feed(&buf[..n]).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// The proxy's shared connections on the master (named `sentinel-proxy-pool`), by `CLIENT LIST`.
pub async fn connections_on(master: u16) -> (usize, String) {
    let mut c = conn(master).await.unwrap();
    match cmd(&mut c, &["CLIENT", "LIST", "TYPE", "normal"])
        .await
        .unwrap()
    {
        OwnedFrame::BulkString(b) => {
            let list = String::from_utf8_lossy(&b).into_owned();
            let n = list
                .lines()
                .filter(|l| l.contains(" name=sentinel-proxy-pool "))
                .count();
            (n, list)
        }
        other => panic!("CLIENT LIST: {other:?}"),
    }
}

/// A client subscribed to `news` and one blocked in `BLPOP queue 0`, both moved to a new master:
/// what is published and pushed there through the proxy at `port` reaches each exactly once, on
/// the connection it had, and the list is left empty.
pub async fn moved_subscriber_and_blocked_hear_the_new_master(
    port: u16,
    sub: &mut RespConn,
    blocked: &mut RespConn,
) {
    let mut p = conn(port).await.unwrap();
    assert_eq!(
        cmd(&mut p, &["PUBLISH", "news", "after"]).await.unwrap(),
        OwnedFrame::Integer(1)
    );
    cmd(&mut p, &["RPUSH", "queue", "item"]).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), sub.read_frame()).await;
    assert_eq!(
        message.unwrap().unwrap(),
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"message".to_vec()),
            OwnedFrame::BulkString(b"news".to_vec()),
            OwnedFrame::BulkString(b"after".to_vec()),
        ])
    );
    let popped = tokio::time::timeout(Duration::from_secs(5), blocked.read_frame()).await;
    assert_eq!(
        popped.unwrap().unwrap(),
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"queue".to_vec()),
            OwnedFrame::BulkString(b"item".to_vec()),
        ])
    );
    assert_eq!(
        cmd(&mut p, &["LLEN", "queue"]).await.unwrap(),
        OwnedFrame::Integer(0)
    );
}
