//! `toPorts`: ports, protocols and the L7 rules that may sit on them
//! (Cilium l4.go, l7.go, http.go, kafka.go, tls.go).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::FqdnSelector;

/// One `toPorts` entry: ports and what else applies to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    /// The ports (Cilium allows at most 40).
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    /// L7 rules; parsed and kept, refused where Cilium refuses them and
    /// not enforced by palisade's datapath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    /// TLS server names (SNI) matched.
    #[serde(rename = "serverNames", default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// TLS termination towards the selected endpoint.
    #[serde(
        rename = "terminatingTLS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<TlsContext>,
    /// TLS origination towards the peer.
    #[serde(
        rename = "originatingTLS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<TlsContext>,
    /// An Envoy listener the traffic is redirected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Listener>,
}

/// A port or port range and its protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortProtocol {
    /// The port; `0` means every port. Only the extended IP protocols
    /// (VRRP, GRE, ...) may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Last port of a range; at or below `port` means the single `port`.
    #[serde(rename = "endPort", default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// The protocol; `ANY` (the default) means TCP, UDP and SCTP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortProtocol {
    /// The inclusive port range this entry covers; `None` for a named port
    /// (resolved per pod, through its container ports).
    pub fn range(&self) -> Option<(u16, u16)> {
        // Cilium pkg/policy/portrange.go: port 0 is every port; an endPort at
        // or below the port is the single port.
        match (&self.port, self.end_port) {
            (None | Some(Port::Number(0)), _) => Some((0, u16::MAX)),
            (Some(Port::Number(port)), Some(end)) if end > *port => Some((*port, end)),
            (Some(Port::Number(port)), _) => Some((*port, *port)),
            (Some(Port::Name(_)), _) => None,
        }
    }
}

/// Protocols a port entry can name (Cilium `L4Proto`, plus the extended IP
/// protocols of `enable-extended-ip-protocols`). Case is ignored on input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP, UDP and SCTP.
    #[default]
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP; `port` is the type (0: every type).
    Icmp,
    /// ICMPv6; `port` is the type (0: every type).
    IcmpV6,
    /// VRRP (112).
    Vrrp,
    /// IGMP (2).
    Igmp,
    /// GRE (47).
    Gre,
    /// IP in IP (4).
    Ipip,
    /// IPv6 in IPv4 (41).
    Ipv6,
    /// ESP (50).
    Esp,
    /// AH (51).
    Ah,
}

/// Every protocol with its name and IP protocol number (`ANY` is the
/// datapath's wildcard code).
const PROTOCOLS: [(Protocol, &str, u8); 13] = [
    (Protocol::Any, "ANY", palisade_common::protocol::ANY),
    (Protocol::Tcp, "TCP", palisade_common::protocol::TCP),
    (Protocol::Udp, "UDP", palisade_common::protocol::UDP),
    (Protocol::Sctp, "SCTP", palisade_common::protocol::SCTP),
    (Protocol::Icmp, "ICMP", palisade_common::protocol::ICMP),
    (
        Protocol::IcmpV6,
        "ICMPV6",
        palisade_common::protocol::ICMPV6,
    ),
    (Protocol::Vrrp, "VRRP", 112),
    (Protocol::Igmp, "IGMP", 2),
    (Protocol::Gre, "GRE", 47),
    (Protocol::Ipip, "IPIP", 4),
    (Protocol::Ipv6, "IPV6", 41),
    (Protocol::Esp, "ESP", 50),
    (Protocol::Ah, "AH", 51),
];

impl Protocol {
    /// The datapath code of this protocol (the IP protocol number, or
    /// `palisade_common::protocol::ANY`).
    pub fn code(self) -> u8 {
        PROTOCOLS
            .iter()
            .find(|(protocol, _, _)| *protocol == self)
            .map_or(palisade_common::protocol::ANY, |(_, _, code)| *code)
    }

    /// The name as Cilium writes it (`TCP`, `ICMPV6`, `VRRP`).
    pub fn name(self) -> &'static str {
        PROTOCOLS
            .iter()
            .find(|(protocol, _, _)| *protocol == self)
            .map_or("ANY", |(_, name, _)| name)
    }

    /// Whether this is one of the extended IP protocols, which have no ports.
    pub fn is_extended(self) -> bool {
        matches!(
            self,
            Self::Vrrp | Self::Igmp | Self::Gre | Self::Ipip | Self::Ipv6 | Self::Esp | Self::Ah
        )
    }

    /// Every protocol, in the order of [`Protocol::name`]s above.
    pub fn all() -> impl Iterator<Item = Self> {
        PROTOCOLS.iter().map(|(protocol, _, _)| *protocol)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // Cilium ParseL4Proto: case-insensitive, empty is ANY.
        if text.is_empty() {
            return Ok(Self::Any);
        }
        PROTOCOLS
            .iter()
            .find(|(_, name, _)| name.eq_ignore_ascii_case(&text))
            .map(|(protocol, _, _)| *protocol)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid protocol {text:?}, must be one of TCP, UDP, SCTP, ICMP, ICMPV6, ANY, VRRP, IGMP, GRE, IPIP, IPV6, ESP, AH"
                ))
            })
    }
}

/// A port: a number (written as a number or a numeric string, as Cilium
/// allows) or an IANA service name such as `http`, which names a pod's
/// container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// A port number.
    Number(u16),
    /// A named port, lower-cased as Cilium stores it.
    Name(String),
}

/// Whether `text` is an IANA service name (RFC 6335 §5.1, Cilium
/// pkg/iana `IsSvcName`): 1-15 characters of letters, digits and '-', at
/// least one letter, no '-' at either end and no "--".
pub fn is_service_name(text: &str) -> bool {
    (1..=15).contains(&text.len())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && text.chars().any(|c| c.is_ascii_alphabetic())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--")
}

/// Parses a numeric port as Go's `strconv.ParseUint(text, 0, 16)` does for
/// text that is not a service name: decimal, or octal with a leading `0`.
fn parse_port_number(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix('0') {
        Some(octal) if !octal.is_empty() => u16::from_str_radix(octal, 8),
        _ => text.parse::<u16>(),
    };
    parsed.map_err(|_| {
        format!("Unable to parse port: {text:?} is not a port number 0-65535 or a service name")
    })
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(number) => number.fmt(f),
            Self::Name(name) => name.fmt(f),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl de::Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number 0-65535 or a service name such as \"http\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0-65535")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0-65535")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                // Cilium l4.go PortProtocol.sanitize: a service name first
                // (so "0x10" is a name), then a number.
                if is_service_name(v) {
                    return Ok(Port::Name(v.to_ascii_lowercase()));
                }
                parse_port_number(v).map(Port::Number).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// `rules`: the L7 rules of one port rule. At most one kind may be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    /// HTTP requests allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// Kafka requests allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<KafkaRule>,
    /// DNS names that may be looked up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<FqdnSelector>,
    /// A proxylib parser name, for `l7`.
    #[serde(rename = "l7proto", default, skip_serializing_if = "Option::is_none")]
    pub l7_proto: Option<String>,
    /// Generic key-value rules for `l7proto`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l7: Vec<BTreeMap<String, String>>,
}

impl L7Rules {
    /// The kinds present, by field name.
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            ("http", !self.http.is_empty()),
            ("kafka", !self.kafka.is_empty()),
            ("dns", !self.dns.is_empty()),
            ("l7proto", self.l7_proto.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }
}

/// One HTTP rule (regular expressions for path and method).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    /// Path regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Method regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Host regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present (`Name: value` or `Name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Header matches with actions on mismatch.
    #[serde(
        rename = "headerMatches",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub header_matches: Vec<HeaderMatch>,
}

/// One `headerMatches` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// What to do on mismatch: LOG, ADD, DELETE or REPLACE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    /// Header name.
    pub name: String,
    /// A secret holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One Kafka rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaRule {
    /// `produce` or `consume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Kafka API key name.
    #[serde(rename = "apiKey", default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Kafka API version.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// Client id.
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A Kubernetes secret reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// TLS material for `terminatingTLS` / `originatingTLS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsContext {
    /// The secret holding the material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// Key of the trusted CA in the secret.
    #[serde(rename = "trustedCA", default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    /// Key of the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Key of the private key.
    #[serde(
        rename = "privateKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
}

/// `listener`: an Envoy listener defined by a CiliumEnvoyConfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The Envoy config defining the listener.
    #[serde(rename = "envoyConfig")]
    pub envoy_config: EnvoyConfigRef,
    /// The listener's name.
    pub name: String,
    /// Priority among listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// A CiliumEnvoyConfig or CiliumClusterwideEnvoyConfig by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyConfigRef {
    /// The kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The name.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_cilium_parses_them() {
        let port = |text: &str| -> Result<Port, String> {
            Port::deserialize(de::value::StrDeserializer::<de::value::Error>::new(text))
                .map_err(|e| e.to_string())
        };
        assert_eq!(port("80"), Ok(Port::Number(80)));
        assert_eq!(port("HTTP"), Ok(Port::Name("http".into())));
        assert_eq!(port("http-alt"), Ok(Port::Name("http-alt".into())));
        // A name first: "0x10" is a name, as in Cilium.
        assert_eq!(port("0x10"), Ok(Port::Name("0x10".into())));
        // Go's base prefix: a leading 0 is octal.
        assert_eq!(port("010"), Ok(Port::Number(8)));
        assert!(port("70000").is_err());
        assert!(port("-http").is_err());
        assert!(port("a--b").is_err());
        assert!(port("").is_err());
    }

    #[test]
    fn protocols_ignore_case_and_know_their_numbers() {
        let protocol = |text: &str| {
            Protocol::deserialize(de::value::StrDeserializer::<de::value::Error>::new(text))
        };
        assert_eq!(protocol("tcp"), Ok(Protocol::Tcp));
        assert_eq!(protocol("IcmpV6"), Ok(Protocol::IcmpV6));
        assert_eq!(protocol(""), Ok(Protocol::Any));
        assert_eq!(protocol("vrrp").map(Protocol::code), Ok(112));
        assert!(protocol("QUIC").is_err());
        assert!(Protocol::Gre.is_extended() && !Protocol::Udp.is_extended());
    }
}
