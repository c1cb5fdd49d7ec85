//! What pooled mode answers itself: `CLIENT SETNAME` and `CLIENT GETNAME`, from the client's own
//! name. A shared connection carries no name of any client (Redis's `CLIENT LIST` shows the
//! pool's `sentinel-proxy-pool`); a connection lent to a named client for a span, or pinned to
//! it, is given the client's name while it is the client's (`session/mod.rs`). The answers are
//! Redis 7's, word for word. Pure: no I/O.

/// The answer to the whole command `args` (CLIENT SETNAME or GETNAME, any case), with the
/// client's name updated as Redis would.
pub(super) fn answer(args: &[Vec<u8>], name: &mut Option<Vec<u8>>, resp3: bool) -> Vec<u8> {
    let sub = args
        .get(1)
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    match (sub.as_slice(), args.len()) {
        (b"SETNAME", 3) => {
            let new = &args[2];
            if new.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
                    .to_vec();
            }
            *name = (!new.is_empty()).then(|| new.clone());
            b"+OK\r\n".to_vec()
        }
        (b"GETNAME", 2) => match name {
            Some(n) => {
                let mut out = format!("${}\r\n", n.len()).into_bytes();
                out.extend_from_slice(n);
                out.extend_from_slice(b"\r\n");
                out
            }
            None if resp3 => b"_\r\n".to_vec(),
            None => b"$-1\r\n".to_vec(),
        },
        (b"SETNAME" | b"GETNAME", _) => format!(
            "-ERR wrong number of arguments for 'client|{}' command\r\n",
            String::from_utf8_lossy(&sub).to_ascii_lowercase()
        )
        .into_bytes(),
        // Not one of ours: the framer stops only at these two.
        _ => b"-ERR syntax error\r\n".to_vec(),
    }
}

/// `CLIENT SETNAME name`, as the proxy sends it on a connection lent or pinned to a named client.
pub(crate) fn setname(name: &[u8]) -> Vec<u8> {
    let mut out =
        format!("*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n${}\r\n", name.len()).into_bytes();
    out.extend_from_slice(name);
    out.extend_from_slice(b"\r\n");
    out
}

/// `HELLO … SETNAME name` at the front of `first` (Lettuce, go-redis and node-redis name their
/// connections this way): the request without its `SETNAME` (the name goes onto the lent
/// connection before it, and the connection stays one a pool can take back), the name, and the
/// HELLO as sent (the name is kept only if Redis accepted it). `None` for anything else, a name Redis would
/// refuse, or options it would: those go to Redis as they are.
pub(crate) fn hello_setname(first: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let (args, used) = crate::session::gate::parse(first).ok()??;
    if !args.first()?.eq_ignore_ascii_case(b"HELLO") || args.len() < 2 {
        return None;
    }
    let mut kept: Vec<&[u8]> = vec![&args[0], &args[1]];
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            kept.extend([&args[i][..], &args[i + 1], &args[i + 2]]);
            i += 3;
        } else if args[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() && name.is_none() {
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return None;
        }
    }
    let name = name?;
    if name.is_empty() || name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return None;
    }
    let mut hello = Vec::new();
    crate::resp::encode_command(&mut hello, &kept);
    let mut request = hello.clone();
    request.extend_from_slice(&first[used..]);
    Some((request, name, hello))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn names_are_set_read_and_refused_as_redis_does() {
        let mut name = None;
        assert_eq!(
            answer(&args("client getname"), &mut name, false),
            b"$-1\r\n"
        );
        assert_eq!(answer(&args("CLIENT GETNAME"), &mut name, true), b"_\r\n");
        assert_eq!(
            answer(&args("Client SetName w1"), &mut name, false),
            b"+OK\r\n"
        );
        assert_eq!(
            answer(&args("CLIENT GETNAME"), &mut name, false),
            b"$2\r\nw1\r\n"
        );
        let spaced = vec![b"CLIENT".to_vec(), b"SETNAME".to_vec(), b"a b".to_vec()];
        assert_eq!(
            answer(&spaced, &mut name, false),
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        );
        let high = vec![b"CLIENT".to_vec(), b"SETNAME".to_vec(), vec![b'a', 0xc3]];
        assert!(answer(&high, &mut name, false).starts_with(b"-ERR Client names"));
        assert_eq!(
            name.as_deref(),
            Some(&b"w1"[..]),
            "a refused name changes nothing"
        );
        assert_eq!(
            answer(&args("CLIENT SETNAME"), &mut name, false),
            b"-ERR wrong number of arguments for 'client|setname' command\r\n"
        );
        assert_eq!(
            answer(&args("CLIENT GETNAME x"), &mut name, false),
            b"-ERR wrong number of arguments for 'client|getname' command\r\n"
        );
        // An empty name removes it.
        let empty = vec![b"CLIENT".to_vec(), b"SETNAME".to_vec(), Vec::new()];
        assert_eq!(answer(&empty, &mut name, false), b"+OK\r\n");
        assert_eq!(name, None);
        assert_eq!(
            setname(b"w1"),
            b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$2\r\nw1\r\n"
        );
    }

    fn encode(s: &str) -> Vec<u8> {
        let args: Vec<&[u8]> = s.split(' ').map(str::as_bytes).collect();
        let mut out = Vec::new();
        crate::resp::encode_command(&mut out, &args);
        out
    }

    #[test]
    fn hello_setname_is_taken_out_of_hello() {
        let first = [
            encode("hello 3 AUTH default pw SetName app-1"),
            encode("PING"),
        ]
        .concat();
        let (request, name, hello) = hello_setname(&first).unwrap();
        assert_eq!(hello, encode("hello 3 AUTH default pw"));
        assert_eq!(request, [hello.clone(), encode("PING")].concat());
        assert_eq!(name, b"app-1");
        let (_, name, hello) = hello_setname(&encode("HELLO 3 SETNAME n")).unwrap();
        assert_eq!((name, hello), (b"n".to_vec(), encode("HELLO 3")));
        // A user named SETNAME is a user.
        let (_, name, hello) = hello_setname(&encode("HELLO 3 AUTH SETNAME pw SETNAME n")).unwrap();
        assert_eq!(
            (name, hello),
            (b"n".to_vec(), encode("HELLO 3 AUTH SETNAME pw"))
        );
        for as_is in [
            "HELLO 3",
            "HELLO 3 AUTH u p",
            "HELLO",
            "HELLO 3 SETNAME",
            "HELLO 3 SETNAME a SETNAME b",
            "HELLO 3 SETNAME n BOGUS",
            "PING",
        ] {
            assert_eq!(hello_setname(&encode(as_is)), None, "{as_is}");
        }
        let spaced =
            [&b"*4\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$7\r\nSETNAME\r\n$3\r\na b\r\n"[..]].concat();
        assert_eq!(hello_setname(&spaced), None, "a name Redis refuses");
        assert_eq!(
            hello_setname(&encode("HELLO 3 SETNAME n")[..10]),
            None,
            "incomplete"
        );
    }
}
