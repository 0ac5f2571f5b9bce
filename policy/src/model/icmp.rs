//! `icmps`: ICMP and ICMPv6 types by number or by Cilium's names (icmp.go).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// One `icmps` entry: the ICMP types it matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    /// The matched types.
    #[serde(default)]
    pub fields: Vec<IcmpField>,
}

/// One ICMP or ICMPv6 type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// IPv4 (ICMP, the default) or IPv6 (ICMPv6).
    #[serde(default)]
    pub family: IcmpFamily,
    /// The type, by number or by Cilium's CamelCase name.
    #[serde(rename = "type")]
    pub icmp_type: IcmpType,
}

impl IcmpField {
    /// The IP protocol number this field matches.
    pub fn protocol(&self) -> u8 {
        match self.family {
            IcmpFamily::IPv4 => palisade_common::protocol::ICMP,
            IcmpFamily::IPv6 => palisade_common::protocol::ICMPV6,
        }
    }
}

/// The address family of an [`IcmpField`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IcmpFamily {
    /// ICMP.
    #[default]
    IPv4,
    /// ICMPv6.
    IPv6,
}

/// An ICMP type number. Names are resolved when the policy is compiled, per
/// family, as Cilium's `ICMPField` does (pkg/policy/api/icmp.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpType {
    /// A number 0-255.
    Number(u8),
    /// One of Cilium's names, kept as written for the round trip.
    Name(&'static str),
}

/// Cilium's ICMP (IPv4) type names (icmp.go `icmpIpv4TypeNameToCode`).
const ICMPV4_TYPE_NAMES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's ICMPv6 type names (icmp.go `icmpIpv6TypeNameToCode`).
const ICMPV6_TYPE_NAMES: [(&str, u8); 20] = [
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("Version2MulticastListenerReport", 143),
];

impl IcmpType {
    /// The type number for `family`; `None` for a name that family lacks.
    pub fn code(self, family: IcmpFamily) -> Option<u8> {
        match self {
            Self::Number(number) => Some(number),
            Self::Name(name) => {
                let names: &[(&str, u8)] = match family {
                    IcmpFamily::IPv4 => &ICMPV4_TYPE_NAMES,
                    IcmpFamily::IPv6 => &ICMPV6_TYPE_NAMES,
                };
                names
                    .iter()
                    .find(|(known, _)| *known == name)
                    .map(|(_, code)| *code)
            }
        }
    }
}

impl fmt::Display for IcmpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(number) => number.fmt(f),
            Self::Name(name) => name.fmt(f),
        }
    }
}

impl Serialize for IcmpType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(number) => serializer.serialize_u8(*number),
            Self::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IcmpTypeVisitor;
        impl de::Visitor<'_> for IcmpTypeVisitor {
            type Value = IcmpType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ICMP type 0-255 or a name such as \"EchoRequest\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IcmpType, E> {
                u8::try_from(v)
                    .map(IcmpType::Number)
                    .map_err(|_| E::custom(format!("ICMP type {v} is out of range 0-255")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IcmpType, E> {
                u8::try_from(v)
                    .map(IcmpType::Number)
                    .map_err(|_| E::custom(format!("ICMP type {v} is out of range 0-255")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IcmpType, E> {
                if let Ok(number) = v.parse::<u64>() {
                    return self.visit_u64(number);
                }
                ICMPV4_TYPE_NAMES
                    .iter()
                    .chain(ICMPV6_TYPE_NAMES.iter())
                    .find(|(name, _)| *name == v)
                    .map(|(name, _)| IcmpType::Name(name))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "unknown ICMP type name {v:?}: use a number or a name such as \"EchoRequest\""
                        ))
                    })
            }
        }
        deserializer.deserialize_any(IcmpTypeVisitor)
    }
}
