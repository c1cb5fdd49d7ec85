//! A fake Sentinel, only for what real ones cannot be made to do: name a replica as master,
//! answer garbage, hang, or not know the master name. It listens on 127.0.0.1:0.

use std::net::SocketAddr;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::HostPort;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers `get-master-addr-by-name` with this address (whatever node that is).
    NamesMaster(HostPort),
    /// Answers every command with bytes that are not RESP.
    Garbage,
    /// Accepts connections and never answers.
    Hang,
    /// Answers every command with a reply of 8 MiB, twice the proxy's limit for one.
    Oversized,
    /// Does not know any master name (nil reply, `-ERR No such master` for the rest).
    UnknownName,
}

pub struct FakeSentinel {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSentinel {
    pub async fn start(behaviour: Behaviour) -> FakeSentinel {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, behaviour.clone()));
            }
        });
        FakeSentinel { addr, task }
    }

    pub fn host_port(&self) -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }
    }
}

impl Drop for FakeSentinel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(f: &OwnedFrame) -> String {
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8_lossy(b).to_lowercase()
        }
        _ => String::new(),
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let Some(frame) = super::next_frame(&mut stream, &mut buf).await else {
            return;
        };
        let OwnedFrame::Array(args) = frame else {
            return;
        };
        let args: Vec<String> = args.iter().map(text).collect();
        let reply: Vec<u8> = match (&behaviour, args.first().map(String::as_str)) {
            (Behaviour::Hang, _) => {
                std::future::pending::<()>().await;
                return;
            }
            (Behaviour::Garbage, _) => b"this is not RESP at all\r\n\x00\xff".to_vec(),
            (Behaviour::Oversized, _) => {
                let mut big = format!("${}\r\n", 8 << 20).into_bytes();
                big.resize(big.len() + (8 << 20), b'x');
                big.extend_from_slice(b"\r\n");
                big
            }
            (_, Some("ping")) => b"+PONG\r\n".to_vec(),
            (_, Some("psubscribe")) => b"*3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:1\r\n".to_vec(),
            (Behaviour::NamesMaster(m), Some("sentinel"))
                if args.get(1).map(String::as_str) == Some("get-master-addr-by-name") =>
            {
                let port = m.port.to_string();
                format!(
                    "*2\r\n${}\r\n{}\r\n${}\r\n{}\r\n",
                    m.host.len(),
                    m.host,
                    port.len(),
                    port
                )
                .into_bytes()
            }
            (Behaviour::NamesMaster(_), Some("sentinel")) => b"*0\r\n".to_vec(),
            (Behaviour::UnknownName, Some("sentinel"))
                if args.get(1).map(String::as_str) == Some("get-master-addr-by-name") =>
            {
                b"*-1\r\n".to_vec()
            }
            _ => b"-ERR No such master with that name\r\n".to_vec(),
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}
