//! A fake Redis master, only for what a real one cannot be made to do: answer a client with
//! bytes that are not RESP. It says `master` to `ROLE` (so the proxy routes to it), `+PONG` to
//! `PING`, the bytes of `NOT_RESP` to `GARBAGE`, and `+OK` to anything else. 127.0.0.1:0.

use std::net::SocketAddr;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub const NOT_RESP: &[u8] = b"%%% not RESP at all %%%\r\n";

pub struct FakeMaster {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMaster {
    pub async fn start() -> FakeMaster {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        FakeMaster { addr, task }
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let Some(frame) = super::next_frame(&mut stream, &mut buf).await else {
            return;
        };
        let name = match &frame {
            OwnedFrame::Array(args) => match args.first() {
                Some(OwnedFrame::BulkString(b)) => String::from_utf8_lossy(b).to_uppercase(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        let reply: &[u8] = match name.as_str() {
            "ROLE" => b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n",
            "PING" => b"+PONG\r\n",
            "GARBAGE" => NOT_RESP,
            _ => b"+OK\r\n",
        };
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}
