//! `palisadectl policy explain`: compiles policy files for a node label set,
//! offline, prints the compiled rules and, for one new connection, the
//! verdict, the deciding policy and rule, and why.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use palisade_common::{drop_reason, protocol, verdict};
use palisade_config::{ConfigError, ConfigFile, FailsafeConfig, Service};
use palisade_policy::{
    CompiledTable, Connection, Direction, NodeContext, Policy, ValidateOptions, Verdict, compile,
    evaluate, rule_lines,
};
use serde::Serialize;

use crate::{
    EXIT_REFUSED, Reported, files,
    output::{Format, print},
};

/// `palisadectl policy explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file or directory (repeatable).
    #[arg(short, long = "file", required = true)]
    files: Vec<PathBuf>,
    /// palisaded's configuration (palisade.toml): the node's labels,
    /// addresses, `[cluster]`, audit mode, `fqdn_audit`, strict-mode
    /// prefixes and `[failsafe]` services come from it, so the verdict is
    /// the daemon's; the options below add to it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A label of the node, as KEY=VALUE (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = label)]
    node_labels: Vec<(String, String)>,
    /// An address of the node, the `host` entity (repeatable).
    #[arg(long = "node-address", value_name = "CIDR")]
    node_addresses: Vec<ipnet::IpNet>,
    /// Judge as in audit mode (`policy.audit_mode` in palisade.toml).
    #[arg(long)]
    audit_mode: bool,
    /// Accept toFQDNs in audit-only form (`policy.fqdn_audit` in palisade.toml).
    #[arg(long)]
    fqdn_audit: bool,
    /// Direction of the connection.
    #[arg(long = "dir", value_enum, requires_all = ["protocol", "source", "destination"])]
    direction: Option<DirectionArg>,
    /// Protocol of the connection.
    #[arg(long = "proto", value_enum, requires = "direction")]
    protocol: Option<ProtocolArg>,
    /// Source address.
    #[arg(long = "src", requires = "direction")]
    source: Option<IpAddr>,
    /// Destination address.
    #[arg(long = "dst", requires = "direction")]
    destination: Option<IpAddr>,
    /// Source port (shown only; rules match destination ports).
    #[arg(long = "sport")]
    source_port: Option<u16>,
    /// Destination port (TCP, UDP, SCTP).
    #[arg(long = "dport")]
    destination_port: Option<u16>,
    /// ICMP or ICMPv6 type.
    #[arg(long)]
    icmp_type: Option<u8>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `--dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DirectionArg {
    /// Towards this node.
    Ingress,
    /// From this node.
    Egress,
}

/// `--proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

fn label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// What `explain` found.
#[derive(Debug, Serialize)]
struct Explanation {
    /// Policies that select the node.
    policies: Vec<String>,
    /// The compiled rules, one line each.
    rules: Vec<String>,
    /// Whether each direction is default deny.
    ingress_default_deny: bool,
    egress_default_deny: bool,
    /// The verdict on the connection, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<String>,
    /// The drop reason, when it is (or would be) dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_reason: Option<String>,
    /// The deciding policy, if a rule decided (null otherwise).
    policy: Option<String>,
    /// The deciding rule's field path.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    /// Why, in a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Runs `policy explain`.
///
/// # Errors
///
/// When a file cannot be read or is invalid (exit 3 then), or the
/// connection is incomplete.
pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    // Without --config: the files alone (no failsafe services, nothing
    // about the node but the options).
    let config = match &args.config {
        Some(path) => match ConfigFile::new(Some(path.clone())).load() {
            Ok(config) => Some(config),
            Err(ConfigError::Invalid(diagnostics)) => {
                for diagnostic in &diagnostics.0 {
                    eprintln!("{diagnostic}");
                }
                return Err(Reported(EXIT_REFUSED).into());
            }
            Err(error) => return Err(error.into()),
        },
        None => None,
    };
    let failsafe = config.as_ref().map(|config| config.failsafe.clone());
    let config = config.unwrap_or_default();
    let mut labels = config.node.labels.clone();
    labels.extend(args.node_labels.iter().cloned());
    let mut addresses = config.node.addresses.clone();
    addresses.extend(args.node_addresses.iter().copied());
    let node = NodeContext {
        labels,
        audit_mode: args.audit_mode || config.policy.audit_mode,
        fqdn_audit: args.fqdn_audit || config.policy.fqdn_audit,
        addresses,
        cluster: config.cluster_context(),
        strict_prefixes: config.strict_prefixes(),
    };
    let options = ValidateOptions {
        fqdn_audit: node.fqdn_audit,
    };
    let policies: Vec<Policy> = files::parse_with(&args.files, options)?
        .into_iter()
        .flat_map(|(_, policies)| policies)
        .collect();
    let table = compile(&policies, &node).context("the policies cannot be compiled together")?;
    let mut explanation = Explanation {
        policies: table.policies.iter().map(ToString::to_string).collect(),
        rules: rule_lines(&table),
        ingress_default_deny: table.ingress.default_deny,
        egress_default_deny: table.egress.default_deny,
        verdict: None,
        drop_reason: None,
        policy: None,
        rule: None,
        reason: None,
    };
    if let Some((direction, connection)) = connection(args)? {
        let decided = evaluate(&table, direction, &connection);
        if decided.drop_reason != drop_reason::UNENCRYPTED_TRAFFIC
            && let Some(failsafe) = &failsafe
            && let Some(service) = failsafe_service(failsafe, direction, &connection)
        {
            explanation.verdict = Some(verdict::name(verdict::FORWARDED).to_owned());
            explanation.reason = Some(format!(
                "{service} is a failsafe service ([failsafe] {} in the configuration): new connections to it pass whatever the policies say",
                if direction == Direction::Ingress {
                    "inbound"
                } else {
                    "outbound"
                }
            ));
            return print(args.output, &explanation, table_output);
        }
        let origin = table.rule(decided.rule_id);
        explanation.verdict = Some(verdict::name(decided.verdict).to_owned());
        explanation.drop_reason = drop_reason::name(decided.drop_reason).map(str::to_owned);
        explanation.policy = origin.map(|origin| origin.policy.to_string());
        explanation.rule = origin.map(|origin| origin.path.clone());
        explanation.reason = Some(reason(&table, direction, &decided));
    }
    print(args.output, &explanation, table_output)
}

/// The failsafe service the connection goes to, if any (the datapath
/// checks them before the policies).
fn failsafe_service<'a>(
    failsafe: &'a FailsafeConfig,
    direction: Direction,
    connection: &Connection,
) -> Option<&'a Service> {
    let services = match direction {
        Direction::Ingress => &failsafe.inbound,
        Direction::Egress => &failsafe.outbound,
    };
    services.iter().find(|service| {
        service.protocol.code() == connection.protocol
            && service.port == connection.destination_port
    })
}

fn connection(args: &ExplainArgs) -> anyhow::Result<Option<(Direction, Connection)>> {
    let (Some(direction), Some(protocol), Some(source), Some(destination)) =
        (args.direction, args.protocol, args.source, args.destination)
    else {
        return Ok(None);
    };
    let (code, port) = match protocol {
        ProtocolArg::Tcp | ProtocolArg::Udp | ProtocolArg::Sctp => {
            let Some(port) = args.destination_port else {
                bail!("--dport is needed for {protocol:?}");
            };
            let code = match protocol {
                ProtocolArg::Tcp => protocol::TCP,
                ProtocolArg::Udp => protocol::UDP,
                _ => protocol::SCTP,
            };
            (code, port)
        }
        ProtocolArg::Icmp | ProtocolArg::Icmpv6 => {
            let Some(kind) = args.icmp_type else {
                bail!("--icmp-type is needed for {protocol:?}");
            };
            let code = if protocol == ProtocolArg::Icmp {
                protocol::ICMP
            } else {
                protocol::ICMPV6
            };
            (code, u16::from(kind))
        }
    };
    if source.is_ipv4() != destination.is_ipv4() {
        bail!("--src and --dst must be of one family");
    }
    let direction = match direction {
        DirectionArg::Ingress => Direction::Ingress,
        DirectionArg::Egress => Direction::Egress,
    };
    Ok(Some((
        direction,
        Connection {
            protocol: code,
            source,
            destination,
            destination_port: port,
        },
    )))
}

fn reason(table: &CompiledTable, direction: Direction, decided: &Verdict) -> String {
    let way = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    let rule = table
        .rule(decided.rule_id)
        .map(ToString::to_string)
        .unwrap_or_default();
    let audit = match (decided.verdict, table.audit) {
        (verdict::AUDIT, true) => "; audit mode forwards it and reports AUDIT",
        (verdict::AUDIT, false) => {
            "; the policy deciding it is in audit mode (annotation cilium.io/policy-audit-mode), so it is forwarded and reported as AUDIT"
        }
        _ => "",
    };
    match decided.drop_reason {
        drop_reason::PREFILTER => format!(
            "the source is in a prefix of {rule}, an ingressDeny rule without ports: the XDP prefilter drops it before the stack sees it"
        ),
        drop_reason::POLICY_DENY => format!(
            "deny rule {rule} matches the peer and port, and deny rules win over allow rules{audit}"
        ),
        drop_reason::POLICY_DENIED => format!(
            "{way} is default deny (a policy selecting this node has {way} rules) and no allow rule matches the peer and port{audit}"
        ),
        _ if rule.is_empty() => {
            format!("no policy selecting this node has {way} rules, so {way} is default allow")
        }
        _ => format!("allow rule {rule} matches the peer and port, and no deny rule does"),
    }
}

fn table_output(explanation: &Explanation) {
    let deny = |on: bool| if on { "default deny" } else { "default allow" };
    println!(
        "Policies selecting the node: {}",
        if explanation.policies.is_empty() {
            "none".to_owned()
        } else {
            explanation.policies.join(", ")
        }
    );
    println!(
        "Ingress: {}; egress: {}",
        deny(explanation.ingress_default_deny),
        deny(explanation.egress_default_deny)
    );
    println!("Rules:");
    for line in &explanation.rules {
        println!("  {line}");
    }
    if let (Some(verdict), Some(reason)) = (&explanation.verdict, &explanation.reason) {
        let dropped = explanation
            .drop_reason
            .as_ref()
            .map_or_else(String::new, |reason| format!(" ({reason})"));
        println!("Verdict: {verdict}{dropped}");
        println!("Why: {reason}");
    }
}
