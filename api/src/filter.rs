//! Flow filters with `hubble observe`'s meaning: the values given to one filter
//! are alternatives (any may match), and every filter given must match.
//!
//! On the wire each filter is one query parameter whose values are separated
//! by commas, e.g. `/v1/flows?verdict=DROPPED,AUDIT&to_port=22&last=10`.

use std::{net::IpAddr, str::FromStr, time::SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Flow, FlowEndpoint, Layer4, Verdict};

/// The query of the flows endpoint: which flows, how many, and whether to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Only the last N matching buffered flows (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    /// Keep the stream open and send new matching flows as they happen.
    #[serde(default)]
    pub follow: bool,
    /// Verdicts: FORWARDED, DROPPED, AUDIT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Addresses or prefixes matched against source or destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Addresses or prefixes matched against the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ip: Option<String>,
    /// Addresses or prefixes matched against the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ip: Option<String>,
    /// Ports matched against source or destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Source ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<String>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<String>,
    /// Protocols: tcp, udp, sctp, icmp (v4 or v6), icmpv4, icmpv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Event types: drop, policy-verdict, trace.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub event_type: Option<String>,
    /// Names of the policy whose rule decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Pods at either end, `[NAMESPACE/]NAME-PREFIX` (namespace `default`
    /// when not given), as `hubble observe --pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Source pods, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<String>,
    /// Destination pods, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_pod: Option<String>,
    /// Namespaces of a pod at either end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels (`KEY=VALUE` or `KEY`) of a pod at either end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Only flows at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only flows at or before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// A filter value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {filter} filter {value:?}: {reason}")]
pub struct FilterError {
    /// The filter's name, such as `to_ip`.
    pub filter: &'static str,
    /// The value given.
    pub value: String,
    /// What was expected.
    pub reason: String,
}

/// L4 protocols a flow can be filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolFilter {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMPv4 or ICMPv6.
    Icmp,
    /// ICMPv4.
    IcmpV4,
    /// ICMPv6.
    IcmpV6,
}

/// Event types, as `hubble observe --type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Drops.
    Drop,
    /// Every verdict (each palisade flow is a policy verdict).
    PolicyVerdict,
    /// Packets that went on: forwarded and audited ones.
    Trace,
}

/// A parsed [`FlowQuery`] filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowFilter {
    /// Allowed verdict names.
    pub verdicts: Vec<Verdict>,
    /// Prefixes for either address.
    pub ips: Vec<IpNet>,
    /// Prefixes for the source.
    pub from_ips: Vec<IpNet>,
    /// Prefixes for the destination.
    pub to_ips: Vec<IpNet>,
    /// Ports for either side.
    pub ports: Vec<u16>,
    /// Source ports.
    pub from_ports: Vec<u16>,
    /// Destination ports.
    pub to_ports: Vec<u16>,
    /// Protocols.
    pub protocols: Vec<ProtocolFilter>,
    /// Event types.
    pub types: Vec<EventType>,
    /// Policy names.
    pub policies: Vec<String>,
    /// Pods at either end.
    pub pods: Vec<PodFilter>,
    /// Source pods.
    pub from_pods: Vec<PodFilter>,
    /// Destination pods.
    pub to_pods: Vec<PodFilter>,
    /// Namespaces of a pod at either end.
    pub namespaces: Vec<String>,
    /// Labels of a pod at either end: key, and value when given.
    pub labels: Vec<(String, Option<String>)>,
    /// Earliest time.
    pub since: Option<SystemTime>,
    /// Latest time.
    pub until: Option<SystemTime>,
}

fn values(text: Option<&String>) -> impl Iterator<Item = &str> {
    text.into_iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn parse_each<T>(
    filter: &'static str,
    text: Option<&String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, FilterError> {
    values(text)
        .map(|value| {
            parse(value).map_err(|reason| FilterError {
                filter,
                value: value.to_owned(),
                reason,
            })
        })
        .collect()
}

/// A pod filter: a namespace and a prefix of pod names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFilter {
    /// The namespace (`default` when the filter named none).
    pub namespace: String,
    /// A prefix of the pod's name (empty: every pod of the namespace).
    pub name_prefix: String,
}

impl PodFilter {
    fn matches(&self, endpoint: Option<&FlowEndpoint>) -> bool {
        endpoint.is_some_and(|endpoint| {
            endpoint.namespace == self.namespace && endpoint.pod_name.starts_with(&self.name_prefix)
        })
    }
}

fn pod(value: &str) -> Result<PodFilter, String> {
    let (namespace, name_prefix) = value.split_once('/').unwrap_or(("default", value));
    if namespace.is_empty() || name_prefix.contains('/') {
        return Err("expected [NAMESPACE/]POD-NAME-PREFIX".to_owned());
    }
    Ok(PodFilter {
        namespace: namespace.to_owned(),
        name_prefix: name_prefix.to_owned(),
    })
}

fn label(value: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match value.split_once('=') {
        Some((key, value)) => (key, Some(value.to_owned())),
        None => (value, None),
    };
    if key.is_empty() {
        return Err("expected KEY=VALUE or KEY".to_owned());
    }
    Ok((key.to_owned(), value))
}

fn prefix(value: &str) -> Result<IpNet, String> {
    IpNet::from_str(value)
        .map(|net| net.trunc())
        .or_else(|_| IpAddr::from_str(value).map(IpNet::from))
        .map_err(|_| "expected an IP address or prefix such as 10.0.0.0/8".to_owned())
}

fn port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| "expected a port number 0-65535".to_owned())
}

fn time(filter: &'static str, text: Option<&String>) -> Result<Option<SystemTime>, FilterError> {
    text.map(|value| {
        humantime::parse_rfc3339_weak(value).map_err(|error| FilterError {
            filter,
            value: value.clone(),
            reason: format!("expected an RFC 3339 time ({error})"),
        })
    })
    .transpose()
}

impl FlowQuery {
    /// The filter this query describes.
    ///
    /// # Errors
    ///
    /// [`FilterError`] for the first value that does not parse.
    pub fn filter(&self) -> Result<FlowFilter, FilterError> {
        Ok(FlowFilter {
            verdicts: parse_each("verdict", self.verdict.as_ref(), Verdict::from_str)?,
            ips: parse_each("ip", self.ip.as_ref(), prefix)?,
            from_ips: parse_each("from_ip", self.from_ip.as_ref(), prefix)?,
            to_ips: parse_each("to_ip", self.to_ip.as_ref(), prefix)?,
            ports: parse_each("port", self.port.as_ref(), port)?,
            from_ports: parse_each("from_port", self.from_port.as_ref(), port)?,
            to_ports: parse_each("to_port", self.to_port.as_ref(), port)?,
            protocols: parse_each("protocol", self.protocol.as_ref(), |v| {
                match v.to_ascii_lowercase().as_str() {
                    "tcp" => Ok(ProtocolFilter::Tcp),
                    "udp" => Ok(ProtocolFilter::Udp),
                    "sctp" => Ok(ProtocolFilter::Sctp),
                    "icmp" => Ok(ProtocolFilter::Icmp),
                    "icmpv4" => Ok(ProtocolFilter::IcmpV4),
                    "icmpv6" => Ok(ProtocolFilter::IcmpV6),
                    _ => Err("expected tcp, udp, sctp, icmp, icmpv4 or icmpv6".to_owned()),
                }
            })?,
            types: parse_each("type", self.event_type.as_ref(), |v| {
                match v.to_ascii_lowercase().as_str() {
                    "drop" => Ok(EventType::Drop),
                    "policy-verdict" => Ok(EventType::PolicyVerdict),
                    "trace" => Ok(EventType::Trace),
                    _ => Err("expected drop, policy-verdict or trace".to_owned()),
                }
            })?,
            policies: values(self.policy.as_ref()).map(str::to_owned).collect(),
            pods: parse_each("pod", self.pod.as_ref(), pod)?,
            from_pods: parse_each("from_pod", self.from_pod.as_ref(), pod)?,
            to_pods: parse_each("to_pod", self.to_pod.as_ref(), pod)?,
            namespaces: values(self.namespace.as_ref()).map(str::to_owned).collect(),
            labels: parse_each("label", self.label.as_ref(), label)?,
            since: time("since", self.since.as_ref())?,
            until: time("until", self.until.as_ref())?,
        })
    }
}

/// True when `list` is empty (no filter) or any of its items satisfies `test`.
fn any_or_empty<T>(list: &[T], test: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(test)
}

fn contains(prefixes: &[IpNet], address: IpAddr) -> bool {
    any_or_empty(prefixes, |prefix| prefix.contains(&address))
}

impl FlowFilter {
    /// Whether `flow` passes every filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        let ports = flow
            .l4
            .as_ref()
            .and_then(Layer4::ports)
            .map(|p| (p.source_port, p.destination_port));
        let port_matches = |wanted: &[u16], pick: fn((u16, u16)) -> [u16; 2]| {
            wanted.is_empty() || ports.is_some_and(|p| pick(p).iter().any(|p| wanted.contains(p)))
        };
        let time = || humantime::parse_rfc3339_weak(&flow.time).ok();
        any_or_empty(&self.verdicts, |v| *v == flow.verdict)
            && (self.ips.is_empty()
                || contains(&self.ips, flow.ip.source)
                || contains(&self.ips, flow.ip.destination))
            && contains(&self.from_ips, flow.ip.source)
            && contains(&self.to_ips, flow.ip.destination)
            && port_matches(&self.ports, |(s, d)| [s, d])
            && port_matches(&self.from_ports, |(s, _)| [s, s])
            && port_matches(&self.to_ports, |(_, d)| [d, d])
            && any_or_empty(&self.protocols, |p| protocol_matches(*p, flow.l4.as_ref()))
            && any_or_empty(&self.types, |t| match t {
                EventType::Drop => flow.verdict == Verdict::Dropped,
                EventType::PolicyVerdict => true,
                EventType::Trace => flow.verdict != Verdict::Dropped,
            })
            && any_or_empty(&self.policies, |name| {
                flow.decided_by().any(|policy| policy.policy() == *name)
            })
            && any_or_empty(&self.pods, |pod| {
                pod.matches(flow.source.as_ref()) || pod.matches(flow.destination.as_ref())
            })
            && any_or_empty(&self.from_pods, |pod| pod.matches(flow.source.as_ref()))
            && any_or_empty(&self.to_pods, |pod| pod.matches(flow.destination.as_ref()))
            && any_or_empty(&self.namespaces, |namespace| {
                flow.pods().any(|endpoint| endpoint.namespace == *namespace)
            })
            && any_or_empty(&self.labels, |(key, value)| {
                flow.pods()
                    .any(|endpoint| endpoint.has_label(key, value.as_deref()))
            })
            && self
                .since
                .is_none_or(|since| time().is_some_and(|t| t >= since))
            && self
                .until
                .is_none_or(|until| time().is_some_and(|t| t <= until))
    }
}

fn protocol_matches(wanted: ProtocolFilter, l4: Option<&Layer4>) -> bool {
    matches!(
        (wanted, l4),
        (ProtocolFilter::Tcp, Some(Layer4::Tcp { .. }))
            | (ProtocolFilter::Udp, Some(Layer4::Udp(_)))
            | (ProtocolFilter::Sctp, Some(Layer4::Sctp(_)))
            | (
                ProtocolFilter::Icmp,
                Some(Layer4::IcmpV4(_) | Layer4::IcmpV6(_))
            )
            | (ProtocolFilter::IcmpV4, Some(Layer4::IcmpV4(_)))
            | (ProtocolFilter::IcmpV6, Some(Layer4::IcmpV6(_)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FlowIp, FlowPolicy, Icmp, Interface, IpVersion, TcpFlags, TrafficDirection};

    fn flow(source: &str, destination: &str, verdict: &str, l4: Option<Layer4>) -> Flow {
        Flow {
            time: "2026-11-25T10:00:00Z".into(),
            verdict: verdict.parse().expect("a verdict"),
            drop_reason_desc: None,
            ip: FlowIp {
                source: source.parse().expect("an address"),
                destination: destination.parse().expect("an address"),
                ip_version: IpVersion::V4,
            },
            l4,
            traffic_direction: TrafficDirection::Ingress,
            interface: Interface {
                index: 2,
                name: "eth0".into(),
            },
            ingress_allowed_by: vec![FlowPolicy {
                name: "ssh".into(),
                namespace: None,
                rule: "spec.ingress[0]".into(),
            }],
            ingress_denied_by: Vec::new(),
            egress_allowed_by: Vec::new(),
            egress_denied_by: Vec::new(),
            source: None,
            destination: None,
            node_name: "n".into(),
            policy_generation: 1,
            packet_length: 60,
            summary: String::new(),
        }
    }

    fn tcp(source_port: u16, destination_port: u16) -> Option<Layer4> {
        Some(Layer4::Tcp {
            source_port,
            destination_port,
            flags: TcpFlags::default(),
        })
    }

    fn query(build: impl FnOnce(&mut FlowQuery)) -> FlowFilter {
        let mut query = FlowQuery::default();
        build(&mut query);
        query.filter().unwrap()
    }

    #[test]
    fn values_of_one_filter_are_alternatives_and_filters_combine() {
        let f = flow("10.0.0.5", "10.0.0.1", "DROPPED", tcp(40000, 22));
        assert!(query(|_| {}).matches(&f));
        assert!(query(|q| q.verdict = Some("forwarded,dropped".into())).matches(&f));
        assert!(!query(|q| q.verdict = Some("FORWARDED".into())).matches(&f));
        assert!(query(|q| q.from_ip = Some("10.0.0.0/24".into())).matches(&f));
        assert!(!query(|q| q.to_ip = Some("10.0.0.5".into())).matches(&f));
        assert!(query(|q| q.ip = Some("192.0.2.1,10.0.0.5".into())).matches(&f));
        assert!(query(|q| q.to_port = Some("22".into())).matches(&f));
        assert!(!query(|q| q.from_port = Some("22".into())).matches(&f));
        assert!(query(|q| q.port = Some("40000".into())).matches(&f));
        assert!(query(|q| q.protocol = Some("TCP".into())).matches(&f));
        assert!(!query(|q| q.protocol = Some("udp,icmp".into())).matches(&f));
        assert!(query(|q| q.event_type = Some("drop".into())).matches(&f));
        assert!(!query(|q| q.event_type = Some("trace".into())).matches(&f));
        assert!(query(|q| q.policy = Some("ssh".into())).matches(&f));
        assert!(!query(|q| q.policy = Some("other".into())).matches(&f));
        assert!(query(|q| q.since = Some("2026-11-25T09:59:59Z".into())).matches(&f));
        assert!(!query(|q| q.until = Some("2026-11-25T09:59:59Z".into())).matches(&f));
        let both = query(|q| {
            q.verdict = Some("DROPPED".into());
            q.to_port = Some("23".into());
        });
        assert!(!both.matches(&f));
    }

    #[test]
    fn icmp_has_no_ports() {
        let f = flow(
            "10.0.0.5",
            "10.0.0.1",
            "DROPPED",
            Some(Layer4::IcmpV4(Icmp { kind: 8, code: 0 })),
        );
        assert!(!query(|q| q.port = Some("0".into())).matches(&f));
        assert!(query(|q| q.protocol = Some("icmp".into())).matches(&f));
        assert!(query(|q| q.protocol = Some("icmpv4".into())).matches(&f));
        assert!(!query(|q| q.protocol = Some("icmpv6".into())).matches(&f));
    }

    #[test]
    fn bad_values_are_named() {
        let bad_prefix = FlowQuery {
            to_ip: Some("10.0.0.0/33".into()),
            ..FlowQuery::default()
        };
        assert_eq!(
            bad_prefix.filter().unwrap_err().to_string(),
            "invalid to_ip filter \"10.0.0.0/33\": expected an IP address or prefix such as 10.0.0.0/8"
        );
        let bad_verdict = FlowQuery {
            verdict: Some("LOST".into()),
            ..FlowQuery::default()
        };
        let message = bad_verdict.filter().unwrap_err().to_string();
        assert!(
            message.contains("expected FORWARDED, DROPPED or AUDIT"),
            "{message}"
        );
    }

    #[test]
    fn pod_namespace_and_label_filters_match_either_end_as_hubble_does() {
        let mut flow = flow("10.77.0.2", "10.200.0.10", "DROPPED", None);
        flow.source = Some(FlowEndpoint {
            namespace: "shop".into(),
            pod_name: "web-0".into(),
            identity: 256,
            labels: vec![
                "k8s:app=web".into(),
                "k8s:io.kubernetes.pod.namespace=shop".into(),
            ],
        });
        let passes = |query: FlowQuery| query.filter().expect("filter").matches(&flow);
        for query in [
            FlowQuery {
                pod: Some("shop/web".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                from_pod: Some("shop/web-0".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                namespace: Some("other,shop".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                label: Some("app=web".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                label: Some("k8s:app".into()),
                ..FlowQuery::default()
            },
        ] {
            assert!(passes(query.clone()), "{query:?}");
        }
        for query in [
            FlowQuery {
                pod: Some("web-0".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                to_pod: Some("shop/web-0".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                pod: Some("shop/db".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                namespace: Some("default".into()),
                ..FlowQuery::default()
            },
            FlowQuery {
                label: Some("app=db".into()),
                ..FlowQuery::default()
            },
        ] {
            assert!(!passes(query.clone()), "{query:?}");
        }
        let error = FlowQuery {
            pod: Some("a/b/c".into()),
            ..FlowQuery::default()
        }
        .filter()
        .expect_err("bad pod");
        assert_eq!(error.filter, "pod");
    }
}
