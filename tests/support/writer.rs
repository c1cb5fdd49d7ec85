//! The acknowledged-write checker: a writer that SETs `prefix:i = i` at a fixed rate through a
//! proxy and records every write that got `+OK`, its errors and its slowest write, so a test can
//! check afterwards that every acknowledged write is on the final master.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::Auth;
use sentinel_proxy::sentinel::client::{ClientError, RespConn};

use super::{cmd, hp};

fn ok() -> OwnedFrame {
    OwnedFrame::SimpleString(b"OK".to_vec())
}

/// A client patient enough to wait out a failover (the proxy holds it, up to connect-wait).
pub async fn patient(port: u16) -> Result<RespConn, ClientError> {
    RespConn::connect(&hp(port), &Auth::default(), Duration::from_secs(20)).await
}

#[derive(Default)]
pub struct Ledger {
    pub acked: HashMap<String, String>,
    pub errors: u64,
    pub attempts: u64,
    pub error_texts: Vec<String>,
    /// When each failed write was started.
    pub error_times: Vec<Instant>,
    pub slowest: Duration,
}

/// Writes `prefix:i = i` at ~`per_sec`, recording every write that got +OK.
pub fn writer(
    port: u16,
    prefix: &'static str,
    per_sec: u64,
    long_lived: bool,
    ledger: Arc<Mutex<Ledger>>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_micros(1_000_000 / per_sec);
        let mut conn: Option<RespConn> = None;
        let mut i = 0u64;
        let mut next = tokio::time::Instant::now();
        let t0 = Instant::now();
        while !stop.is_cancelled() {
            i += 1;
            let key = format!("{prefix}:{i}");
            let val = i.to_string();
            if conn.is_none() {
                conn = patient(port).await.ok();
            }
            let began = Instant::now();
            let result = match conn.as_mut() {
                Some(c) => cmd(c, &["SET", &key, &val]).await,
                None => Err(ClientError::Closed),
            };
            {
                let mut l = ledger.lock().unwrap();
                l.attempts += 1;
                l.slowest = l.slowest.max(began.elapsed());
                match result {
                    Ok(r) if r == ok() => {
                        l.acked.insert(key, val);
                    }
                    other => {
                        l.errors += 1;
                        l.error_times.push(began);
                        if l.error_texts.len() < 10 {
                            l.error_texts
                                .push(format!("{:.1}s {other:?}", t0.elapsed().as_secs_f64()));
                        }
                        conn = None;
                    }
                }
            }
            if !long_lived {
                conn = None;
            }
            next += every;
            tokio::time::sleep_until(next).await;
        }
    })
}
