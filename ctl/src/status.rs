//! `palisadectl status`.

use palisade_api::{Client, InterfaceState, Status};

use crate::output::{Format, print};

/// Prints the daemon's status.
///
/// # Errors
///
/// When the daemon is unreachable or refuses.
pub async fn run(client: &Client, format: Format) -> anyhow::Result<()> {
    let status = client.status().await?;
    print(format, &status, table)
}

fn table(status: &Status) {
    println!("Node:           {}", status.node_name);
    println!("Version:        {}", status.version);
    println!("Datapath:       {}", status.datapath);
    let yes = |on: bool| if on { "yes" } else { "no" };
    println!(
        "Kernel:         {} (BTF {}, bpffs {})",
        status.kernel.release,
        yes(status.kernel.btf),
        yes(status.kernel.bpffs)
    );
    if status.interfaces.is_empty() {
        println!("Interfaces:     none (nothing is enforced)");
    }
    for interface in &status.interfaces {
        match interface.state {
            InterfaceState::Enforcing => println!(
                "Interface:      {} (ifindex {}, {})",
                interface.name, interface.ifindex, interface.hooks
            ),
            InterfaceState::Missing => println!(
                "Interface:      {} MISSING: the interface is gone, nothing is enforced on it until it is back",
                interface.name
            ),
        }
    }
    for fill in &status.conntrack {
        println!(
            "Conntrack:      {} {} / {} ({} %{})",
            fill.table,
            fill.entries,
            fill.capacity,
            fill.entries.saturating_mul(100) / fill.capacity.max(1),
            if fill.entries.saturating_mul(10) >= fill.evicting_from.saturating_mul(9) {
                ", nearly full: from about this many the least recently used connections are evicted"
            } else {
                ""
            }
        );
    }
    println!("Generation:     {}", status.generation);
    if let Some(pending) = &status.pending_confirm {
        println!(
            "Confirm:        generation {} rolls back to {} in {} s unless `palisadectl confirm`",
            pending.generation, pending.rollback_to, pending.seconds_left
        );
    }
    println!("Policies:       {}", status.policies.join(", "));
    for rule in &status.unenforced {
        println!("Not enforced:   {rule}");
    }
    println!("Rules:          {}", status.rules);
    println!(
        "Ingress:        {}{}",
        if status.ingress_default_deny {
            "default deny"
        } else {
            "default allow"
        },
        if status.audit_mode {
            " (audit mode)"
        } else {
            ""
        }
    );
    let list = |services: &[String]| {
        if services.is_empty() {
            "none".to_owned()
        } else {
            services.join(", ")
        }
    };
    println!(
        "Failsafe:       inbound {}; outbound {}; always {}",
        list(&status.failsafe.inbound),
        list(&status.failsafe.outbound),
        status.failsafe.always.join(", ")
    );
    let c = &status.counters;
    println!(
        "Connections:    {} forwarded, {} dropped, {} audited; {} packets of tracked connections",
        c.forwarded(),
        c.dropped(),
        c.audited(),
        c.ingress.established.packets + c.egress.established.packets
    );
    println!(
        "Flow events:    {} lost, {} rate-limited",
        c.events_lost(),
        c.ingress.events_suppressed + c.egress.events_suppressed
    );
}
