//! IP prefixes as Cilium writes them (`fromCIDR`, `toCIDR`, `cidr`, `except`).

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// An IP prefix as Cilium accepts it: `a.b.c.d/n`, `x::/n`, or a bare address
/// (a /32 or /128). Host bits are cleared, as Cilium does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(address)));
        }
        Err(format!(
            "invalid CIDR {text:?}: expected an address with a prefix length such as \"192.0.2.0/24\" or \"2001:db8::/32\""
        ))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}
