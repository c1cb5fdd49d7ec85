//! The binary as an operator meets it: `--check`, exit codes, one-line errors, signals.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-proxy");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a finished command printed, standard output then standard error.
fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_one_line_error(args: &[&str], expect: &str) {
    let (code, _, err) = run(args, &[]);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.contains(expect), "{args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn check_accepts_every_example_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = run(&["--config", path.to_str().unwrap(), "--check"], &[]);
            assert_eq!(code, 0, "{}: {err}", path.display());
            assert!(out.contains("configuration ok"), "{out}");
            seen += 1;
        }
    }
    assert!(seen >= 1, "no example config found in config/");
}

/// The TOML the deployment examples carry inline (the Kubernetes ConfigMap, the Compose
/// service's start-up script) passes `--check` too: two groups each.
#[test]
fn check_accepts_the_configs_inside_the_deployment_examples() {
    let dir = tempfile::tempdir().unwrap();
    for (name, start, end) in [
        ("k8s-standalone.yaml", "sentinel-proxy.toml: |", "---"),
        (
            "docker-compose.yml",
            "cat > /tmp/sentinel-proxy.toml <<CONF",
            "CONF",
        ),
    ] {
        let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.trim_end().ends_with(start))
            .skip(1)
            .take_while(|l| l.trim() != end)
            .collect();
        let indent = lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or_else(|| panic!("no inline config in {name}"));
        let toml: Vec<&str> = lines
            .iter()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect();
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml.join("\n")).unwrap();
        let (code, out, err) = run(&["--config", file.to_str().unwrap(), "--check"], &[]);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(out.matches("master '").count(), 2, "{name}: {out}");
    }
}

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    assert_one_line_error(&["--check"], "no sentinels configured");
    assert_one_line_error(&["--sentinels", "", "--check"], "the list is empty");
    assert_one_line_error(
        &["--sentinels", "nohostport", "--check"],
        "is not host:port",
    );
    assert_one_line_error(
        &["--sentinels", "a:1", "--listen", "6379", "--check"],
        "listen:",
    );
    assert_one_line_error(
        &["--sentinels", "a:1", "--poll-interval", "5", "--check"],
        "poll-interval",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "sentinels = [\"a:1\"]\nsentinals = []\n").unwrap();
    assert_one_line_error(
        &["--config", file.to_str().unwrap(), "--check"],
        "unknown field",
    );
    assert_one_line_error(
        &["--config", "/nonexistent.toml", "--check"],
        "cannot read config file",
    );
}

#[test]
fn env_vars_configure_and_flags_override_them() {
    let (code, out, err) = run(
        &["--check", "--master-name", "fromflag"],
        &[
            ("SENTINEL_PROXY_SENTINELS", "127.0.0.1:1,127.0.0.1:2"),
            ("SENTINEL_PROXY_MASTER_NAME", "fromenv"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("master 'fromflag', 2 sentinel(s)"), "{out}");
}

#[test]
fn sigterm_exits_0_within_the_deadline() {
    // No sentinel listens at port 1: the proxy runs without a master, which is fine for this.
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args([
                "--sentinels",
                "127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--shutdown-timeout",
                "2s",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = child.0.stderr.take().unwrap();
    // Wait for the start-up line, so the signal handler is installed.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("sentinel-proxy started") {
        assert!(Instant::now() < deadline, "no start-up line: {seen}");
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "exited early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The log goes to a pipe here, as under systemd, Docker or `2>file`: no colour codes.
    assert!(
        !seen.contains('\x1b'),
        "ANSI escape codes in a log written to a pipe: {seen:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "did not exit within the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn healthcheck_subcommand_asks_the_running_proxy() {
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let args = [
        "--sentinels",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        admin.as_str(),
    ];
    // Nothing runs yet: unhealthy.
    let (code, _, err) = run(&[&args[..], &["healthcheck"]].concat(), &[]);
    assert_eq!(code, 1, "{err}");
    let _child = KillOnDrop(
        Command::new(BIN)
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, _) = run(&[&args[..], &["healthcheck"]].concat(), &[]);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "healthcheck never passed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Alive, but not ready: no sentinel answers, so no master is known.
    let (code, _, err) = run(&[&args[..], &["healthcheck", "--ready"]].concat(), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("/readyz") && err.contains("503"), "{err}");
    // A container's health check runs without the proxy's arguments: the admin address alone
    // is enough (no sentinels), given after the subcommand too.
    let (code, _, err) = run(&["healthcheck", "--metrics-listen", &admin], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &["healthcheck"],
        &[("SENTINEL_PROXY_METRICS_LISTEN", &admin)],
    );
    assert_eq!(code, 0, "{err}");
    // A file that cannot be read is a usage error, not an unhealthy proxy.
    let (code, _, err) = run(&["healthcheck", "--config", "/nonexistent/proxy.toml"], &[]);
    assert_eq!(code, 2, "{err}");
}

/// As the project's compose file runs it: the proxy started with a configuration file (named by
/// `SENTINEL_PROXY_CONFIG`, or `--config`), and the image's `HEALTHCHECK`, which runs
/// `sentinel-proxy healthcheck` with no arguments, finds the admin address in the same file.
/// No `ENV` in the image overrides a file's setting.
#[test]
fn healthcheck_finds_the_admin_address_in_the_config_file() {
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let dir = std::env::temp_dir().join(format!("sp-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sentinel-proxy.toml");
    // As in the compose file: a group table with its own listen; the admin address top-level.
    let toml = format!(
        "metrics-listen = \"{admin}\"\nsentinels = [\"127.0.0.1:1\"]\n\n\
         [[group]]\nmaster-name = \"mymaster\"\nlisten = \"127.0.0.1:0\"\n"
    );
    std::fs::write(&file, toml).unwrap();
    let file = file.to_str().unwrap().to_string();
    let env = [("SENTINEL_PROXY_CONFIG", file.as_str())];
    let (code, _, err) = run(&["healthcheck"], &env);
    assert_eq!(code, 1, "nothing runs yet: {err}");
    let _child = KillOnDrop(
        Command::new(BIN)
            .env("SENTINEL_PROXY_CONFIG", &file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(&["healthcheck"], &env).0 != 0 {
        assert!(Instant::now() < deadline, "healthcheck never passed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = run(&["healthcheck", "--config", &file], &[]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let env_lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("ENV SENTINEL_PROXY_"))
        .collect();
    assert!(
        env_lines.is_empty(),
        "the image overrides settings: {env_lines:?}"
    );
}

/// A child process killed when the test ends, even by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn example_alert_rules_are_valid() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/config/alerts.yml");
    match Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
    {
        Ok(out) => assert!(out.status.success(), "{}", printed(&out)),
        // scripts/test installs promtool; a bare `cargo test` without it checks the rest.
        Err(_) => eprintln!("promtool not installed: `promtool check rules` skipped"),
    }
}

#[test]
fn example_dashboards_are_json_over_our_metrics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!v["panels"].as_array().unwrap().is_empty());
            assert!(text.contains("sentinel_proxy_"), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 1, "no dashboard in config/");
}

/// The systemd unit is one systemd accepts (`systemd-analyze verify`, where installed: no unknown
/// key, every command executable), with this build's binary in its paths; with its credential
/// lines uncommented too.
#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: the unit is not verified");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sentinel-proxy.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/sentinel-proxy", BIN);
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("sentinel-proxy.service", unit.clone()),
        (
            "sentinel-proxy-credentials.service",
            unit.replace("\n#LoadCredential=", "\nLoadCredential=")
                .replace("\n#Environment=", "\nEnvironment="),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let said = printed(&out);
        let complaints: Vec<&str> = said
            .lines()
            .filter(|l| l.contains(name) || l.contains("Unknown"))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "{name}: {said}"
        );
    }
}

/// The Kubernetes manifests validate against Kubernetes's own schemas, strictly (no field the
/// API does not know), with `kubernetes-validate` from PyPI (`scripts/test` installs it under
/// target/; its schemas ship with it); the sidecar is a native sidecar on one thread.
#[test]
fn the_kubernetes_manifests_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let sidecar = std::fs::read_to_string(format!("{root}/config/k8s-sidecar.yaml")).unwrap();
    let init = sidecar.find("initContainers:").expect("a native sidecar");
    let always = sidecar
        .find("restartPolicy: Always")
        .expect("restartPolicy: Always");
    assert!(init < always && always < sidecar.find("containers:\n").unwrap_or(usize::MAX));
    assert!(sidecar.contains("SENTINEL_PROXY_THREADS, value: \"1\""));
    let tool = format!("{root}/target/kubernetes-validate/bin/kubernetes-validate");
    if !std::path::Path::new(&tool).exists() {
        eprintln!("kubernetes-validate not installed (scripts/test installs it): not validated");
        return;
    }
    let out = Command::new(&tool)
        .arg("--strict")
        .arg(format!("{root}/config/k8s-sidecar.yaml"))
        .arg(format!("{root}/config/k8s-standalone.yaml"))
        .output()
        .unwrap();
    let said = printed(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches(" passed for resource ").count(), 5, "{said}");
}
