//! End to end: under systemd (JOURNAL_STREAM set) palisaded logs to the
//! journal natively with PALISADE_* fields. The journal is a datagram socket
//! bind-mounted at /run/systemd/journal/socket in a private mount namespace.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixDatagram,
    path::Path,
    time::Duration,
};

use palisade_e2e::{Daemon, Launch, TempDir, Topology, datagrams_until, require_root, tcp_connect};

/// Mounts the fake journal over the real path, then runs palisaded.
const WITH_FAKE_JOURNAL: &str = "mount -t tmpfs tmpfs /run \
    && mkdir -p /run/systemd/journal \
    && touch /run/systemd/journal/socket \
    && mount --bind \"$FAKE_JOURNAL\" /run/systemd/journal/socket \
    && exec \"$@\"";

/// One journal entry: its fields in order.
type Entry = Vec<(String, String)>;

/// Parses one datagram of the journal's native protocol (systemd.journal-fields,
/// "Native Journal Protocol"): `KEY=value\n`, or `KEY\n` + 64-bit little-endian
/// length + value + `\n` for values that may hold newlines.
fn parse_entry(mut bytes: &[u8]) -> Entry {
    let mut fields = Vec::new();
    while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
        let line = &bytes[..end];
        bytes = &bytes[end + 1..];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            continue;
        }
        let (length, rest) = bytes.split_at(8.min(bytes.len()));
        let length = usize::try_from(u64::from_le_bytes(
            length.try_into().expect("8-byte length"),
        ))
        .expect("length");
        let (value, rest) = rest.split_at(length.min(rest.len()));
        fields.push((
            String::from_utf8_lossy(line).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        bytes = rest.strip_prefix(b"\n").expect("a newline after the value");
    }
    fields
}

/// Journal entries received until `done` holds or 5 s pass.
fn entries_until(journal: &UnixDatagram, done: impl Fn(&[Entry]) -> bool) -> Vec<Entry> {
    let parse_all = |datagrams: &[Vec<u8>]| -> Vec<Entry> {
        datagrams.iter().map(|d| parse_entry(d)).collect()
    };
    let datagrams = datagrams_until(journal, Duration::from_secs(5), |d| done(&parse_all(d)));
    parse_all(&datagrams)
}

/// Whether `entry` has each (field, value prefix).
fn has_fields(entry: &Entry, wanted: &[(&str, &str)]) -> bool {
    wanted.iter().all(|(field, prefix)| {
        entry
            .iter()
            .any(|(name, value)| name == field && value.starts_with(prefix))
    })
}

#[test]
#[ignore = "privileged: needs root (namespaces, BPF); `cargo xtask test` runs it"]
fn journal_entries_carry_palisade_fields() {
    require_root();
    let topology = Topology::new().expect("namespaces");
    let workdir = TempDir::new("journal").expect("workdir");
    let fake = workdir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&fake).expect("fake journal");
    let fake_path = fake.display().to_string();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let _daemon = Daemon::start_with(
        &topology.node,
        &repo.join("etc/palisade.toml"),
        &repo.join("etc/policies.d"),
        workdir.path(),
        &Launch {
            env: &[("JOURNAL_STREAM", "8:1"), ("FAKE_JOURNAL", &fake_path)],
            wrapper: &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                WITH_FAKE_JOURNAL,
                "sh",
            ],
            ..Launch::default()
        },
    )
    .expect("palisaded starts");

    let applied = [
        ("MESSAGE", "policy applied"),
        ("PALISADE_GENERATION", "1"),
        ("PALISADE_POLICY", "host-ssh-from-bastion"),
        ("SYSLOG_IDENTIFIER", "palisaded"),
        ("CODE_FILE", "daemon/src/engine.rs"),
        ("PRIORITY", "5"),
    ];
    let entries = entries_until(&journal, |e| {
        e.iter().any(|entry| has_fields(entry, &applied))
    });
    assert!(
        entries.iter().any(|entry| has_fields(entry, &applied)),
        "no 'policy applied' entry with its fields in {entries:#?}"
    );

    let outsider: IpAddr = Topology::OUTSIDER.parse().expect("address");
    let ssh = SocketAddr::new(Topology::NODE.parse().expect("address"), 22);
    tcp_connect(&topology.client, outsider, ssh, Duration::from_millis(300)).expect("connect");
    let dropped = [
        ("PALISADE_VERDICT", "DROPPED"),
        ("PALISADE_REASON", "POLICY_DENIED"),
        ("PALISADE_SRC", "10.200.0.100:"),
        ("PALISADE_DST", "10.200.0.1:22"),
        ("PALISADE_INTERFACE", "eth0"),
        ("PALISADE_GENERATION", "1"),
    ];
    let entries = entries_until(&journal, |e| {
        e.iter().any(|entry| has_fields(entry, &dropped))
    });
    assert!(
        entries.iter().any(|entry| has_fields(entry, &dropped)),
        "no audit-trail entry for the drop in {entries:#?}"
    );
}
