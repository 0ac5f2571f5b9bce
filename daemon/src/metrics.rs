//! Prometheus metrics on an opt-in HTTP listener (`[metrics] listen`).
//!
//! Names follow Prometheus conventions with a `palisade_` prefix; labels come
//! only from closed sets (reason, direction, outcome, map), never addresses.
//! Datapath counters are read from the kernel at scrape time.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use palisade_api::PacketCount;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tokio::sync::Mutex;
use tracing::{error, info};

use crate::{
    datapath::TableFill,
    encryption::Encryption,
    engine::{Engine, EngineStats, on_blocking_thread},
};

/// How an apply ended, for `palisade_policy_apply_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApplyLabels {
    outcome: &'static str,
}

/// What the last scrape reads: the engine's stats and the tunnel's state.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The engine's and datapath's figures.
    pub engine: EngineStats,
    /// The WireGuard tunnel, when encryption is on and it could be read.
    pub wireguard: Option<palisade_api::WireGuardStatus>,
    /// The IPsec mesh, when encryption is on and it could be read.
    pub ipsec: Option<palisade_api::IpsecStatus>,
}

#[derive(Debug, Default)]
struct SnapshotCollector {
    snapshot: StdMutex<Snapshot>,
}

/// palisade's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    applies: Family<ApplyLabels, Counter>,
    apply_seconds: Histogram,
    datapath: Arc<SnapshotCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let applies = Family::<ApplyLabels, Counter>::default();
        registry.register(
            "policy_apply",
            "Policy applies by outcome: applied, dry_run, invalid, datapath_error",
            applies.clone(),
        );
        let apply_seconds = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "policy_apply_duration_seconds",
            "Time to parse, compile and install a policy apply",
            apply_seconds.clone(),
        );
        let datapath = Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(Arc::clone(&datapath)));
        Self {
            registry,
            applies,
            apply_seconds,
            datapath,
        }
    }

    /// Counts one apply and its duration.
    pub fn record_apply(&self, outcome: &'static str, duration: Duration) {
        self.applies.get_or_create(&ApplyLabels { outcome }).inc();
        self.apply_seconds.observe(duration.as_secs_f64());
    }

    /// The text exposition with `snapshot` as the datapath's state.
    ///
    /// # Errors
    ///
    /// When encoding fails (it writes to a String, so only on a bug).
    pub fn render(&self, snapshot: Snapshot) -> Result<String, std::fmt::Error> {
        *self
            .datapath
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[([(&str, &str); 2], u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        family
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let stats = &snapshot.engine;
        let directions = [
            ("INGRESS", &stats.counters.ingress),
            ("EGRESS", &stats.counters.egress),
        ];
        let by_reason = |pick: fn(PacketCount) -> u64| {
            let mut rows = Vec::new();
            for (direction, c) in directions {
                for (reason, count) in [
                    ("POLICY_DENIED", c.dropped_policy_denied),
                    ("POLICY_DENY", c.dropped_policy_deny),
                    ("PREFILTER", c.dropped_prefilter),
                    ("INVALID_PACKET", c.dropped_invalid),
                    ("FRAG_NOT_FOUND", c.dropped_fragment),
                    ("UNENCRYPTED_TRAFFIC", c.dropped_unencrypted),
                ] {
                    rows.push(([("reason", reason), ("direction", direction)], pick(count)));
                }
            }
            rows
        };
        let audits = |pick: fn(PacketCount) -> u64| {
            let mut rows = Vec::new();
            for (direction, c) in directions {
                rows.push((
                    [("reason", "POLICY_DENIED"), ("direction", direction)],
                    pick(c.audited_policy_denied),
                ));
                rows.push((
                    [("reason", "POLICY_DENY"), ("direction", direction)],
                    pick(c.audited_policy_deny),
                ));
            }
            rows
        };
        let forwards = |pick: fn(PacketCount) -> u64| {
            let mut rows = Vec::new();
            for (direction, c) in directions {
                rows.push((
                    [("direction", direction), ("match", "policy")],
                    pick(c.forwarded),
                ));
                rows.push((
                    [("direction", direction), ("match", "established")],
                    pick(c.established),
                ));
            }
            rows
        };
        let packets = |count: PacketCount| count.packets;
        let bytes = |count: PacketCount| count.bytes;
        counter(
            &mut encoder,
            "drop_packets",
            "Packets dropped, by drop reason and direction",
            &by_reason(packets),
        )?;
        counter(
            &mut encoder,
            "drop_bytes",
            "Bytes of dropped packets, by drop reason and direction",
            &by_reason(bytes),
        )?;
        counter(
            &mut encoder,
            "audit_packets",
            "Packets forwarded in audit mode that policy would drop, by reason and direction",
            &audits(packets),
        )?;
        counter(
            &mut encoder,
            "forward_packets",
            "Packets forwarded: new connections judged by policy, and packets of tracked connections",
            &forwards(packets),
        )?;
        counter(
            &mut encoder,
            "forward_bytes",
            "Bytes forwarded: new connections judged by policy, and packets of tracked connections",
            &forwards(bytes),
        )?;
        let ct_failed: Vec<_> = directions
            .iter()
            .map(|(direction, c)| {
                (
                    [("direction", *direction), ("table", "conntrack")],
                    c.ct_insert_failed.packets,
                )
            })
            .collect();
        counter(
            &mut encoder,
            "map_insert_failures",
            "New connections a full conntrack table refused",
            &ct_failed,
        )?;
        let suppressed: u64 = directions.iter().map(|(_, c)| c.events_suppressed).sum();
        let mut held = encoder.encode_descriptor(
            "flow_events_suppressed",
            "Flow events held back by the per-CPU rate limit (flows.events_per_second)",
            None,
            MetricType::Counter,
        )?;
        held.encode_counter::<NoLabelSet, _, u64>(&suppressed, None)?;
        let mut rule_packets = encoder.encode_descriptor(
            "rule_packets",
            "New connections each rule in force decided, since it was installed",
            None,
            MetricType::Counter,
        )?;
        for hits in &stats.rule_hits {
            rule_packets
                .encode_family(&[
                    ("policy", hits.policy.as_str()),
                    ("rule", hits.rule.as_str()),
                ])?
                .encode_counter::<NoLabelSet, _, u64>(&hits.count.packets, None)?;
        }
        if let Some(tunnel) = &snapshot.wireguard {
            encode_wireguard(&mut encoder, tunnel)?;
        }
        if let Some(mesh) = &snapshot.ipsec {
            encode_ipsec(&mut encoder, mesh)?;
        }
        let events_lost = stats.counters.events_lost();
        let mut lost = encoder.encode_descriptor(
            "flow_events_lost",
            "Flow events the kernel could not deliver (ring buffer full)",
            None,
            MetricType::Counter,
        )?;
        lost.encode_counter::<NoLabelSet, _, u64>(&events_lost, None)?;
        gauge(
            &mut encoder,
            "policies",
            "Policies in force that select this node",
            i64::try_from(stats.policies).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "policy_rules",
            "Compiled rules in force",
            i64::try_from(stats.rules).unwrap_or(i64::MAX),
        )?;
        for (name, help, pick) in [
            (
                "conntrack_entries",
                "Connections tracked (not expired), by table; counted every few seconds",
                (|fill: &TableFill| fill.entries) as fn(&TableFill) -> usize,
            ),
            (
                "conntrack_capacity",
                "Connections a table holds at most; when full the least recently used entry is evicted",
                |fill: &TableFill| fill.capacity,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for fill in &stats.conntrack {
                family
                    .encode_family(&[("table", fill.table)])?
                    .encode_gauge(&i64::try_from(pick(fill)).unwrap_or(i64::MAX))?;
            }
        }
        gauge(
            &mut encoder,
            "interfaces_unenforced",
            "Configured interfaces nothing is enforced on now (the interface is gone)",
            i64::try_from(stats.interfaces_unenforced).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "policy_generation",
            "Generation of the rule table in force",
            i64::from(stats.generation),
        )?;
        let mut pressure = encoder.encode_descriptor(
            "bpf_map_pressure_ratio",
            "Fill level of each datapath table (entries in use / capacity)",
            None,
            MetricType::Gauge,
        )?;
        for usage in &stats.maps {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a ratio needs no integer precision"
            )]
            let ratio = usage.entries as f64 / usage.capacity.max(1) as f64;
            pressure
                .encode_family(&[("map", usage.map)])?
                .encode_gauge(&ratio)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct MetricsState {
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
    encryption: Option<Arc<Encryption>>,
}

/// The IPsec mesh: transfer per node, the key in use, the kernel's XFRM
/// error counters (as Cilium's `cilium_ipsec_xfrm_error`).
fn encode_ipsec(
    encoder: &mut DescriptorEncoder<'_>,
    mesh: &palisade_api::IpsecStatus,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "ipsec_newest_key",
        "The SPI of the newest IPsec key installed",
        i64::from(mesh.newest_key),
    )?;
    for (name, help, pick) in [
        (
            "ipsec_node_receive_bytes",
            "Bytes decrypted from each node",
            (|node: &palisade_api::IpsecNodeStatus| node.rx_bytes) as fn(&_) -> u64,
        ),
        (
            "ipsec_node_transmit_bytes",
            "Bytes encrypted to each node",
            |node: &palisade_api::IpsecNodeStatus| node.tx_bytes,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for node in &mesh.nodes {
            family
                .encode_family(&[("node", node.name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&pick(node), None)?;
        }
    }
    let mut keys = encoder.encode_descriptor(
        "ipsec_node_outbound_key",
        "The SPI of the key traffic to each node is encrypted with",
        None,
        MetricType::Gauge,
    )?;
    for node in &mesh.nodes {
        keys.encode_family(&[("node", node.name.as_str())])?
            .encode_gauge(&i64::from(node.outbound_key))?;
    }
    let mut errors = encoder.encode_descriptor(
        "ipsec_xfrm_errors",
        "The kernel's XFRM error counters (/proc/net/xfrm_stat), by name",
        None,
        MetricType::Counter,
    )?;
    for (name, value) in &mesh.xfrm_stats {
        errors
            .encode_family(&[("error", name.as_str())])?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

/// The tunnel's peers: transfer and handshake age per node.
fn encode_wireguard(
    encoder: &mut DescriptorEncoder<'_>,
    tunnel: &palisade_api::WireGuardStatus,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "wireguard_peers",
        "Nodes configured as WireGuard peers",
        i64::try_from(tunnel.peers.len()).unwrap_or(i64::MAX),
    )?;
    for (name, help, pick) in [
        (
            "wireguard_peer_receive_bytes",
            "Bytes received through the tunnel from each node",
            (|peer: &palisade_api::WireGuardPeerStatus| peer.rx_bytes) as fn(&_) -> u64,
        ),
        (
            "wireguard_peer_transmit_bytes",
            "Bytes sent through the tunnel to each node",
            |peer: &palisade_api::WireGuardPeerStatus| peer.tx_bytes,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for peer in &tunnel.peers {
            family
                .encode_family(&[("node", peer.name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&pick(peer), None)?;
        }
    }
    let mut ages = encoder.encode_descriptor(
        "wireguard_peer_handshake_age_seconds",
        "Seconds since the latest handshake with each node (absent before the first)",
        None,
        MetricType::Gauge,
    )?;
    for peer in &tunnel.peers {
        if let Some(age) = peer.latest_handshake_seconds_ago {
            ages.encode_family(&[("node", peer.name.as_str())])?
                .encode_gauge(&i64::try_from(age).unwrap_or(i64::MAX))?;
        }
    }
    Ok(())
}

async fn scrape(State(state): State<MetricsState>) -> impl IntoResponse {
    let encryption = match &state.encryption {
        Some(encryption) => {
            let encryption = Arc::clone(encryption);
            tokio::task::spawn_blocking(move || encryption.status().ok())
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let (wireguard, ipsec) =
        encryption.map_or((None, None), |status| (status.wireguard, status.ipsec));
    // A counter per rule, per CPU: many map reads, off the executor.
    let snapshot = match on_blocking_thread(&state.engine, |engine| engine.stats()).await {
        Ok((_, stats)) => stats.map(|engine| Snapshot {
            engine,
            wireguard,
            ipsec,
        }),
        Err(error) => Err(anyhow::anyhow!("reading the engine's stats: {error}")),
    };
    let body = match snapshot {
        Ok(snapshot) => state.metrics.render(snapshot),
        Err(e) => {
            error!("{e:#}");
            Err(std::fmt::Error)
        }
    };
    match body {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Metrics connections served at once; more are closed at once.
const MAX_SCRAPERS: usize = 32;

/// Serves `GET /metrics` on `listen` until the process ends.
///
/// # Errors
///
/// When the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
    encryption: Option<Arc<Encryption>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener {listen}"))?;
    info!(%listen, "serving Prometheus metrics on /metrics");
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(MetricsState {
            engine,
            metrics,
            encryption,
        });
    // Its own connection budget: a flood of scrapers never reaches the
    // control socket's.
    tokio::spawn(crate::serve::tcp(listener, router, MAX_SCRAPERS));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::Counters;

    #[test]
    fn renders_counters_with_reasons_and_total_suffix() {
        let metrics = Metrics::new();
        metrics.record_apply("applied", Duration::from_millis(3));
        let mut counters = Counters::default();
        counters.ingress.dropped_policy_deny.packets = 7;
        let text = metrics
            .render(Snapshot {
                engine: EngineStats {
                    counters,
                    policies: 2,
                    maps: vec![crate::datapath::MapUsage {
                        map: "ingress_prefixes",
                        entries: 16,
                        capacity: 64,
                    }],
                    ..EngineStats::default()
                },
                wireguard: None,
                ipsec: None,
            })
            .unwrap();
        for line in [
            "palisade_drop_packets_total{reason=\"POLICY_DENY\",direction=\"INGRESS\"} 7",
            "palisade_policies 2",
            "palisade_policy_apply_total{outcome=\"applied\"} 1",
            "palisade_bpf_map_pressure_ratio{map=\"ingress_prefixes\"} 0.25",
            "# HELP palisade_policy_apply_duration_seconds Time to parse, compile and install a policy apply.",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
