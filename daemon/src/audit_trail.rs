//! The audit trail: drops and audits written to the log (the journal under
//! systemd) with structured fields, at a bounded rate.

use std::time::{Duration, Instant};

use palisade_api::{Flow, Verdict};
use tracing::info;

/// Logs drop and audit flows, at most `per_second` a second; the others are
/// counted, and the count is logged when the next second's first one is.
#[derive(Debug)]
pub struct AuditTrail {
    per_second: u32,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl AuditTrail {
    /// A trail of at most `per_second` entries a second (0: none).
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Logs `flow` when it is a drop or an audit and the rate allows.
    pub fn record(&mut self, flow: &Flow) {
        if self.per_second == 0 || flow.verdict == Verdict::Forwarded {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                info!(
                    target: "palisade::audit",
                    suppressed = self.suppressed,
                    "drops and audits not logged in the last period (flows.log_per_second)"
                );
            }
            self.window_start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged >= self.per_second {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let (src, dst) = flow.endpoints();
        let policy = flow
            .ingress_denied_by
            .iter()
            .chain(&flow.ingress_allowed_by)
            .map(|p| format!("{}:{}", p.name, p.rule))
            .next()
            .unwrap_or_default();
        info!(
            target: "palisade::audit",
            verdict = %flow.verdict,
            reason = flow.drop_reason_desc.as_deref().unwrap_or(""),
            src = %src,
            dst = %dst,
            policy = %policy,
            generation = flow.policy_generation,
            interface = %flow.interface.name,
            "{} {src} -> {dst} {}",
            flow.verdict,
            flow.summary
        );
    }

    /// Flows not logged in the current period.
    #[cfg(test)]
    fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use palisade_api::{FlowIp, Interface, IpVersion, TrafficDirection};

    use super::*;

    fn flow(verdict: &str) -> Flow {
        Flow {
            time: String::new(),
            verdict: verdict.parse().expect("a verdict"),
            drop_reason_desc: None,
            ip: FlowIp {
                source: [192, 0, 2, 1].into(),
                destination: [192, 0, 2, 2].into(),
                ip_version: IpVersion::V4,
            },
            l4: None,
            traffic_direction: TrafficDirection::Ingress,
            interface: Interface {
                index: 1,
                name: String::new(),
            },
            ingress_allowed_by: Vec::new(),
            ingress_denied_by: Vec::new(),
            egress_allowed_by: Vec::new(),
            egress_denied_by: Vec::new(),
            source: None,
            destination: None,
            node_name: String::new(),
            policy_generation: 1,
            packet_length: 0,
            summary: String::new(),
        }
    }

    #[test]
    fn only_drops_and_audits_count_against_the_rate() {
        let mut trail = AuditTrail::new(2);
        for verdict in [
            "FORWARDED",
            "DROPPED",
            "FORWARDED",
            "AUDIT",
            "DROPPED",
            "DROPPED",
        ] {
            trail.record(&flow(verdict));
        }
        assert_eq!(trail.suppressed(), 2);
        let mut off = AuditTrail::new(0);
        off.record(&flow("DROPPED"));
        assert_eq!(off.suppressed(), 0);
    }
}
