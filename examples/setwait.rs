//! A client that makes its own writes durable: `SET` then `WAIT 1 0` for each, as an application
//! does without `ack = replicas:N` (`benches/compare.sh` runs it with ACK=1, next to the
//! proxy's own acknowledgements). `-c` clients, each with `-P` such pairs in flight, like
//! redis-benchmark's; `--plain`: SET alone, for the same tool's baseline.
//!
//!     cargo run --release --example setwait -- PORT [-c 50] [-P 1] [-n 100000] [--plain]
//!
//! Prints one CSV line as redis-benchmark does: `"SET","rps",,,"p50 ms",,"p99 ms"` (the same
//! columns `compare.sh` reads).

use std::time::{Duration, Instant};

use sentinel_proxy::resp::ReplyTracker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args.first().and_then(|p| p.parse().ok()).expect("PORT");
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let (clients, depth, total) = (opt("-c", 50), opt("-P", 1), opt("-n", 100_000));
    let plain = args.iter().any(|a| a == "--plain");
    let per_client = total.div_ceil(clients);
    let began = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(port, c, depth, per_client, plain)))
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.expect("a client task"));
    }
    let secs = began.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "\"SET\",\"{:.2}\",\"\",\"\",\"{:.3}\",\"\",\"{:.3}\"",
        (per_client * clients) as f64 / secs,
        at(0.5),
        at(0.99)
    );
}

/// One connection's writes; the time each batch of `depth` took, once per write in it.
async fn client(port: u16, id: usize, depth: usize, n: usize, plain: bool) -> Vec<Duration> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let wait = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n";
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut latencies = Vec::with_capacity(n);
    let mut done = 0;
    while done < n {
        let batch = depth.min(n - done);
        out.clear();
        for i in 0..batch {
            let key = format!("setwait:{id}:{}", done + i);
            out.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$3\r\nxxx\r\n",
                    key.len()
                )
                .as_bytes(),
            );
            if !plain {
                out.extend_from_slice(wait);
            }
        }
        let expect = (batch * if plain { 1 } else { 2 }) as u64;
        let t = Instant::now();
        s.write_all(&out).await.expect("write");
        let mut rep = ReplyTracker::new();
        while rep.replies < expect {
            let k = s.read(&mut buf).await.expect("read");
            assert!(k > 0, "closed");
            assert!(buf[0] != b'-', "{}", String::from_utf8_lossy(&buf[..k]));
            rep.feed(&buf[..k]).expect("RESP");
        }
        latencies.extend(std::iter::repeat_n(t.elapsed(), batch));
        done += batch;
    }
    latencies
}
