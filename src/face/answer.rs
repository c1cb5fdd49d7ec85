//! What the Sentinel face answers (pure: a command and the proxy's view in, the reply bytes
//! out), in Sentinel's own shapes and wording (Redis 7.0's `sentinel.c`), RESP2.
//!
//! The proxy presents itself as the only sentinel of every group it serves, and as each group's
//! master: `SENTINEL get-master-addr-by-name` and `SENTINEL masters` give the proxy's client
//! address for the group, `SENTINEL replicas` its read port (none without one), `SENTINEL
//! sentinels` no other sentinel. The backends' failovers are the proxy's to hide: the master a
//! client is given never changes while the proxy's own address does not.

use std::collections::BTreeSet;

/// A group as the face shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// The Sentinel master name clients ask for.
    pub name: String,
    /// Where clients reach the proxy for it.
    pub host: String,
    pub port: u16,
    /// The group's read port, if it has one.
    pub replica: Option<u16>,
}

/// What the face knows when it answers.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub masters: Vec<Master>,
    /// Whether clients must log in (the proxy's users).
    pub auth: bool,
    /// The face's run id (`SENTINEL myid`).
    pub myid: String,
}

impl View {
    fn master(&self, name: &[u8]) -> Option<&Master> {
        self.masters.iter().find(|m| m.name.as_bytes() == name)
    }
}

/// One client connection's state.
#[derive(Debug, Default)]
pub struct Conn {
    pub id: u64,
    pub authed: bool,
    pub name: Option<Vec<u8>>,
    pub channels: BTreeSet<Vec<u8>>,
    pub patterns: BTreeSet<Vec<u8>>,
}

impl Conn {
    pub fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Whether a message on `channel` is this connection's.
    pub fn hears(&self, channel: &[u8]) -> bool {
        self.channels.contains(channel) || self.pattern_for(channel).is_some()
    }

    /// The first of its patterns that matches `channel`.
    pub fn pattern_for(&self, channel: &[u8]) -> Option<&[u8]> {
        self.patterns
            .iter()
            .map(Vec::as_slice)
            .find(|p| glob(p, channel))
    }
}

/// What to do with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Reply(Vec<u8>),
    /// Answer and close (QUIT).
    Close(Vec<u8>),
    /// Check these credentials (slow: off the async threads); on success mark the connection
    /// logged in and answer `then`, else `WRONGPASS`.
    Login {
        user: Vec<u8>,
        password: Vec<u8>,
        then: Vec<u8>,
    },
}

pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NO_SUCH_MASTER: &[u8] = b"-ERR No such master with that name\r\n";
/// The Redis version the face says it is (its commands are Redis 7.0's Sentinel's).
const VERSION: &str = "7.0.0";

/// Answer one command (`args`, the command and its arguments) on `conn`.
pub fn answer(args: &[Vec<u8>], view: &View, conn: &mut Conn) -> Step {
    let Some(name) = args.first() else {
        return Step::Reply(Vec::new());
    };
    let upper = name.to_ascii_uppercase();
    let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    match upper.as_slice() {
        b"AUTH" => return auth(&a, view),
        b"HELLO" => return hello(&a, view, conn),
        b"QUIT" => return Step::Close(b"+OK\r\n".to_vec()),
        _ => {}
    }
    if view.auth && !conn.authed {
        return Step::Reply(NOAUTH.to_vec());
    }
    if conn.subscribed()
        && !matches!(
            upper.as_slice(),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"PING" | b"RESET"
        )
    {
        return Step::Reply(
            format!(
                "-ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
                String::from_utf8_lossy(name).to_lowercase()
            )
            .into_bytes(),
        );
    }
    Step::Reply(match upper.as_slice() {
        b"PING" => ping(&a, conn),
        b"ROLE" => {
            let mut out = b"*2\r\n$8\r\nsentinel\r\n".to_vec();
            array(&mut out, view.masters.iter().map(|m| m.name.as_bytes()));
            out
        }
        b"SENTINEL" => sentinel(&a, view),
        b"CLIENT" => client(&a, conn),
        b"SUBSCRIBE" | b"PSUBSCRIBE" => subscribe(&a, conn, upper == b"PSUBSCRIBE"),
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" => unsubscribe(&a, conn, upper == b"PUNSUBSCRIBE"),
        b"RESET" => {
            let id = conn.id;
            *conn = Conn {
                id,
                authed: !view.auth,
                ..Conn::default()
            };
            b"+RESET\r\n".to_vec()
        }
        b"INFO" => bulk(info(view).as_bytes()),
        _ => unknown_command(&a),
    })
}

fn auth(a: &[&[u8]], view: &View) -> Step {
    let (user, password) = match a.len() {
        2 => (b"default".as_slice(), a[1]),
        3 => (a[1], a[2]),
        _ => return Step::Reply(wrong_args("auth")),
    };
    if !view.auth {
        return Step::Reply(b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n".to_vec());
    }
    Step::Login {
        user: user.to_vec(),
        password: password.to_vec(),
        then: b"+OK\r\n".to_vec(),
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 only (a client asking for 3 gets
/// Redis's `NOPROTO` and goes on in RESP2, as clients do with a server that lacks it).
fn hello(a: &[&[u8]], view: &View, conn: &mut Conn) -> Step {
    if let Some(v) = a.get(1)
        && *v != b"2"
    {
        return Step::Reply(match *v == b"3" {
            true => b"-NOPROTO sentinel-proxy's Sentinel face speaks RESP2\r\n".to_vec(),
            false => b"-NOPROTO unsupported protocol version\r\n".to_vec(),
        });
    }
    let (mut login, mut i) = (None, 2);
    while i < a.len() {
        match a[i].to_ascii_uppercase().as_slice() {
            b"AUTH" if i + 2 < a.len() => {
                login = Some((a[i + 1].to_vec(), a[i + 2].to_vec()));
                i += 3;
            }
            b"SETNAME" if i + 1 < a.len() => {
                conn.name = Some(a[i + 1].to_vec());
                i += 2;
            }
            _ => {
                return Step::Reply(
                    format!(
                        "-ERR Syntax error in HELLO option '{}'\r\n",
                        String::from_utf8_lossy(a[i])
                    )
                    .into_bytes(),
                );
            }
        }
    }
    let mut reply = b"*14\r\n".to_vec();
    for (k, v) in [("server", "redis"), ("version", VERSION)] {
        reply.extend_from_slice(&bulk(k.as_bytes()));
        reply.extend_from_slice(&bulk(v.as_bytes()));
    }
    reply.extend_from_slice(&bulk(b"proto"));
    reply.extend_from_slice(b":2\r\n");
    reply.extend_from_slice(&bulk(b"id"));
    reply.extend_from_slice(format!(":{}\r\n", conn.id).as_bytes());
    for (k, v) in [("mode", "sentinel"), ("role", "master")] {
        reply.extend_from_slice(&bulk(k.as_bytes()));
        reply.extend_from_slice(&bulk(v.as_bytes()));
    }
    reply.extend_from_slice(&bulk(b"modules"));
    reply.extend_from_slice(b"*0\r\n");
    match login {
        Some((user, password)) if view.auth => Step::Login {
            user,
            password,
            then: reply,
        },
        Some(_) => Step::Reply(b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n".to_vec()),
        None if view.auth && !conn.authed => Step::Reply(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n".to_vec()),
        None => Step::Reply(reply),
    }
}

fn ping(a: &[&[u8]], conn: &Conn) -> Vec<u8> {
    match (conn.subscribed(), a.get(1)) {
        (false, None) => b"+PONG\r\n".to_vec(),
        (false, Some(m)) if a.len() == 2 => bulk(m),
        (true, m) if a.len() <= 2 => {
            let mut out = b"*2\r\n$4\r\npong\r\n".to_vec();
            out.extend_from_slice(&bulk(m.copied().unwrap_or(b"")));
            out
        }
        _ => wrong_args("ping"),
    }
}

fn client(a: &[&[u8]], conn: &mut Conn) -> Vec<u8> {
    let sub = a.get(1).map(|s| s.to_ascii_uppercase()).unwrap_or_default();
    match (sub.as_slice(), a.len()) {
        (b"SETNAME", 3) => {
            conn.name = (!a[2].is_empty()).then(|| a[2].to_vec());
            b"+OK\r\n".to_vec()
        }
        (b"GETNAME", 2) => match &conn.name {
            Some(n) => bulk(n),
            None => b"$-1\r\n".to_vec(),
        },
        (b"SETINFO", 4) => b"+OK\r\n".to_vec(),
        (b"ID", 2) => format!(":{}\r\n", conn.id).into_bytes(),
        (b"", _) => wrong_args("client"),
        _ => unknown_subcommand(a[1], "CLIENT"),
    }
}

fn subscribe(a: &[&[u8]], conn: &mut Conn, pattern: bool) -> Vec<u8> {
    if a.len() < 2 {
        return wrong_args(if pattern { "psubscribe" } else { "subscribe" });
    }
    let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
    let mut out = Vec::new();
    for ch in &a[1..] {
        match pattern {
            true => conn.patterns.insert(ch.to_vec()),
            false => conn.channels.insert(ch.to_vec()),
        };
        confirmation(&mut out, kind, Some(ch), conn.count());
    }
    out
}

fn unsubscribe(a: &[&[u8]], conn: &mut Conn, pattern: bool) -> Vec<u8> {
    let kind: &[u8] = if pattern {
        b"punsubscribe"
    } else {
        b"unsubscribe"
    };
    let named: Vec<Vec<u8>> = match a.len() {
        1 if pattern => conn.patterns.iter().cloned().collect(),
        1 => conn.channels.iter().cloned().collect(),
        _ => a[1..].iter().map(|c| c.to_vec()).collect(),
    };
    let mut out = Vec::new();
    if named.is_empty() {
        confirmation(&mut out, kind, None, conn.count());
    }
    for ch in named {
        match pattern {
            true => conn.patterns.remove(&ch),
            false => conn.channels.remove(&ch),
        };
        confirmation(&mut out, kind, Some(&ch), conn.count());
    }
    out
}

fn confirmation(out: &mut Vec<u8>, kind: &[u8], channel: Option<&[u8]>, count: usize) {
    out.extend_from_slice(b"*3\r\n");
    out.extend_from_slice(&bulk(kind));
    match channel {
        Some(c) => out.extend_from_slice(&bulk(c)),
        None => out.extend_from_slice(b"$-1\r\n"),
    }
    out.extend_from_slice(format!(":{count}\r\n").as_bytes());
}

/// A message published to `channel` (matched by `pattern`, if through one), RESP2.
pub fn message(channel: &[u8], pattern: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match pattern {
        Some(p) => {
            out.extend_from_slice(b"*4\r\n");
            out.extend_from_slice(&bulk(b"pmessage"));
            out.extend_from_slice(&bulk(p));
        }
        None => {
            out.extend_from_slice(b"*3\r\n");
            out.extend_from_slice(&bulk(b"message"));
        }
    }
    out.extend_from_slice(&bulk(channel));
    out.extend_from_slice(&bulk(payload));
    out
}

fn sentinel(a: &[&[u8]], view: &View) -> Vec<u8> {
    let Some(sub) = a.get(1) else {
        return wrong_args("sentinel");
    };
    let named = |f: &dyn Fn(&Master) -> Vec<u8>| match a.get(2).and_then(|n| view.master(n)) {
        Some(m) if a.len() == 3 => f(m),
        None if a.len() == 3 => NO_SUCH_MASTER.to_vec(),
        _ => wrong_args("sentinel"),
    };
    match sub.to_ascii_uppercase().as_slice() {
        b"GET-MASTER-ADDR-BY-NAME" => match (a.len(), a.get(2).and_then(|n| view.master(n))) {
            (3, Some(m)) => {
                let port = m.port.to_string();
                let mut out = Vec::new();
                array(&mut out, [m.host.as_bytes(), port.as_bytes()].into_iter());
                out
            }
            (3, None) => b"*-1\r\n".to_vec(),
            _ => wrong_args("sentinel"),
        },
        b"MASTERS" => {
            let mut out = format!("*{}\r\n", view.masters.len()).into_bytes();
            for m in &view.masters {
                out.extend_from_slice(&master_map(m));
            }
            out
        }
        b"MASTER" => named(&master_map),
        b"REPLICAS" | b"SLAVES" => named(&|m| match m.replica {
            Some(port) => [b"*1\r\n".as_slice(), &replica_map(m, port)].concat(),
            None => b"*0\r\n".to_vec(),
        }),
        b"SENTINELS" => named(&|_| b"*0\r\n".to_vec()),
        b"CKQUORUM" => named(&|_| {
            b"+OK 1 usable Sentinels. Quorum and failover authorization can be reached\r\n".to_vec()
        }),
        b"MYID" if a.len() == 2 => bulk(view.myid.as_bytes()),
        b"FAILOVER" => b"-ERR sentinel-proxy: ask the proxy for a switchover on its admin port (POST /groups/NAME/switchover, or sentinel-proxy ctl switchover NAME)\r\n".to_vec(),
        _ => unknown_subcommand(sub, "SENTINEL"),
    }
}

/// The fields `SENTINEL MASTERS` gives for a master (its order), as the proxy answers for it.
fn master_map(m: &Master) -> Vec<u8> {
    let port = m.port.to_string();
    let replicas = (m.replica.is_some() as u8).to_string();
    let fields: [(&str, &str); 20] = [
        ("name", &m.name),
        ("ip", &m.host),
        ("port", &port),
        ("runid", ""),
        ("flags", "master"),
        ("link-pending-commands", "0"),
        ("link-refcount", "1"),
        ("last-ping-sent", "0"),
        ("last-ok-ping-reply", "0"),
        ("last-ping-reply", "0"),
        ("down-after-milliseconds", "30000"),
        ("info-refresh", "0"),
        ("role-reported", "master"),
        ("role-reported-time", "0"),
        ("config-epoch", "0"),
        ("num-slaves", &replicas),
        ("num-other-sentinels", "0"),
        ("quorum", "1"),
        ("failover-timeout", "180000"),
        ("parallel-syncs", "1"),
    ];
    flat_map(&fields)
}

fn replica_map(m: &Master, port: u16) -> Vec<u8> {
    let (p, master_port) = (port.to_string(), m.port.to_string());
    let name = format!("{}:{}", m.host, port);
    let fields: [(&str, &str); 18] = [
        ("name", &name),
        ("ip", &m.host),
        ("port", &p),
        ("runid", ""),
        ("flags", "slave"),
        ("link-pending-commands", "0"),
        ("link-refcount", "1"),
        ("last-ping-sent", "0"),
        ("last-ok-ping-reply", "0"),
        ("last-ping-reply", "0"),
        ("down-after-milliseconds", "30000"),
        ("role-reported", "slave"),
        ("master-link-down-time", "0"),
        ("master-link-status", "ok"),
        ("master-host", &m.host),
        ("master-port", &master_port),
        ("slave-priority", "100"),
        ("slave-repl-offset", "0"),
    ];
    flat_map(&fields)
}

fn flat_map(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    array(
        &mut out,
        fields
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]),
    );
    out
}

fn info(view: &View) -> String {
    let mut s = format!(
        "# Server\r\nredis_version:{VERSION}\r\nredis_mode:sentinel\r\n\r\n# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\nsentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n",
        view.masters.len()
    );
    for (i, m) in view.masters.iter().enumerate() {
        s.push_str(&format!(
            "master{i}:name={},status=ok,address={}:{},slaves={},sentinels=1\r\n",
            m.name,
            m.host,
            m.port,
            m.replica.is_some() as u8
        ));
    }
    s
}

fn array<'b>(out: &mut Vec<u8>, items: impl Iterator<Item = &'b [u8]> + Clone) {
    out.extend_from_slice(format!("*{}\r\n", items.clone().count()).as_bytes());
    for i in items {
        out.extend_from_slice(&bulk(i));
    }
}

fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

fn wrong_args(name: &str) -> Vec<u8> {
    format!("-ERR wrong number of arguments for '{name}' command\r\n").into_bytes()
}

fn unknown_subcommand(sub: &[u8], command: &str) -> Vec<u8> {
    format!(
        "-ERR unknown subcommand '{}'. Try {command} HELP.\r\n",
        printable(sub)
    )
    .into_bytes()
}

/// Redis's own wording for a command it does not have.
fn unknown_command(a: &[&[u8]]) -> Vec<u8> {
    let args: String = a[1..]
        .iter()
        .take(16)
        .map(|x| format!("'{}' ", printable(x)))
        .collect();
    format!(
        "-ERR unknown command '{}', with args beginning with: {args}\r\n",
        printable(a[0])
    )
    .into_bytes()
}

/// At most 128 bytes of `b`, without line breaks (an error reply is one line).
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(128)]).replace(['\r', '\n'], " ")
}

/// Redis's glob for pattern subscriptions: `*`, `?`, `[...]` (with `^` and ranges), `\` escapes.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some((&c, tail)) = s.split_first() else {
                return false;
            };
            let (negate, mut p) = match rest.first() {
                Some(b'^') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let mut hit = false;
            while let Some((&x, more)) = p.split_first() {
                if x == b']' {
                    p = more;
                    return (hit != negate) && glob(p, tail);
                }
                if x == b'\\' && !more.is_empty() {
                    hit |= more[0] == c;
                    p = &more[1..];
                } else if more.len() >= 2 && more[0] == b'-' && more[1] != b']' {
                    let (lo, hi) = (x.min(more[1]), x.max(more[1]));
                    hit |= (lo..=hi).contains(&c);
                    p = &more[2..];
                } else {
                    hit |= x == c;
                    p = more;
                }
            }
            false
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            s.first() == Some(&rest[0]) && glob(&rest[1..], &s[1..])
        }
        Some((&c, rest)) => s.first() == Some(&c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests;
