//! The real `sentinel-proxy` binary as a child process, its stderr collected for assertions,
//! killed on drop.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

pub struct Binary {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Binary {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentinel-proxy"));
        cmd.args(args).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sentinel-proxy");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Binary { child, log }
    }

    /// Send a signal (`-HUP`, `-TERM`) to the process, by PID.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Its open file descriptors now (from /proc).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait for it to exit; its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary in front of a lab's sentinels on free ports, ready (a verified master known).
/// Returns it with its client and admin ports.
pub async fn proxy_binary(lab: &super::Lab, extra: &[&str]) -> (Binary, u16, u16) {
    use super::{addr, eventually, http_get, unused_port};
    let (listen, admin) = (unused_port(), unused_port());
    let sentinels: Vec<String> = lab
        .sentinel_addrs()
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let (l, a, s) = (
        format!("127.0.0.1:{listen}"),
        format!("127.0.0.1:{admin}"),
        sentinels.join(","),
    );
    let mut args = vec!["--listen", &l, "--metrics-listen", &a, "--sentinels", &s];
    // `scripts/test` runs the end-to-end tests a second time in pooled mode.
    let pool = std::env::var("SENTINEL_PROXY_TEST_POOL").unwrap_or_default();
    if !pool.is_empty() {
        args.extend_from_slice(&["--pool", &pool]);
    }
    args.extend_from_slice(extra);
    let proxy = Binary::spawn(&args, &[("RUST_LOG", "warn")]);
    eventually(
        std::time::Duration::from_secs(15),
        "the proxy to be ready",
        || async { (http_get(addr(admin), "/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    (proxy, listen, admin)
}
