//! `palisadectl observe`: flows, filtered as `hubble observe` filters them.

use std::time::SystemTime;

use clap::{Args, ValueEnum};
use futures_util::StreamExt as _;
use palisade_api::{Client, Flow, FlowQuery};

/// Flow selection and output options.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Output: compact lines, one JSON object per line, KEY: VALUE blocks, or a table.
    #[arg(short, long, value_enum, default_value_t = FlowFormat::Compact)]
    output: FlowFormat,
    /// Keep printing new flows as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N matching buffered flows.
    #[arg(long)]
    last: Option<usize>,
    /// Verdict: FORWARDED, DROPPED or AUDIT (repeatable: any of them).
    #[arg(long, value_enum)]
    verdict: Vec<VerdictFilter>,
    /// Source or destination address or prefix (repeatable).
    #[arg(long)]
    ip: Vec<String>,
    /// Source address or prefix (repeatable).
    #[arg(long)]
    from_ip: Vec<String>,
    /// Destination address or prefix (repeatable).
    #[arg(long)]
    to_ip: Vec<String>,
    /// Source or destination port (repeatable).
    #[arg(long)]
    port: Vec<u16>,
    /// Source port (repeatable).
    #[arg(long)]
    from_port: Vec<u16>,
    /// Destination port (repeatable).
    #[arg(long)]
    to_port: Vec<u16>,
    /// Protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6 (repeatable).
    #[arg(long)]
    protocol: Vec<String>,
    /// Event type: drop, policy-verdict, trace (repeatable).
    #[arg(short = 't', long = "type")]
    event_type: Vec<String>,
    /// Name of the policy that decided (repeatable).
    #[arg(long)]
    policy: Vec<String>,
    /// A pod at either end, `[NAMESPACE/]POD-NAME-PREFIX` (namespace
    /// `default` when not given) (repeatable).
    #[arg(long)]
    pod: Vec<String>,
    /// The source pod, likewise (repeatable).
    #[arg(long)]
    from_pod: Vec<String>,
    /// The destination pod, likewise (repeatable).
    #[arg(long)]
    to_pod: Vec<String>,
    /// The namespace of a pod at either end (repeatable).
    #[arg(short = 'n', long)]
    namespace: Vec<String>,
    /// A label of a pod at either end, `KEY=VALUE` or `KEY` (repeatable).
    #[arg(short = 'l', long)]
    label: Vec<String>,
    /// Only flows since this time: RFC 3339, or a duration ago such as 5m, 1h30m.
    #[arg(long)]
    since: Option<String>,
    /// Only flows until this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FlowFormat {
    Compact,
    Json,
    Dict,
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
enum VerdictFilter {
    Forwarded,
    Dropped,
    Audit,
}

fn joined<T: ToString>(values: &[T]) -> Option<String> {
    (!values.is_empty()).then(|| {
        values
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// An absolute RFC 3339 time from either an RFC 3339 time or a duration ago.
fn absolute_time(text: &str) -> String {
    match humantime::parse_duration(text) {
        Ok(ago) => humantime::format_rfc3339(SystemTime::now() - ago).to_string(),
        Err(_) => text.to_owned(),
    }
}

impl ObserveArgs {
    fn query(&self) -> FlowQuery {
        let verdicts: Vec<&str> = self
            .verdict
            .iter()
            .map(|v| match v {
                VerdictFilter::Forwarded => "FORWARDED",
                VerdictFilter::Dropped => "DROPPED",
                VerdictFilter::Audit => "AUDIT",
            })
            .collect();
        FlowQuery {
            last: self.last,
            follow: self.follow,
            verdict: joined(&verdicts),
            ip: joined(&self.ip),
            from_ip: joined(&self.from_ip),
            to_ip: joined(&self.to_ip),
            port: joined(&self.port),
            from_port: joined(&self.from_port),
            to_port: joined(&self.to_port),
            protocol: joined(&self.protocol),
            event_type: joined(&self.event_type),
            policy: joined(&self.policy),
            pod: joined(&self.pod),
            from_pod: joined(&self.from_pod),
            to_pod: joined(&self.to_pod),
            namespace: joined(&self.namespace),
            label: joined(&self.label),
            since: self.since.as_deref().map(absolute_time),
            until: self.until.as_deref().map(absolute_time),
        }
    }
}

/// Prints the flows the daemon selects.
///
/// # Errors
///
/// When the daemon is unreachable or refuses the filter.
pub async fn run(client: &Client, args: &ObserveArgs) -> anyhow::Result<()> {
    let mut flows = Box::pin(client.flows(&args.query()).await?);
    if matches!(args.output, FlowFormat::Table) {
        println!(
            "{}",
            table_row(["TIMESTAMP", "SOURCE", "DESTINATION", "VERDICT", "SUMMARY"])
        );
    }
    while let Some(flow) = flows.next().await {
        let flow = flow?;
        match args.output {
            FlowFormat::Json => println!("{}", serde_json::to_string(&flow)?),
            FlowFormat::Compact => println!("{}", flow.compact()),
            FlowFormat::Dict => print!("{}", dict(&flow)),
            FlowFormat::Table => {
                let (source, destination) = flow.endpoints();
                println!(
                    "{}",
                    table_row([
                        &flow.time,
                        &source,
                        &destination,
                        flow.verdict.as_str(),
                        &flow.summary
                    ])
                );
            }
        }
    }
    Ok(())
}

fn table_row<S: AsRef<str>>(cells: [S; 5]) -> String {
    let [time, source, destination, verdict, summary] = cells;
    format!(
        "{:<28} {:<24} {:<24} {:<10} {}",
        time.as_ref(),
        source.as_ref(),
        destination.as_ref(),
        verdict.as_ref(),
        summary.as_ref()
    )
}

fn dict(flow: &Flow) -> String {
    let (source, destination) = flow.endpoints();
    let decided_by = flow
        .decided_by()
        .map(|p| format!("{} {}", p.name, p.rule))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = String::from("-------------\n");
    for (key, value) in [
        ("TIMESTAMP", flow.time.as_str()),
        ("SOURCE", &source),
        ("DESTINATION", &destination),
        ("TYPE", flow.traffic_direction.as_str()),
        ("VERDICT", flow.verdict.as_str()),
        (
            "DROP REASON",
            flow.drop_reason_desc.as_deref().unwrap_or(""),
        ),
        ("POLICY", &decided_by),
        ("INTERFACE", &flow.interface.name),
        ("NODE", &flow.node_name),
        ("SUMMARY", &flow.summary),
    ] {
        if !value.is_empty() {
            text.push_str(&format!("{key:>12}: {value}\n"));
        }
    }
    text
}
