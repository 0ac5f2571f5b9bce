//! IPsec keys: the key file in Cilium's format, and the per-node-pair keys
//! derived from it.
//!
//! One key a line, as Cilium's `cilium-ipsec-keys` secret holds it:
//! `SPI[+] ALGORITHM KEY ICV_BITS`, for example
//! `3+ rfc4106(gcm(aes)) 0x<40 hex digits> 128`. The SPI (1 to 15) names the
//! key; a rotation adds a line with a higher SPI. `+` asks for a key per
//! pair of nodes, derived from this one (Cilium's per-tunnel keys; without
//! it every pair shares the key, which Cilium deprecated as insecure). The
//! key holds the cipher key and the 4-byte salt ESP's AEAD modes need.
//! Blank lines and `#` comments are skipped. A key is never logged, shown
//! or put in an error.

use std::{fmt, net::IpAddr, path::Path};

use sha2::{Digest as _, Sha256, Sha512};

/// The highest SPI: Cilium keeps the key's SPI in 4 bits of the packet mark.
pub const MAX_SPI: u8 = 15;

/// The largest key file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// An AEAD the kernel's ESP offers and palisade accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    /// `rfc4106(gcm(aes))`: AES-GCM with a 128, 192 or 256-bit key.
    AesGcm,
    /// `rfc7539esp(chacha20,poly1305)`: ChaCha20-Poly1305.
    ChaCha20Poly1305,
}

impl Aead {
    /// The kernel's name of the algorithm, as the key file writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AesGcm => "rfc4106(gcm(aes))",
            Self::ChaCha20Poly1305 => "rfc7539esp(chacha20,poly1305)",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::AesGcm, Self::ChaCha20Poly1305]
            .into_iter()
            .find(|aead| aead.name() == name)
    }

    /// Key lengths in bytes, the 4-byte salt included.
    const fn key_bytes(self) -> &'static [usize] {
        match self {
            Self::AesGcm => &[20, 28, 36],
            Self::ChaCha20Poly1305 => &[36],
        }
    }

    /// Integrity check value lengths in bits.
    const fn icv_bits(self) -> &'static [u16] {
        match self {
            Self::AesGcm => &[64, 96, 128],
            Self::ChaCha20Poly1305 => &[128],
        }
    }
}

/// Key bytes: shown by `Debug` as their length only, so no log, error or
/// status line can carry them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// The bytes, for the kernel.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, not shown>", self.0.len())
    }
}

/// One key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecKey {
    /// The SPI the key's security associations carry (1 to [`MAX_SPI`]).
    pub spi: u8,
    /// Whether each pair of nodes gets a key of its own derived from it.
    pub per_node_pair: bool,
    /// The algorithm.
    pub aead: Aead,
    /// Integrity check value length in bits.
    pub icv_bits: u16,
    key: SecretKey,
}

impl IpsecKey {
    /// The key the node at `source` encrypts with towards `destination`
    /// (which decrypts with the same): with per-pair keys, the first bytes
    /// of SHA-256 (SHA-512 for keys over 32 bytes) of the key, the source
    /// and the destination address, as Cilium derives them (without the
    /// boot ids, which palisade's node list does not carry); else the key.
    pub fn key_for(&self, source: IpAddr, destination: IpAddr) -> SecretKey {
        if !self.per_node_pair {
            return self.key.clone();
        }
        let key = self.key.as_bytes();
        let mut input = key.to_vec();
        input.extend(address_bytes(source));
        input.extend(address_bytes(destination));
        let hash: Vec<u8> = if key.len() <= 32 {
            Sha256::digest(&input).to_vec()
        } else {
            Sha512::digest(&input).to_vec()
        };
        SecretKey(hash[..key.len()].to_vec())
    }
}

/// An IPv4 address as 4 bytes, IPv6 as 16 (Cilium's canonical form).
fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.octets().to_vec(), |v4| v4.octets().to_vec()),
    }
}

/// The keys of a key file, by SPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecKeys {
    keys: Vec<IpsecKey>,
}

impl IpsecKeys {
    /// Every key, lowest SPI first.
    pub fn keys(&self) -> &[IpsecKey] {
        &self.keys
    }

    /// These keys but those of `spis`; the newest always stays.
    pub fn without(&self, spis: &std::collections::BTreeSet<u8>) -> Self {
        let newest = self.newest().spi;
        Self {
            keys: self
                .keys
                .iter()
                .filter(|key| key.spi == newest || !spis.contains(&key.spi))
                .cloned()
                .collect(),
        }
    }

    /// The key of the highest SPI: the one to encrypt with once every node
    /// has it.
    pub fn newest(&self) -> &IpsecKey {
        // Never empty: the reader refuses a file without a key.
        &self.keys[self.keys.len() - 1]
    }
}

/// Why a key file was refused, at its place (`file:line:column: message`,
/// or `file: message` for the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct KeyFileError {
    /// The file.
    pub file: String,
    /// Line, from 1 (0: the file as a whole).
    pub line: usize,
    /// Column, from 1 (0: the file as a whole).
    pub column: usize,
    /// What is wrong, never with the key in it.
    pub message: String,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Reads the key file at `path`: at most 64 KiB, readable by its owner
/// only.
///
/// # Errors
///
/// [`KeyFileError`] when it cannot be read, is open to group or others, or
/// a line is wrong.
pub fn read_key_file(path: &Path) -> Result<IpsecKeys, KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = path.display().to_string();
    let whole = |message: String| KeyFileError {
        file: file.clone(),
        line: 0,
        column: 0,
        message,
    };
    let metadata =
        std::fs::metadata(path).map_err(|error| whole(format!("cannot be read: {error}")))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(whole(format!(
            "holds secret keys but has mode {mode:04o}; `chmod 600` it (and change the keys if others could read them)"
        )));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(whole(format!(
            "is {} bytes; a key file is at most {MAX_FILE_BYTES} bytes",
            metadata.len()
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|error| whole(format!("cannot be read: {error}")))?;
    parse_keys(&file, &text)
}

/// Reads the keys in `text`; `file` names it in errors.
///
/// # Errors
///
/// [`KeyFileError`] at the first wrong field, or for a file without a key.
pub fn parse_keys(file: &str, text: &str) -> Result<IpsecKeys, KeyFileError> {
    let mut keys: Vec<IpsecKey> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = |column: usize, message: String| KeyFileError {
            file: file.to_owned(),
            line: index + 1,
            column,
            message,
        };
        let fields = fields(line);
        if fields
            .first()
            .is_none_or(|(_, field)| field.starts_with('#'))
        {
            continue;
        }
        if fields.len() != 4 {
            return Err(at(
                1,
                format!(
                    "a key line is `SPI[+] ALGORITHM KEY ICV_BITS` (4 fields), this one has {}{}",
                    fields.len(),
                    if fields.len() == 5 {
                        "; separate authentication and encryption keys are not supported: use an AEAD"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let (spi_at, spi_text) = fields[0];
        let (per_node_pair, digits) = match spi_text.strip_suffix('+') {
            Some(digits) => (true, digits),
            None => (false, spi_text),
        };
        let spi = digits
            .parse::<u8>()
            .ok()
            .filter(|spi| (1..=MAX_SPI).contains(spi))
            .ok_or_else(|| {
                at(
                    spi_at,
                    format!("the SPI is a number from 1 to {MAX_SPI} (with `+` for per-node-pair keys), not {spi_text:?}"),
                )
            })?;
        if keys.iter().any(|key| key.spi == spi) {
            return Err(at(spi_at, format!("SPI {spi} is given twice")));
        }
        let (aead_at, aead_text) = fields[1];
        let aead = Aead::from_name(aead_text).ok_or_else(|| {
            at(
                aead_at,
                format!(
                    "algorithm {aead_text:?} is not supported; use {} or {}",
                    Aead::AesGcm.name(),
                    Aead::ChaCha20Poly1305.name()
                ),
            )
        })?;
        let (key_at, key_text) = fields[2];
        let digits = key_text.strip_prefix("0x").unwrap_or(key_text);
        let key = hex::decode(digits).map_err(|_| {
            at(
                key_at,
                "the key is not an even number of hexadecimal digits".to_owned(),
            )
        })?;
        if !aead.key_bytes().contains(&key.len()) {
            return Err(at(
                key_at,
                format!(
                    "{} takes a key of {} bytes (the cipher key and a 4-byte salt), not {}",
                    aead.name(),
                    list(aead.key_bytes()),
                    key.len()
                ),
            ));
        }
        let (icv_at, icv_text) = fields[3];
        let icv_bits = icv_text
            .parse::<u16>()
            .ok()
            .filter(|bits| aead.icv_bits().contains(bits))
            .ok_or_else(|| {
                at(
                    icv_at,
                    format!(
                        "{} takes an ICV of {} bits, not {icv_text:?}",
                        aead.name(),
                        list(aead.icv_bits())
                    ),
                )
            })?;
        keys.push(IpsecKey {
            spi,
            per_node_pair,
            aead,
            icv_bits,
            key: SecretKey(key),
        });
    }
    if keys.is_empty() {
        return Err(KeyFileError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: "holds no key (`SPI[+] ALGORITHM KEY ICV_BITS`)".to_owned(),
        });
    }
    keys.sort_by_key(|key| key.spi);
    Ok(IpsecKeys { keys })
}

/// The whitespace-separated fields of `line` with their columns (from 1).
fn fields(line: &str) -> Vec<(usize, &str)> {
    let mut fields = Vec::new();
    let mut start = None;
    for (offset, character) in line.char_indices().chain([(line.len(), ' ')]) {
        match (character.is_whitespace(), start) {
            (true, Some(begin)) => {
                fields.push((line[..begin].chars().count() + 1, &line[begin..offset]));
                start = None;
            }
            (false, None) => start = Some(offset),
            _ => {}
        }
    }
    fields
}

/// `a, b or c`.
fn list<T: fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => items.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCM_KEY: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";

    fn error(text: &str) -> String {
        parse_keys("keys", text).unwrap_err().to_string()
    }

    #[test]
    fn cilium_s_example_line_is_read() {
        let keys = parse_keys(
            "keys",
            &format!("# rotated 2026-11\n\n3+ rfc4106(gcm(aes)) {GCM_KEY} 128\n"),
        )
        .unwrap();
        let key = keys.newest();
        assert_eq!(
            (key.spi, key.per_node_pair, key.aead, key.icv_bits),
            (3, true, Aead::AesGcm, 128)
        );
        let chacha = format!("4 rfc7539esp(chacha20,poly1305) {} 128", "ab".repeat(36));
        let keys = parse_keys(
            "keys",
            &format!("3+ rfc4106(gcm(aes)) {GCM_KEY} 128\n{chacha}\n"),
        )
        .unwrap();
        assert_eq!(keys.keys().len(), 2);
        assert_eq!(keys.newest().aead, Aead::ChaCha20Poly1305);
    }

    #[test]
    fn bad_lines_are_refused_at_their_field_without_the_key() {
        assert_eq!(
            error(&format!("\n  16+ rfc4106(gcm(aes)) {GCM_KEY} 128")),
            "keys:2:3: the SPI is a number from 1 to 15 (with `+` for per-node-pair keys), not \"16+\""
        );
        assert_eq!(
            error(&format!("3 cbc(aes) {GCM_KEY} 128")),
            "keys:1:3: algorithm \"cbc(aes)\" is not supported; use rfc4106(gcm(aes)) or rfc7539esp(chacha20,poly1305)"
        );
        let odd = format!("3 rfc4106(gcm(aes)) {}z 128", &GCM_KEY[..20]);
        let message = error(&odd);
        assert_eq!(
            message,
            "keys:1:21: the key is not an even number of hexadecimal digits"
        );
        assert_eq!(
            error("3 rfc4106(gcm(aes)) 0x0102 128"),
            "keys:1:21: rfc4106(gcm(aes)) takes a key of 20, 28 or 36 bytes (the cipher key and a 4-byte salt), not 2"
        );
        assert_eq!(
            error(&format!("3 rfc4106(gcm(aes)) {GCM_KEY} 100")),
            "keys:1:64: rfc4106(gcm(aes)) takes an ICV of 64, 96 or 128 bits, not \"100\""
        );
        assert_eq!(
            error(&format!(
                "3 rfc4106(gcm(aes)) {GCM_KEY} 128\n3 rfc4106(gcm(aes)) {GCM_KEY} 128"
            )),
            "keys:2:1: SPI 3 is given twice"
        );
        assert!(error("3 hmac(sha256) 0x01 cbc(aes) 0x02").contains("use an AEAD"));
        assert_eq!(
            error("# nothing\n"),
            "keys: holds no key (`SPI[+] ALGORITHM KEY ICV_BITS`)"
        );
        for text in [odd, format!("3 rfc4106(gcm(aes)) {GCM_KEY} 100")] {
            assert!(!error(&text).contains(&GCM_KEY[2..12]), "{text}");
        }
    }

    #[test]
    fn a_key_is_never_in_its_debug_form() {
        let keys = parse_keys("keys", &format!("3+ rfc4106(gcm(aes)) {GCM_KEY} 128")).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("<20 bytes, not shown>"), "{shown}");
        assert!(
            !shown.contains("1, 2, 3") && !shown.contains("0102"),
            "{shown}"
        );
    }

    #[test]
    fn each_pair_of_nodes_gets_its_own_key_both_ends_agree_on() {
        let keys = parse_keys("keys", &format!("3+ rfc4106(gcm(aes)) {GCM_KEY} 128")).unwrap();
        let key = keys.newest();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a_to_b = key.key_for(a, b);
        assert_eq!(a_to_b.as_bytes().len(), 20);
        assert_ne!(a_to_b, key.key_for(b, a));
        assert_ne!(a_to_b, key.key_for(a, c));
        assert_eq!(a_to_b, key.key_for("::ffff:10.0.0.1".parse().unwrap(), b));
        let mut input = hex::decode(&GCM_KEY[2..]).unwrap();
        input.extend([10, 0, 0, 1, 10, 0, 0, 2]);
        assert_eq!(a_to_b.as_bytes(), &Sha256::digest(&input)[..20]);
        let shared = parse_keys("keys", &format!("3 rfc4106(gcm(aes)) {GCM_KEY} 128")).unwrap();
        assert_eq!(
            shared.newest().key_for(a, b).as_bytes(),
            hex::decode(&GCM_KEY[2..]).unwrap()
        );
    }

    #[test]
    fn a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("palisade-ipsec-keys-{}", std::process::id()));
        std::fs::write(&path, format!("3+ rfc4106(gcm(aes)) {GCM_KEY} 128\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_key_file(&path).unwrap_err().to_string();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = read_key_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(
            refused.ends_with(
                "has mode 0644; `chmod 600` it (and change the keys if others could read them)"
            ),
            "{refused}"
        );
        assert_eq!(read.unwrap().newest().spi, 3);
    }
}
