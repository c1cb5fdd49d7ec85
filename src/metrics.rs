//! The Prometheus registry and typed handles to every metric, registered once at start-up.
//!
//! Handles are plain atomics behind `Arc`s, so the data path only ever does an atomic add. Names
//! follow the exposition conventions: counters end in `_total`, durations are `_seconds`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub backend_connect_failures_total: IntCounter,
    pub no_master_rejections_total: IntCounter,
    pub sessions_closed_total: IntCounterVec,
    pub master_switches_total: IntCounter,
    pub master_info: IntGaugeVec,
    pub master_available: IntGauge,
    pub route_generation: IntGauge,
    pub switch_latency_seconds: Histogram,
    pub sentinel_events_total: IntCounterVec,
    pub sentinel_up: IntGaugeVec,
    pub role_checks_total: IntCounterVec,
    pub held_requests_total: IntCounterVec,
    pub hold_seconds: Histogram,
    pub migrations_total: IntCounterVec,
    pub moves_total: IntCounterVec,
    pub pipe_sessions_total: IntCounterVec,
    pub pinned_sessions_total: IntCounterVec,
    pub pool_connections: IntGauge,
    pub not_master_replies_total: IntCounter,
    pub protocol_errors_total: IntCounter,
    pub failover_pauses_total: IntCounterVec,
    pub max_clients_rejections_total: IntCounter,
    pub config_reloads_total: IntCounterVec,
    pub client_bytes_received_total: IntCounter,
    pub client_bytes_sent_total: IntCounter,
    pub backend_connect_seconds: Histogram,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique constants");
            m
        }
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Metrics {
            client_connections: gauge(
                "sentinel_proxy_client_connections",
                "Client connections currently open.",
            ),
            client_connections_total: counter(
                "sentinel_proxy_client_connections_total",
                "Client connections accepted.",
            ),
            backend_connect_failures_total: counter(
                "sentinel_proxy_backend_connect_failures_total",
                "Failed connects to the master on behalf of a client.",
            ),
            no_master_rejections_total: counter(
                "sentinel_proxy_no_master_rejections_total",
                "Clients answered with an error because no verified master appeared within connect-wait.",
            ),
            sessions_closed_total: counter_vec(
                "sentinel_proxy_sessions_closed_total",
                "Client sessions ended, by reason.",
                &["reason"],
            ),
            master_switches_total: counter(
                "sentinel_proxy_master_switches_total",
                "Times the route moved to a different verified master.",
            ),
            master_info: gauge_vec(
                "sentinel_proxy_master_info",
                "The master clients are routed to (value 1), by address.",
                &["address"],
            ),
            master_available: gauge(
                "sentinel_proxy_master_available",
                "1 while a verified master is known and answering, else 0.",
            ),
            route_generation: gauge(
                "sentinel_proxy_route_generation",
                "Generation of the route; it changes with every master change.",
            ),
            switch_latency_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sentinel_proxy_switch_latency_seconds",
                        "Time from a Sentinel event naming a new master to the route swap.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("valid metric"),
            ),
            sentinel_events_total: counter_vec(
                "sentinel_proxy_sentinel_events_total",
                "Events received from Sentinel subscriptions, by channel.",
                &["event"],
            ),
            sentinel_up: gauge_vec(
                "sentinel_proxy_sentinel_up",
                "1 if the last query or subscription to this sentinel succeeded, else 0.",
                &["sentinel"],
            ),
            role_checks_total: counter_vec(
                "sentinel_proxy_role_checks_total",
                "ROLE checks of candidate masters, by result (master, not_master, error).",
                &["result"],
            ),
            held_requests_total: counter_vec(
                "sentinel_proxy_held_requests_total",
                "Requests held during a failover pause or switch, by where they went (new_master, same_master, dropped).",
                &["outcome"],
            ),
            hold_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sentinel_proxy_hold_seconds",
                        "How long a session held client requests during a failover.",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            migrations_total: counter_vec(
                "sentinel_proxy_session_migrations_total",
                "Client sessions moved to a new master at a request boundary, by result (ok, failed).",
                &["result"],
            ),
            moves_total: counter_vec(
                "sentinel_proxy_session_moves_total",
                "Client sessions moved to a new master, by what they carried there (plain, pubsub, blocking, transaction, tracking, monitor).",
                &["kind"],
            ),
            pipe_sessions_total: counter_vec(
                "sentinel_proxy_pipe_sessions_total",
                "Client sessions that stopped tracking RESP and became byte pipes, by reason (replication: SYNC/PSYNC; untracked_reply: a reply the tracker could not follow).",
                &["reason"],
            ),
            pinned_sessions_total: counter_vec(
                "sentinel_proxy_pinned_sessions_total",
                "Pooled mode: clients given a master connection of their own, by the kind of command that needed it (transaction, pubsub, monitor, blocking, script, select, auth, client, read_mode, replication, reset, inline, unknown, large).",
                &["reason"],
            ),
            pool_connections: gauge(
                "sentinel_proxy_pool_connections",
                "Pooled mode: open master connections shared by clients (all worker threads).",
            ),
            not_master_replies_total: counter(
                "sentinel_proxy_not_master_replies_total",
                "-READONLY or -MASTERDOWN replies seen from the routed master (each triggers a re-check).",
            ),
            protocol_errors_total: counter(
                "sentinel_proxy_client_protocol_errors_total",
                "Clients closed for sending malformed RESP or oversized requests.",
            ),
            failover_pauses_total: counter_vec(
                "sentinel_proxy_failover_pauses_total",
                "Failover pauses (fences), by how they ended (switched, aborted, timed_out).",
                &["outcome"],
            ),
            max_clients_rejections_total: counter(
                "sentinel_proxy_max_clients_rejections_total",
                "Clients refused because --max-clients connections were open.",
            ),
            config_reloads_total: counter_vec(
                "sentinel_proxy_config_reloads_total",
                "Configuration reloads (SIGHUP), by result (ok, rejected).",
                &["result"],
            ),
            client_bytes_received_total: counter(
                "sentinel_proxy_client_received_bytes_total",
                "Bytes read from clients (requests).",
            ),
            client_bytes_sent_total: counter(
                "sentinel_proxy_client_sent_bytes_total",
                "Bytes of replies relayed to clients.",
            ),
            backend_connect_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sentinel_proxy_backend_connect_seconds",
                        "Time to connect to the master on behalf of a client.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            build_info: gauge_vec(
                "sentinel_proxy_build_info",
                "Always 1; the version of the running proxy in a label.",
                &["version"],
            ),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::new();
        m.sessions_closed_total
            .with_label_values(&["client_closed"])
            .inc();
        m.master_info.with_label_values(&["127.0.0.1:6379"]).set(1);
        m.sentinel_events_total
            .with_label_values(&["+switch-master"])
            .inc();
        m.sentinel_up.with_label_values(&["127.0.0.1:26379"]).set(1);
        m.role_checks_total.with_label_values(&["master"]).inc();
        let text = m.encode();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("sentinel_proxy_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
        assert!(text.contains("sentinel_proxy_master_info{address=\"127.0.0.1:6379\"} 1"));
    }
}
