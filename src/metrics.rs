//! The Prometheus registry and typed handles to every metric, registered once at start-up.
//!
//! Handles are plain atomics behind `Arc`s, so the data path only ever does an atomic add. Names
//! follow the exposition conventions: counters end in `_total`, durations are `_seconds`.
//!
//! Every series about a master group carries a `group` label: [`Metrics`] holds the registry and
//! the labelled families, and [`Metrics::group`] hands a group its [`GroupMetrics`], the same
//! handles with the label already applied (a scalar family becomes a plain counter or gauge; a
//! family with more labels becomes a [`Labeled`] that adds the group in front). The sentinels'
//! health and events, reloads and the build are the process's, without the label.

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry and every metric family.
pub struct Metrics {
    registry: Registry,
    client_connections: IntGaugeVec,
    client_connections_total: IntCounterVec,
    backend_connect_failures_total: IntCounterVec,
    no_master_rejections_total: IntCounterVec,
    sessions_closed_total: IntCounterVec,
    master_switches_total: IntCounterVec,
    master_info: IntGaugeVec,
    master_available: IntGaugeVec,
    route_generation: IntGaugeVec,
    switch_latency_seconds: HistogramVec,
    role_checks_total: IntCounterVec,
    held_requests_total: IntCounterVec,
    hold_seconds: HistogramVec,
    migrations_total: IntCounterVec,
    moves_total: IntCounterVec,
    pipe_sessions_total: IntCounterVec,
    pinned_sessions_total: IntCounterVec,
    borrowed_connections: IntGaugeVec,
    borrow_seconds: HistogramVec,
    pool_connections: IntGaugeVec,
    replication_lag_bytes: IntGaugeVec,
    replication_ack_age_seconds: IntGaugeVec,
    replicas_online: IntGaugeVec,
    not_master_replies_total: IntCounterVec,
    ack_waits_total: IntCounterVec,
    ack_refused_total: IntCounterVec,
    ack_wait_seconds: HistogramVec,
    requests_sent_again_total: IntCounterVec,
    sessions_resumed_total: IntCounterVec,
    protocol_errors_total: IntCounterVec,
    failover_pauses_total: IntCounterVec,
    max_clients_rejections_total: IntCounterVec,
    tls_handshake_failures_total: IntCounterVec,
    auth_failures_total: IntCounterVec,
    client_bytes_received_total: IntCounterVec,
    client_bytes_sent_total: IntCounterVec,
    backend_connect_seconds: HistogramVec,
    pub sentinel_events_total: IntCounterVec,
    pub sentinel_up: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub operator_actions_total: IntCounterVec,
    pub tls_reloads_total: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub build_info: IntGaugeVec,
}

/// One group's handles: the families of [`Metrics`] with its `group` label applied.
pub struct GroupMetrics {
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub backend_connect_failures_total: IntCounter,
    pub no_master_rejections_total: IntCounter,
    pub sessions_closed_total: Labeled<IntCounterVec>,
    pub master_switches_total: IntCounter,
    pub master_info: Labeled<IntGaugeVec>,
    pub master_available: IntGauge,
    pub route_generation: IntGauge,
    pub switch_latency_seconds: Histogram,
    pub role_checks_total: Labeled<IntCounterVec>,
    pub held_requests_total: Labeled<IntCounterVec>,
    pub hold_seconds: Histogram,
    pub migrations_total: Labeled<IntCounterVec>,
    pub moves_total: Labeled<IntCounterVec>,
    pub pipe_sessions_total: Labeled<IntCounterVec>,
    pub pinned_sessions_total: Labeled<IntCounterVec>,
    pub borrowed_connections: IntGauge,
    pub borrow_seconds: Labeled<HistogramVec>,
    pub pool_connections: IntGauge,
    /// The master's replication, as `lag.rs` last read it.
    pub replication_lag_bytes: IntGauge,
    pub replication_ack_age_seconds: IntGauge,
    pub replicas_online: IntGauge,
    pub not_master_replies_total: IntCounter,
    /// Durable acknowledgements (`session/ack.rs`).
    pub ack_waits_total: IntCounter,
    pub ack_refused_total: IntCounter,
    pub ack_wait_seconds: Histogram,
    pub requests_sent_again_total: IntCounter,
    /// Sessions a predecessor handed over on a live upgrade, served here (`session/handover.rs`).
    pub sessions_resumed_total: IntCounter,
    pub protocol_errors_total: IntCounter,
    pub failover_pauses_total: Labeled<IntCounterVec>,
    pub max_clients_rejections_total: IntCounter,
    pub tls_handshake_failures_total: IntCounter,
    pub auth_failures_total: IntCounter,
    pub client_bytes_received_total: IntCounter,
    pub client_bytes_sent_total: IntCounter,
    pub backend_connect_seconds: Histogram,
}

/// A family with labels besides `group`, for one group: `with_label_values(&["quit"])` is the
/// family's `with_label_values(&[group, "quit"])`.
pub struct Labeled<V> {
    vec: V,
    group: String,
}

impl<T: MetricVecBuilder> Labeled<MetricVec<T>> {
    pub fn with_label_values(&self, values: &[&str]) -> T::M {
        match values {
            [v] => self.vec.with_label_values(&[self.group.as_str(), v]),
            _ => {
                let mut all = vec![self.group.as_str()];
                all.extend_from_slice(values);
                self.vec.with_label_values(&all)
            }
        }
    }

    pub fn remove_label_values(&self, values: &[&str]) -> prometheus::Result<()> {
        let mut all = vec![self.group.as_str()];
        all.extend_from_slice(values);
        self.vec.remove_label_values(&all)
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // The process's CPU seconds, resident and virtual memory, open and most descriptors,
        // threads and start time (`process_*`, the names every Prometheus client library uses).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector's names are unique");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique constants");
            m
        }
        // `labels` come after `group`; the process's own families name theirs in full.
        let with_group = |labels: &[&'static str]| {
            let mut all = vec!["group"];
            all.extend_from_slice(labels);
            all
        };
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &["group"]).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &["group"]).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&'static str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &with_group(labels))
                    .expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&'static str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &with_group(labels)).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["group"])
                    .expect("valid metric"),
            )
        };
        let process_counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let process_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
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
            switch_latency_seconds: histogram(
                "sentinel_proxy_switch_latency_seconds",
                "Time from a Sentinel event naming a new master to the route swap.",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            sentinel_events_total: process_counter_vec(
                "sentinel_proxy_sentinel_events_total",
                "Events received from Sentinel subscriptions, by channel.",
                &["event"],
            ),
            sentinel_up: process_gauge_vec(
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
            hold_seconds: histogram(
                "sentinel_proxy_hold_seconds",
                "How long a session held client requests during a failover.",
                vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
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
                "Pooled mode: clients given a master connection of their own, by the kind of command that needed it (transaction, pubsub, monitor, blocking, script, select, auth, client, read_mode, replication, reset, inline, unknown, large, notifications).",
                &["reason"],
            ),
            borrowed_connections: gauge(
                "sentinel_proxy_borrowed_connections",
                "Pooled mode: master connections lent to one client for a span (a transaction, a blocking call, the answer to AUTH, HELLO or SELECT) right now.",
            ),
            borrow_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "sentinel_proxy_borrow_seconds",
                        "Pooled mode: how long a client held a lent master connection, by what it was lent for (transaction, blocking, auth, select, notifications) and how the span ended (returned: the client went back to the pool; closed: the client ended, or made the connection its own).",
                    )
                    .buckets(vec![
                        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                    ]),
                    &["group", "reason", "outcome"],
                )
                .expect("valid metric"),
            ),
            pool_connections: gauge(
                "sentinel_proxy_pool_connections",
                "Pooled mode: open master connections shared by clients (all worker threads).",
            ),
            replication_lag_bytes: gauge(
                "sentinel_proxy_replication_lag_bytes",
                "Bytes of the master's replication stream its most up-to-date online replica has not acknowledged: what a failover now would lose at least (master INFO replication).",
            ),
            replication_ack_age_seconds: gauge(
                "sentinel_proxy_replication_ack_age_seconds",
                "Seconds since that replica last acknowledged (replicas acknowledge every second).",
            ),
            replicas_online: gauge(
                "sentinel_proxy_replicas_online",
                "Replicas the master reports online.",
            ),
            not_master_replies_total: counter(
                "sentinel_proxy_not_master_replies_total",
                "-READONLY or -MASTERDOWN replies seen from the routed master (each triggers a re-check).",
            ),
            ack_waits_total: counter(
                "sentinel_proxy_ack_waits_total",
                "Durable acknowledgements (ack = replicas:N): WAITs the proxy sent after a batch of writes on a shared master connection.",
            ),
            ack_refused_total: counter(
                "sentinel_proxy_ack_refused_total",
                "Durable acknowledgements: writes answered -NOREPLICAS because too few replicas confirmed them in time (the master applied them; a failover may lose them).",
            ),
            ack_wait_seconds: histogram(
                "sentinel_proxy_ack_wait_seconds",
                "Durable acknowledgements: how long the master took to answer each WAIT (replies to the writes before it were held meanwhile).",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                ],
            ),
            requests_sent_again_total: counter(
                "sentinel_proxy_requests_sent_again_total",
                "Requests sent again on a new master connection instead of failing their client: reads in flight when the master went away (pooled and 1:1), and requests a shared connection appended but never sent before a switch.",
            ),
            sessions_resumed_total: counter(
                "sentinel_proxy_sessions_resumed_total",
                "Client connections handed over by the process this one took over from (live upgrade), served on the same socket.",
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
            tls_handshake_failures_total: counter(
                "sentinel_proxy_tls_handshake_failures_total",
                "Client connections closed because their TLS handshake failed or timed out (a client certificate missing or not trusted, a plain-text client, a protocol mismatch).",
            ),
            operator_actions_total: process_counter_vec(
                "sentinel_proxy_operator_actions_total",
                "Operator actions on the admin port (pause, resume, switchover), by group and result (ok, refused, failed).",
                &["group", "action", "result"],
            ),
            tls_reloads_total: process_counter_vec(
                "sentinel_proxy_tls_reloads_total",
                "TLS certificate files found changed on disk, by result (ok: in use for new connections; rejected: they do not load, the old ones stay).",
                &["result"],
            ),
            auth_failures_total: counter(
                "sentinel_proxy_auth_failures_total",
                "AUTH or HELLO AUTH refused by the proxy's own client authentication (--users-file): an unknown user or a wrong password.",
            ),
            config_reloads_total: process_counter_vec(
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
            backend_connect_seconds: histogram(
                "sentinel_proxy_backend_connect_seconds",
                "Time to connect to the master on behalf of a client.",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
                ],
            ),
            tls_certificate_expiry: process_gauge_vec(
                "sentinel_proxy_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the proxy presents expires (its notAfter, Unix seconds), by \
                 side: clients (the client ports' certificate). Absent without TLS.",
                &["side"],
            ),
            build_info: process_gauge_vec(
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

    /// The handles of group `name`.
    pub fn group(&self, name: &str) -> GroupMetrics {
        let one = [name];
        let labeled = |vec: &IntCounterVec| Labeled {
            vec: vec.clone(),
            group: name.to_string(),
        };
        GroupMetrics {
            client_connections: self.client_connections.with_label_values(&one),
            client_connections_total: self.client_connections_total.with_label_values(&one),
            backend_connect_failures_total: self
                .backend_connect_failures_total
                .with_label_values(&one),
            no_master_rejections_total: self.no_master_rejections_total.with_label_values(&one),
            sessions_closed_total: labeled(&self.sessions_closed_total),
            master_switches_total: self.master_switches_total.with_label_values(&one),
            master_info: Labeled {
                vec: self.master_info.clone(),
                group: name.to_string(),
            },
            master_available: self.master_available.with_label_values(&one),
            route_generation: self.route_generation.with_label_values(&one),
            switch_latency_seconds: self.switch_latency_seconds.with_label_values(&one),
            role_checks_total: labeled(&self.role_checks_total),
            held_requests_total: labeled(&self.held_requests_total),
            hold_seconds: self.hold_seconds.with_label_values(&one),
            migrations_total: labeled(&self.migrations_total),
            moves_total: labeled(&self.moves_total),
            pipe_sessions_total: labeled(&self.pipe_sessions_total),
            pinned_sessions_total: labeled(&self.pinned_sessions_total),
            borrowed_connections: self.borrowed_connections.with_label_values(&one),
            borrow_seconds: Labeled {
                vec: self.borrow_seconds.clone(),
                group: name.to_string(),
            },
            pool_connections: self.pool_connections.with_label_values(&one),
            replication_lag_bytes: self.replication_lag_bytes.with_label_values(&one),
            replication_ack_age_seconds: self.replication_ack_age_seconds.with_label_values(&one),
            replicas_online: self.replicas_online.with_label_values(&one),
            not_master_replies_total: self.not_master_replies_total.with_label_values(&one),
            ack_waits_total: self.ack_waits_total.with_label_values(&one),
            ack_refused_total: self.ack_refused_total.with_label_values(&one),
            ack_wait_seconds: self.ack_wait_seconds.with_label_values(&one),
            requests_sent_again_total: self.requests_sent_again_total.with_label_values(&one),
            sessions_resumed_total: self.sessions_resumed_total.with_label_values(&one),
            protocol_errors_total: self.protocol_errors_total.with_label_values(&one),
            failover_pauses_total: labeled(&self.failover_pauses_total),
            max_clients_rejections_total: self.max_clients_rejections_total.with_label_values(&one),
            tls_handshake_failures_total: self.tls_handshake_failures_total.with_label_values(&one),
            auth_failures_total: self.auth_failures_total.with_label_values(&one),
            client_bytes_received_total: self.client_bytes_received_total.with_label_values(&one),
            client_bytes_sent_total: self.client_bytes_sent_total.with_label_values(&one),
            backend_connect_seconds: self.backend_connect_seconds.with_label_values(&one),
        }
    }

    /// A group was removed: its series without other labels go (the ones with more labels,
    /// `…{group,reason}`, keep their last values until a restart).
    pub fn forget_group(&self, name: &str) {
        let one = [name];
        for family in [
            &self.client_connections_total,
            &self.backend_connect_failures_total,
            &self.no_master_rejections_total,
            &self.master_switches_total,
            &self.not_master_replies_total,
            &self.ack_waits_total,
            &self.ack_refused_total,
            &self.requests_sent_again_total,
            &self.sessions_resumed_total,
            &self.protocol_errors_total,
            &self.max_clients_rejections_total,
            &self.tls_handshake_failures_total,
            &self.auth_failures_total,
            &self.client_bytes_received_total,
            &self.client_bytes_sent_total,
        ] {
            let _ = family.remove_label_values(&one);
        }
        for family in [
            &self.client_connections,
            &self.master_available,
            &self.route_generation,
            &self.pool_connections,
            &self.borrowed_connections,
            &self.replication_lag_bytes,
            &self.replication_ack_age_seconds,
            &self.replicas_online,
        ] {
            let _ = family.remove_label_values(&one);
        }
        for family in [
            &self.switch_latency_seconds,
            &self.hold_seconds,
            &self.ack_wait_seconds,
            &self.backend_connect_seconds,
        ] {
            let _ = family.remove_label_values(&one);
        }
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
        let g = m.group("mymaster");
        g.sessions_closed_total
            .with_label_values(&["client_closed"])
            .inc();
        g.master_info.with_label_values(&["127.0.0.1:6379"]).set(1);
        g.client_connections.set(1);
        m.sentinel_events_total
            .with_label_values(&["+switch-master"])
            .inc();
        m.sentinel_up.with_label_values(&["127.0.0.1:26379"]).set(1);
        g.role_checks_total.with_label_values(&["master"]).inc();
        let text = m.encode();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            // Ours, or the process's own families under their standard names.
            assert!(
                name.starts_with("sentinel_proxy_") || name.starts_with("process_"),
                "{line}"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
        assert!(
            text.contains(
                "sentinel_proxy_master_info{address=\"127.0.0.1:6379\",group=\"mymaster\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("sentinel_proxy_client_connections{group=\"mymaster\"} 1"));
        #[cfg(target_os = "linux")]
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{family} ")), "{family}:\n{text}");
        }
    }
}
