//! Criterion benchmarks of the pure hot functions: RESP request and reply boundary tracking over
//! realistic streams (what every forwarded read pays), in bytes per second.
//!
//!     cargo bench --bench resp

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sentinel_proxy::resp::{ReplyTracker, RequestTracker};
use std::hint::black_box;

/// `n` pipelined `SET key:<i> <value>` requests, as redis-benchmark sends them.
fn set_requests(n: usize, value_len: usize) -> Vec<u8> {
    let value = "x".repeat(value_len);
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{i:012}");
        out.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    out
}

/// A mix of replies: +OK, bulk strings, integers, nil, and small arrays.
fn mixed_replies(n: usize, value_len: usize) -> Vec<u8> {
    let value = "v".repeat(value_len);
    let mut out = Vec::new();
    for i in 0..n {
        match i % 5 {
            0 => out.extend_from_slice(b"+OK\r\n"),
            1 => out.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes()),
            2 => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            3 => out.extend_from_slice(b"$-1\r\n"),
            _ => out.extend_from_slice(b"*2\r\n$1\r\na\r\n:7\r\n"),
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("resp");
    for (name, value_len) in [("3B", 3), ("1KiB", 1024)] {
        let reqs = set_requests(1000, value_len);
        g.throughput(Throughput::Bytes(reqs.len() as u64));
        g.bench_function(format!("requests/SET {name} x1000 in 16KiB reads"), |b| {
            b.iter(|| {
                let mut t = RequestTracker::new(512 << 20);
                for chunk in reqs.chunks(16 * 1024) {
                    t.feed(black_box(chunk)).unwrap();
                }
                black_box(t.expected_replies)
            })
        });
        let reps = mixed_replies(1000, value_len);
        g.throughput(Throughput::Bytes(reps.len() as u64));
        g.bench_function(format!("replies/mixed {name} x1000 in 16KiB reads"), |b| {
            b.iter(|| {
                let mut t = ReplyTracker::new();
                for chunk in reps.chunks(16 * 1024) {
                    t.feed(black_box(chunk)).unwrap();
                }
                black_box(t.replies)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
