//! What the runtime passes to the plugin: the `CNI_*` environment and the
//! network configuration on stdin, read with bounds.

use std::{collections::BTreeMap, io::Read, path::PathBuf, str::FromStr as _};

use rscni_types::{error::Error, types::Cmd};

/// Largest network configuration read from stdin.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Longest `CNI_ARGS` taken.
const MAX_ARGS_BYTES: usize = 64 * 1024;

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Cmd,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (empty when the runtime has none, as on a second DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`: where delegated plugins are looked for.
    pub path: Vec<PathBuf>,
}

/// The `KEY=VALUE;...` pairs of `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair, by key.
    pub pairs: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`.
    ///
    /// # Errors
    ///
    /// Code 4 when it is too long or a pair has no `=`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_ARGS_BYTES {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_ARGS is longer than {MAX_ARGS_BYTES} bytes"
            )));
        }
        let mut pairs = BTreeMap::new();
        for pair in text.split(';').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Error::InvalidEnvValue(format!("CNI_ARGS: invalid pair {pair:?}"))
            })?;
            pairs.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self { pairs })
    }

    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    pub fn pod_namespace(&self) -> Option<&str> {
        self.non_empty("K8S_POD_NAMESPACE")
    }

    /// The pod's name (`K8S_POD_NAME`).
    pub fn pod_name(&self) -> Option<&str> {
        self.non_empty("K8S_POD_NAME")
    }

    fn non_empty(&self, key: &str) -> Option<&str> {
        self.pairs
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

impl Invocation {
    /// Reads the command's environment through `var`, requiring what the
    /// reference plugins' skeleton requires for that command.
    ///
    /// # Errors
    ///
    /// Code 4 naming what is missing or invalid.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let command = var("CNI_COMMAND")
            .filter(|command| !command.is_empty())
            .ok_or_else(|| Error::missing_env(&["CNI_COMMAND"]))?;
        let command = Cmd::from_str(&command)
            .map_err(|_| Error::InvalidEnvValue(format!("unknown CNI_COMMAND: {command}")))?;
        let required: &[&str] = match command {
            Cmd::Add | Cmd::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Cmd::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Cmd::Gc => &["CNI_PATH"],
            _ => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|name| var(name).is_none_or(|value| value.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::missing_env(&missing));
        }
        let text = |name: &str| var(name).unwrap_or_default();
        let container_id = text("CNI_CONTAINERID");
        if container_id.len() > palisade_api::MAX_CONTAINER_ID_LEN {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_CONTAINERID is longer than {} characters",
                palisade_api::MAX_CONTAINER_ID_LEN
            )));
        }
        if !container_id.is_empty() {
            rscni_types::types::ContainerId::try_from(container_id.clone())?;
        }
        let ifname = text("CNI_IFNAME");
        if !ifname.is_empty() {
            rscni_types::types::InterfaceName::try_from(ifname.clone())?;
        }
        Ok(Self {
            command,
            container_id,
            netns: text("CNI_NETNS"),
            ifname,
            args: CniArgs::parse(&text("CNI_ARGS"))?,
            path: std::env::split_paths(&text("CNI_PATH")).collect(),
        })
    }
}

/// Reads the network configuration from `input`, at most
/// [`MAX_CONFIG_BYTES`].
///
/// # Errors
///
/// Code 5 when reading fails, 6 when the configuration is too large.
pub fn read_config(input: impl Read) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    input
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::IOFailure(format!("reading the network configuration: {error}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::FailedToDecode(format!(
            "the network configuration is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: BTreeMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        move |name| pairs.get(name).cloned()
    }

    #[test]
    fn add_names_every_missing_variable() {
        let error = Invocation::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]))
            .expect_err("missing variables");
        assert_eq!(u32::from(&error), 4);
        assert_eq!(
            error.details(),
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_PATH] missing"
        );
    }

    #[test]
    fn del_takes_an_empty_netns_and_version_needs_nothing() {
        let invocation = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", "/a:/b"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ]))
        .expect("DEL");
        assert_eq!(invocation.netns, "");
        assert_eq!(invocation.path, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(invocation.args.pod_namespace(), Some("default"));
        assert_eq!(invocation.args.pod_name(), Some("web-0"));
        Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).expect("VERSION");
    }

    #[test]
    fn unknown_commands_and_bad_names_are_code_4() {
        for pairs in [
            vec![("CNI_COMMAND", "FROB")],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "a/b"),
                ("CNI_PATH", "/a"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/a"),
                ("CNI_ARGS", "novalue"),
            ],
        ] {
            let error = Invocation::from_env(env(&pairs)).expect_err("invalid");
            assert_eq!(u32::from(&error), 4, "{pairs:?}: {error}");
        }
    }

    #[test]
    fn a_configuration_over_the_bound_is_refused() {
        let big = vec![b' '; usize::try_from(MAX_CONFIG_BYTES).expect("usize") + 1];
        let error = read_config(big.as_slice()).expect_err("too large");
        assert_eq!(u32::from(&error), 6);
        assert_eq!(read_config(&b"{}"[..]).expect("small"), b"{}");
    }
}
