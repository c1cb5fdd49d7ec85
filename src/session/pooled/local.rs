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
}
