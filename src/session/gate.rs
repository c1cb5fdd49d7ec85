//! A client's first commands when the proxy authenticates clients itself (`auth.rs`): until it
//! has passed, everything it sends is answered here as Redis answers an unauthenticated client
//! (`-NOAUTH Authentication required.`), and nothing reaches Redis.
//!
//! `AUTH [user] password` is answered `+OK` and the session starts. `HELLO proto AUTH user
//! password [SETNAME name]` starts the session with the same `HELLO` less its `AUTH`, which
//! Redis then answers (its reply is the server's, in the protocol asked for). `QUIT` is answered
//! and closes. Commands are taken off the socket one at a time, up to the end of the one that
//! passes: what the client pipelined behind it stays in the socket for the session.
//!
//! Like Redis, an unauthenticated client may not send large requests (16 KiB at most here).

use crate::tls::Link;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Close;
use crate::Group;
use crate::command;
use crate::resp::encode_command;

const LIMIT: usize = 16 * 1024;

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";

/// What a command does at the gate.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// Check these credentials; on success the session starts with `then` sent first.
    Login {
        user: Vec<u8>,
        password: Vec<u8>,
        then: Vec<u8>,
    },
    Quit,
    /// Answer this and wait for the next command.
    Refuse(&'static [u8]),
    Wrong(String),
}

/// Wait for the client to authenticate. `Ok(first)`: it has, and `first` (possibly empty) is
/// what the session must send to Redis before anything else.
pub(super) async fn pass(
    client: &mut Link,
    group: &Group,
    shutdown: &CancellationToken,
) -> Result<Vec<u8>, Close> {
    if let Some(user) = certificate_user(client, group) {
        debug!(%user, "authenticated by its certificate");
        return Ok(Vec::new());
    }
    let mut scratch = vec![0u8; LIMIT];
    loop {
        // `idle-timeout` holds here too, as Redis's `timeout` does for a client that has not
        // authenticated: one that never does cannot keep its connection (and its --max-clients
        // permit) for ever.
        let idle = group.config().idle_timeout;
        let waited = async {
            match idle.is_zero() {
                true => std::future::pending().await,
                false => tokio::time::sleep(idle).await,
            }
        };
        let args = tokio::select! {
            r = next_command(client, &mut scratch) => r?,
            _ = shutdown.cancelled() => return Err(Close::Shutdown),
            _ = waited => return Err(Close::IdleTimeout),
        };
        let reply: Vec<u8> = match classify(&args) {
            Ask::Quit => {
                let _ = client.send(b"+OK\r\n").await;
                return Err(Close::Quit);
            }
            Ask::Refuse(r) => r.to_vec(),
            Ask::Wrong(e) => format!("-ERR {e}\r\n").into_bytes(),
            Ask::Login {
                user,
                password,
                then,
            } => {
                // The users of the configuration now: a reload between two tries applies.
                let Some(users) = group.config().users.clone() else {
                    // Authentication was turned off meanwhile: the command goes to Redis.
                    let mut original = Vec::new();
                    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    encode_command(&mut original, &args);
                    return Ok(original);
                };
                let name = String::from_utf8_lossy(&user).into_owned();
                // Argon2 takes tens of milliseconds of CPU: not on a thread serving sessions
                // (a pair that verified before passes at once).
                let ok = users.verified_before(&user, &password)
                    || tokio::task::spawn_blocking(move || users.verify(&user, &password))
                        .await
                        .unwrap_or(false);
                if ok {
                    debug!(user = %name, "authenticated");
                    if then.is_empty() {
                        client
                            .write_all(b"+OK\r\n")
                            .await
                            .map_err(|_| Close::ClientClosed)?;
                    }
                    return Ok(then);
                }
                debug!(user = %name, "authentication failed");
                group.metrics.auth_failures_total.inc();
                WRONGPASS.to_vec()
            }
        };
        client.send(&reply).await.map_err(|_| Close::ClientClosed)?;
    }
}

/// With `--tls-client-user`, the user the client's certificate names, if the users file has it
/// (the first such name, in the certificate's order). A certificate that names none leaves the
/// client to log in with AUTH, as any other.
fn certificate_user(client: &Link, group: &Group) -> Option<String> {
    let config = group.config();
    let (field, users) = (config.tls_client_user?, config.users.as_ref()?);
    let names = crate::tls::certificate_names(client.peer_certificate()?, field);
    let user = names.iter().find(|n| users.has(n)).cloned();
    if user.is_none() {
        info!(
            ?field,
            names = ?names,
            "the client's certificate names no user of the users file: it must AUTH"
        );
    }
    user
}

/// The next command, taken off the socket up to its last byte and no further.
async fn next_command(client: &mut Link, scratch: &mut [u8]) -> Result<Vec<Vec<u8>>, Close> {
    // Bytes of this command already taken (it came in pieces).
    let mut taken: Vec<u8> = Vec::new();
    loop {
        let n = client
            .peek(&mut scratch[..LIMIT - taken.len()])
            .await
            .map_err(|_| Close::ClientClosed)?;
        if n == 0 {
            return Err(Close::ClientClosed);
        }
        let mut seen = taken.clone();
        seen.extend_from_slice(&scratch[..n]);
        match parse(&seen) {
            Ok(Some((args, used))) => {
                let rest = used - taken.len();
                client
                    .read_exact(&mut scratch[..rest])
                    .await
                    .map_err(|_| Close::ClientClosed)?;
                if args.is_empty() {
                    taken.clear(); // an empty inline line: nothing to answer
                    continue;
                }
                return Ok(args);
            }
            Ok(None) if seen.len() < LIMIT => {
                // All of it belongs to this command: take it, so the socket's readiness clears.
                client
                    .read_exact(&mut scratch[..n])
                    .await
                    .map_err(|_| Close::ClientClosed)?;
                taken = seen;
            }
            Ok(None) => {
                let _ = client
                    .send(b"-ERR Protocol error: unauthenticated request too large\r\n")
                    .await;
                return Err(Close::ProtocolError);
            }
            Err(e) => {
                let _ = client
                    .send(format!("-ERR Protocol error: {e}\r\n").as_bytes())
                    .await;
                return Err(Close::ProtocolError);
            }
        }
    }
}

/// A command's arguments, and how many bytes it took.
pub(super) type Parsed = (Vec<Vec<u8>>, usize);

/// One command from the front of `buf`: its arguments and its length, `None` if incomplete.
pub(super) fn parse(buf: &[u8]) -> Result<Option<Parsed>, String> {
    if buf.first() != Some(&b'*') {
        // Inline, as typed into telnet: space-separated words up to the end of the line.
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[..nl]);
        let args = line
            .split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect();
        return Ok(Some((args, nl + 1)));
    }
    match decode(buf) {
        Ok(None) => Ok(None),
        Ok(Some((OwnedFrame::Array(items), used))) => {
            let args = items
                .into_iter()
                .map(|f| match f {
                    OwnedFrame::BulkString(b) => Ok(b),
                    _ => Err("expected '$', got something else".to_string()),
                })
                .collect::<Result<_, _>>()?;
            Ok(Some((args, used)))
        }
        Ok(Some(_)) => Err("expected a multibulk request".into()),
        Err(e) => Err(e.details().to_string()),
    }
}

fn classify(args: &[Vec<u8>]) -> Ask {
    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let Some(spec) = command::lookup_any_case(args[0]) else {
        return Ask::Refuse(NOAUTH);
    };
    match spec.name {
        b"AUTH" => match command::auth_args(&args) {
            Ok((user, password)) => Ask::Login {
                user: user.to_vec(),
                password: password.to_vec(),
                then: Vec::new(),
            },
            Err(e) => Ask::Wrong(e.into()),
        },
        b"HELLO" => hello(&args),
        b"QUIT" => Ask::Quit,
        _ => Ask::Refuse(NOAUTH),
    }
}

/// `HELLO [protover [AUTH user password] [SETNAME name]]` (`command::hello`): with AUTH, a
/// login that then sends the HELLO without it.
fn hello(args: &[&[u8]]) -> Ask {
    let h = match command::hello(args) {
        Ok(h) => h,
        Err(e) => return Ask::Wrong(e.into()),
    };
    let Some((user, password)) = h.login else {
        return Ask::Refuse(HELLO_NOAUTH);
    };
    let mut then = Vec::new();
    encode_command(&mut then, &h.rest);
    Ask::Login {
        user: user.to_vec(),
        password: password.to_vec(),
        then,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn commands_are_taken_whole_and_only_whole() {
        let two = b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = parse(two).unwrap().unwrap();
        assert_eq!((args, used), (words("AUTH pw"), 22));
        assert_eq!(parse(&two[..20]).unwrap(), None);
        assert_eq!(
            parse(b"auth pw\r\nPING").unwrap(),
            Some((words("auth pw"), 9))
        );
        assert_eq!(parse(b"auth pw").unwrap(), None);
        assert!(parse(b"*1\r\n:1\r\n").is_err());
    }

    #[test]
    fn each_command_gets_redis_answer_before_auth() {
        let login = |u: &str, p: &str, then: &[u8]| Ask::Login {
            user: u.into(),
            password: p.into(),
            then: then.to_vec(),
        };
        assert_eq!(classify(&words("auth pw")), login("default", "pw", b""));
        assert_eq!(classify(&words("AUTH app pw")), login("app", "pw", b""));
        assert!(matches!(classify(&words("AUTH a b c")), Ask::Wrong(_)));
        assert_eq!(classify(&words("GET k")), Ask::Refuse(NOAUTH));
        assert_eq!(classify(&words("HELLO 3")), Ask::Refuse(HELLO_NOAUTH));
        assert_eq!(classify(&words("quit")), Ask::Quit);
        let mut then = Vec::new();
        encode_command(&mut then, &[b"HELLO", b"3", b"SETNAME", b"me"]);
        assert_eq!(
            classify(&words("HELLO 3 AUTH app pw SETNAME me")),
            login("app", "pw", &then)
        );
        assert!(matches!(
            classify(&words("HELLO 3 AUTH app")),
            Ask::Wrong(_)
        ));
    }
}
