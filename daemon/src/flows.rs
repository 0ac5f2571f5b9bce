//! Flows: kernel flow events turned into [`Flow`] records, kept in a bounded
//! buffer of recent flows and fanned out to `observe --follow` streams.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, SystemTime},
};

use palisade_api::{
    Flow, FlowEndpoint, FlowFilter, FlowIp, FlowPolicy, Icmp, Interface, IpVersion, Layer4,
    PortPair, TcpFlags, TrafficDirection, Verdict,
};
use palisade_common::{
    FAILSAFE_RULE, FlowEvent, NO_RULE, direction, drop_reason, protocol, verdict,
};
use palisade_policy::compile::RuleOrigin;
use tokio::sync::broadcast;

use crate::{audit_trail::AuditTrail, datapath::FlowSink};

/// Rule origins of this many recent generations are kept, so late events of
/// a replaced table still name their rules.
const GENERATIONS_KEPT: usize = 8;
/// Capacity of the channel to followers; a follower this far behind skips ahead.
const FOLLOW_CHANNEL: usize = 1024;

/// The flow buffer and its subscribers.
pub struct FlowHub {
    node_name: String,
    /// Its own lock: logging must not hold up readers of the buffer.
    trail: Mutex<AuditTrail>,
    /// Wall-clock time of monotonic time zero, to date kernel timestamps.
    boot_time: SystemTime,
    state: Mutex<HubState>,
    /// This node's pods by address, to name them in flows.
    pods: RwLock<HashMap<IpAddr, FlowEndpoint>>,
}

struct HubState {
    recent: VecDeque<Flow>,
    capacity: usize,
    followers: broadcast::Sender<Flow>,
    origins: BTreeMap<u32, Arc<Vec<Option<RuleOrigin>>>>,
}

impl FlowHub {
    /// A hub keeping the last `capacity` flows and logging at most
    /// `log_per_second` drops and audits a second.
    pub fn new(node_name: String, capacity: usize, log_per_second: u32) -> Self {
        let (followers, _) = broadcast::channel(FOLLOW_CHANNEL);
        Self {
            node_name,
            trail: Mutex::new(AuditTrail::new(log_per_second)),
            boot_time: boot_time(),
            state: Mutex::new(HubState {
                recent: VecDeque::with_capacity(capacity.min(65_536)),
                capacity,
                followers,
                origins: BTreeMap::new(),
            }),
            pods: RwLock::new(HashMap::new()),
        }
    }

    /// Names this node's pods by address in the flows from now on.
    pub fn set_pods(&self, pods: HashMap<IpAddr, FlowEndpoint>) {
        *self
            .pods
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pods;
    }

    fn pod(&self, address: IpAddr) -> Option<FlowEndpoint> {
        self.pods
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&address)
            .cloned()
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves the buffer usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers which rules a generation's rule ids refer to (`None`: an
    /// id no rule holds).
    pub fn set_rule_origins(&self, generation: u32, origins: Vec<Option<RuleOrigin>>) {
        let mut state = self.state();
        state.origins.insert(generation, Arc::new(origins));
        while state.origins.len() > GENERATIONS_KEPT {
            state.origins.pop_first();
        }
    }

    /// The last `last` buffered flows that pass `filter` (all when `None`)
    /// and, when `follow`, a receiver of every later flow, with nothing lost
    /// or repeated between.
    pub fn snapshot(
        &self,
        filter: &FlowFilter,
        last: Option<usize>,
        follow: bool,
    ) -> (Vec<Flow>, Option<broadcast::Receiver<Flow>>) {
        let state = self.state();
        let mut flows: Vec<Flow> = state
            .recent
            .iter()
            .rev()
            .filter(|flow| filter.matches(flow))
            .take(last.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        flows.reverse();
        (flows, follow.then(|| state.followers.subscribe()))
    }

    /// Records one kernel event.
    fn record_event(&self, event: &FlowEvent) {
        let origin = {
            let state = self.state();
            state
                .origins
                .get(&event.generation)
                .and_then(|origins| origins.get(event.rule_id as usize).cloned().flatten())
        };
        let flow = self.to_flow(event, origin.as_ref());
        self.trail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(&flow);
        let mut state = self.state();
        if state.recent.len() >= state.capacity {
            state.recent.pop_front();
        }
        if state.capacity > 0 {
            state.recent.push_back(flow.clone());
        }
        // No followers is fine.
        let _ = state.followers.send(flow);
    }

    fn to_flow(&self, event: &FlowEvent, origin: Option<&RuleOrigin>) -> Flow {
        let time = self.boot_time + Duration::from_nanos(event.monotonic_ns);
        let source = address(event.source, event.ip_version);
        let destination = address(event.destination, event.ip_version);
        let drop_reason_desc = match (event.drop_reason, drop_reason::name(event.drop_reason)) {
            (drop_reason::NONE, _) => None,
            (_, Some(name)) => Some(name.to_owned()),
            (other, None) => Some(format!("DROP_REASON_{other}")),
        };
        let ports = PortPair {
            source_port: event.source_port,
            destination_port: event.destination_port,
        };
        let icmp = Icmp {
            kind: event.icmp_type,
            code: event.icmp_code,
        };
        let (l4, l4_name) = match event.protocol {
            protocol::TCP => (
                Some(Layer4::Tcp {
                    source_port: event.source_port,
                    destination_port: event.destination_port,
                    flags: TcpFlags::from_byte(event.tcp_flags),
                }),
                format!("TCP Flags: {}", TcpFlags::from_byte(event.tcp_flags)),
            ),
            protocol::UDP => (Some(Layer4::Udp(ports)), "UDP".to_owned()),
            protocol::SCTP => (Some(Layer4::Sctp(ports)), "SCTP".to_owned()),
            protocol::ICMP => (
                Some(Layer4::IcmpV4(icmp)),
                format!("ICMPv4 type {} code {}", icmp.kind, icmp.code),
            ),
            protocol::ICMPV6 => (
                Some(Layer4::IcmpV6(icmp)),
                format!("ICMPv6 type {} code {}", icmp.kind, icmp.code),
            ),
            other => (None, format!("IP protocol {other}")),
        };
        let egress = event.direction == direction::EGRESS;
        let decided_by: Vec<FlowPolicy> = if event.rule_id == FAILSAFE_RULE {
            vec![FlowPolicy {
                name: "failsafe".to_owned(),
                namespace: None,
                rule: if egress {
                    "failsafe.outbound"
                } else {
                    "failsafe.inbound"
                }
                .to_owned(),
            }]
        } else {
            origin
                .filter(|_| event.rule_id != NO_RULE)
                .map(|origin| FlowPolicy {
                    name: origin.policy.name.clone(),
                    namespace: origin.policy.namespace.clone(),
                    rule: origin.path.clone(),
                })
                .into_iter()
                .collect()
        };
        let denied = origin.is_some_and(|o| o.section.is_deny()) && event.rule_id != FAILSAFE_RULE;
        let (allowed_by, denied_by) = if denied {
            (Vec::new(), decided_by)
        } else {
            (decided_by, Vec::new())
        };
        let (ingress_allowed_by, ingress_denied_by, egress_allowed_by, egress_denied_by) = if egress
        {
            (Vec::new(), Vec::new(), allowed_by, denied_by)
        } else {
            (allowed_by, denied_by, Vec::new(), Vec::new())
        };
        Flow {
            time: humantime::format_rfc3339_micros(time).to_string(),
            verdict: verdict_of(event.verdict),
            drop_reason_desc,
            ip: FlowIp {
                source,
                destination,
                ip_version: if source.is_ipv4() {
                    IpVersion::V4
                } else {
                    IpVersion::V6
                },
            },
            l4,
            traffic_direction: if egress {
                TrafficDirection::Egress
            } else {
                TrafficDirection::Ingress
            },
            interface: Interface {
                index: event.ifindex,
                name: interface_name(event.ifindex),
            },
            ingress_allowed_by,
            ingress_denied_by,
            egress_allowed_by,
            egress_denied_by,
            source: self.pod(source),
            destination: self.pod(destination),
            node_name: self.node_name.clone(),
            policy_generation: event.generation,
            packet_length: event.packet_len,
            summary: l4_name,
        }
    }
}

/// The name of interface `ifindex` in this namespace, or "" when it is gone.
fn interface_name(ifindex: u32) -> String {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn address(bytes: [u8; 16], ip_version: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match (ip_version, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// The flow's verdict for a datapath verdict code ([`verdict`]).
pub fn verdict_of(code: u8) -> Verdict {
    match code {
        verdict::FORWARDED => Verdict::Forwarded,
        verdict::DROPPED => Verdict::Dropped,
        verdict::AUDIT => Verdict::Audit,
        _ => Verdict::VerdictUnknown,
    }
}

/// Wall-clock time at which CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads) was zero.
fn boot_time() -> SystemTime {
    SystemTime::now() - crate::clock::monotonic()
}

impl FlowSink for FlowHub {
    fn record(&self, event: &FlowEvent) {
        self.record_event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule_id: u32, generation: u32) -> FlowEvent {
        let mut source = [0u8; 16];
        source[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 7]);
        FlowEvent {
            source,
            destination: source,
            rule_id,
            generation,
            ip_version: 4,
            protocol: protocol::TCP,
            verdict: verdict::DROPPED,
            drop_reason: drop_reason::POLICY_DENY,
            tcp_flags: 0x02,
            destination_port: 22,
            source_port: 40000,
            ifindex: 3,
            direction: direction::INGRESS,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn events_become_hubble_like_flows() {
        let hub = FlowHub::new("node-a".into(), 2, 0);
        hub.set_rule_origins(
            7,
            vec![Some(RuleOrigin {
                policy: palisade_policy::PolicyName::cluster_wide("lockdown"),
                path: "spec.ingressDeny[0]".into(),
                section: palisade_policy::compile::Section::IngressDeny,
            })],
        );
        hub.record(&event(0, 7));
        let (flows, _) = hub.snapshot(&FlowFilter::default(), None, false);
        let flow = &flows[0];
        assert_eq!(flow.verdict, Verdict::Dropped);
        assert_eq!(flow.drop_reason_desc.as_deref(), Some("POLICY_DENY"));
        assert_eq!(flow.ip.source.to_string(), "192.0.2.7");
        assert_eq!(flow.interface.index, 3);
        assert_eq!(flow.ingress_denied_by[0].name, "lockdown");
        assert!(
            flow.compact()
                .contains("192.0.2.7:40000 -> 192.0.2.7:22 DROPPED TCP Flags: SYN")
        );
    }

    #[test]
    fn buffer_is_bounded_and_last_counts_from_the_end() {
        let hub = FlowHub::new("n".into(), 2, 0);
        for port in [1, 2, 3] {
            let mut e = event(NO_RULE, 1);
            e.destination_port = port;
            hub.record(&e);
        }
        let ports = |flows: Vec<Flow>| -> Vec<u16> {
            flows
                .iter()
                .map(|f| match f.l4 {
                    Some(Layer4::Tcp {
                        destination_port, ..
                    }) => destination_port,
                    _ => 0,
                })
                .collect()
        };
        assert_eq!(
            ports(hub.snapshot(&FlowFilter::default(), None, false).0),
            [2, 3]
        );
        assert_eq!(
            ports(hub.snapshot(&FlowFilter::default(), Some(1), false).0),
            [3]
        );
    }
}
