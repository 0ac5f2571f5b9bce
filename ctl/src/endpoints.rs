//! `palisadectl endpoint list`: the pod endpoints palisade-cni registered
//! (as `cilium endpoint list`).

use clap::Subcommand;
use palisade_api::{Client, EndpointList};

use crate::output::{Format, columns, print};

/// `palisadectl endpoint ...`.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// List the registered pod endpoints.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Runs an `endpoint` subcommand.
///
/// # Errors
///
/// When the daemon is unreachable.
pub async fn run(client: &Client, command: EndpointCommand) -> anyhow::Result<()> {
    match command {
        EndpointCommand::List { output } => {
            let list = client.endpoints().await?;
            print(output, &list, |list| print!("{}", table(list)))
        }
    }
}

fn table(list: &EndpointList) -> String {
    let mut rows = vec![
        [
            "POD",
            "CONTAINER",
            "INTERFACE",
            "HOST INTERFACE",
            "ADDRESSES",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for endpoint in &list.endpoints {
        let registration = &endpoint.registration;
        let pod = match (&registration.namespace, &registration.pod_name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => "-".to_owned(),
        };
        let addresses: Vec<String> = registration
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        rows.push(vec![
            pod,
            endpoint.identity.to_string(),
            registration.key.container_id.chars().take(12).collect(),
            registration.key.interface.clone(),
            registration.host_interface.clone(),
            addresses.join(","),
        ]);
    }
    columns(&rows)
}
