//! Reading policies from TOML, with every error placed at its line and column.

use serde::de::DeserializeOwned;
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::{
    diagnostic::{Diagnostic, Diagnostics},
    model::Policy,
    validate::{ValidateOptions, validate_with},
};

/// Parses and validates one TOML policy document. `file` names it in errors.
///
/// # Errors
///
/// Every syntax, schema and validation problem found, each with its position.
pub fn policy_from_toml(file: &str, text: &str) -> Result<Policy, Diagnostics> {
    policy_from_toml_with(file, text, ValidateOptions::default())
}

/// Parses and validates one TOML policy document with `options`.
///
/// # Errors
///
/// Every syntax, schema and validation problem found, each with its position.
pub fn policy_from_toml_with(
    file: &str,
    text: &str,
    options: ValidateOptions,
) -> Result<Policy, Diagnostics> {
    let policy: Policy = from_toml(file, text)?;
    let problems = validate_with(&policy, options);
    if problems.is_empty() {
        return Ok(policy);
    }
    let document = DeTable::parse(text).ok();
    Err(Diagnostics(
        problems
            .into_iter()
            .map(|problem| {
                let offset = document
                    .as_ref()
                    .and_then(|document| locate(document, &problem.path, Target::Key));
                Diagnostic::at(file, text, offset, problem.path, problem.message)
                    .with_hint(problem.hint)
            })
            .collect(),
    ))
}

/// Deserialises any TOML document, placing a syntax or schema error at its
/// file, line, column and field path. `file` names the text in errors.
///
/// # Errors
///
/// The first syntax or schema problem, with its position.
pub fn from_toml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Diagnostics> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| {
        Diagnostics(vec![Diagnostic::at(
            file,
            text,
            error.span().map(|span| span.start),
            "",
            error.message().trim_end(),
        )])
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let field = error.path().to_string();
        let inner = error.into_inner();
        let field = if field == "." { String::new() } else { field };
        // The path names the exact place: the key of an unknown field, the
        // value of a bad one. toml's own span is the fallback.
        let target = if inner.message().starts_with("unknown field") {
            Target::Key
        } else {
            Target::Value
        };
        let offset = DeTable::parse(text)
            .ok()
            .and_then(|document| locate(&document, &field, target))
            .or(inner.span().map(|span| span.start));
        Diagnostics(vec![Diagnostic::at(
            file,
            text,
            offset,
            field,
            inner.message().trim_end(),
        )])
    })
}

/// The policy formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML: one policy per file.
    Toml,
    /// YAML: one policy per document, `---` between documents.
    Yaml,
}

impl Format {
    /// The format of `file` by its extension (`.yaml`/`.yml`, `.toml`); for
    /// other names (standard input) by the first line that is not blank or a
    /// comment: `key: value` is YAML, `key = value` or `[table]` is TOML.
    pub fn of(file: &str, text: &str) -> Self {
        let lower = file.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            return Self::Yaml;
        }
        if lower.ends_with(".toml") {
            return Self::Toml;
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'));
        match first {
            Some(line) if line.starts_with("---") || line.starts_with("- ") => Self::Yaml,
            Some(line) => match (line.find(':'), line.find('=')) {
                (Some(colon), Some(equals)) if colon < equals => Self::Yaml,
                (Some(_), None) => Self::Yaml,
                _ => Self::Toml,
            },
            None => Self::Toml,
        }
    }
}

/// Whether a file name is a policy file when a directory is read:
/// `*.toml`, `*.yaml` or `*.yml`.
pub fn is_policy_file(name: &std::path::Path) -> bool {
    name.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| matches!(ext.to_ascii_lowercase().as_str(), "toml" | "yaml" | "yml"))
}

/// Parses and validates the policies in `text`, TOML or YAML as
/// [`Format::of`] says. `file` names it in errors.
///
/// # Errors
///
/// Every problem found, each with its position.
pub fn policies_from_text(file: &str, text: &str) -> Result<Vec<Policy>, Diagnostics> {
    policies_from_text_with(file, text, ValidateOptions::default())
}

/// [`policies_from_text`] with `options`.
///
/// # Errors
///
/// Every problem found, each with its position.
pub fn policies_from_text_with(
    file: &str,
    text: &str,
    options: ValidateOptions,
) -> Result<Vec<Policy>, Diagnostics> {
    match Format::of(file, text) {
        Format::Toml => policy_from_toml_with(file, text, options).map(|policy| vec![policy]),
        Format::Yaml => crate::yaml::policies_from_yaml_with(file, text, options),
    }
}

/// Serialises a policy as TOML.
///
/// # Errors
///
/// When the policy cannot be represented in TOML (it always can today).
pub fn policy_to_toml(policy: &Policy) -> Result<String, toml::ser::Error> {
    toml::to_string_pretty(policy)
}

/// Which part of a `key = value` pair a position should point at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Key,
    Value,
}

/// Byte offset of what `path` (such as `spec.ingress[0].fromCIDR[1]`) names:
/// for a path ending in a key, that key or its value (`target`); for one
/// ending in an index, the element. For a field that is absent (a problem
/// about a missing key), where the innermost enclosing table or array that
/// is present starts.
fn locate(document: &Spanned<DeTable<'_>>, path: &str, target: Target) -> Option<usize> {
    let mut offset = document.span().start;
    let mut table = Some(document.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for segment in path_segments(path) {
        let found = match segment {
            Segment::Key(key) => table
                .and_then(|table| table.iter().find(|(name, _)| name.get_ref() == key))
                .map(|(name, value)| {
                    let at = match target {
                        Target::Key => name.span().start,
                        Target::Value => value.span().start,
                    };
                    (at, value)
                }),
            Segment::Index(index) => array
                .and_then(|items| items.get(index))
                .map(|value| (value.span().start, value)),
        };
        let Some((at, value)) = found else {
            return Some(offset);
        };
        offset = at;
        (table, array) = match value.get_ref() {
            DeValue::Table(inner) => (Some(inner), None),
            DeValue::Array(items) => (None, Some(&items[..])),
            _ => (None, None),
        };
    }
    Some(offset)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|part| !part.is_empty()) {
        let (key, indices) = part.find('[').map_or((part, ""), |i| part.split_at(i));
        segments.push(Segment::Key(key));
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            if let Ok(index) = index.parse() {
                segments.push(Segment::Index(index));
            }
        }
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion = "cilium.io/v2"
kind = "CiliumClusterwideNetworkPolicy"

[metadata]
name = "ssh"

[spec]
nodeSelector = {}

[[spec.ingress]]
fromCIDR = ["192.0.2.0/24"]

[[spec.ingress.toPorts]]
ports = [{ port = "22", protocol = "TCP" }]
"#;

    fn error(text: &str) -> Diagnostic {
        let mut diagnostics = policy_from_toml("p.toml", text).unwrap_err().0;
        assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
        diagnostics.remove(0)
    }

    #[test]
    fn parses_a_host_policy() {
        let policy = policy_from_toml("p.toml", GOOD).unwrap();
        let rule = policy.spec.unwrap();
        assert_eq!(
            rule.ingress[0].from_cidr.as_deref().unwrap_or_default()[0].to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            rule.ingress[0].to_ports[0].ports[0].port,
            Some(crate::model::Port::Number(22))
        );
    }

    #[test]
    fn unknown_field_is_placed() {
        let text = GOOD.replace("fromCIDR =", "fromCidr =");
        let d = error(&text);
        assert_eq!((d.line, d.column), (Some(12), Some(1)), "{d}");
        assert!(d.message.contains("unknown field `fromCidr`"), "{d}");
        assert_eq!(d.field, "spec.ingress[0].fromCidr");
    }

    #[test]
    fn malformed_cidr_is_placed() {
        let text = GOOD.replace("192.0.2.0/24", "192.0.2.300/24");
        let d = error(&text);
        assert_eq!((d.line, d.column), (Some(12), Some(13)), "{d}");
        assert_eq!(d.field, "spec.ingress[0].fromCIDR[0]");
        assert!(d.message.contains("invalid CIDR \"192.0.2.300/24\""), "{d}");
    }

    #[test]
    fn bad_value_is_placed_at_the_value_not_the_key() {
        let text = GOOD.replace(
            "kind = \"CiliumClusterwideNetworkPolicy\"",
            "kind = \"Nope\"",
        );
        let d = error(&text);
        assert_eq!(
            (d.line, d.column, d.field.as_str()),
            (Some(3), Some(8), "kind"),
            "{d}"
        );
    }

    #[test]
    fn named_port_is_refused_in_a_host_policy_with_a_hint() {
        let text = GOOD.replace("port = \"22\"", "port = \"ssh\"");
        let d = error(&text);
        assert_eq!((d.line, d.column), (Some(15), Some(12)), "{d}");
        assert_eq!(d.field, "spec.ingress[0].toPorts[0].ports[0].port");
        assert_eq!(
            d.message,
            "named port \"ssh\" cannot be resolved for a host policy"
        );
        assert_eq!(d.hint.as_deref(), Some("write the port number"));
    }

    #[test]
    fn syntax_error_is_placed() {
        let d = error("kind = \n");
        assert_eq!(d.line, Some(1), "{d}");
        assert!(d.field.is_empty());
    }

    #[test]
    fn validation_errors_are_placed_and_all_reported() {
        let text = GOOD.replace("[[spec.ingress]]", "[[spec.ingressx]]");
        assert!(policy_from_toml("p.toml", &text).is_err());
        let text = r#"
kind = "CiliumClusterwideNetworkPolicy"
[metadata]
name = ""
[spec]
nodeSelector = {}
[[spec.ingress.toPorts]]
ports = [{ port = 80, endPort = 70 }, { port = 70000 }]
"#;
        let diagnostics = policy_from_toml("p.toml", text).unwrap_err().0;
        assert_eq!(
            diagnostics.len(),
            1,
            "range error comes from the parser first"
        );
        let text = r#"
kind = "CiliumClusterwideNetworkPolicy"
[metadata]
name = ""
[spec]
nodeSelector = {}
"#;
        let diagnostics = policy_from_toml("p.toml", text).unwrap_err().0;
        let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "p.toml:4:1: metadata.name: a policy needs a non-empty name",
                "p.toml:5:2: spec: rule must have at least one of ingress, ingressDeny, egress or egressDeny",
            ]
        );
    }

    #[test]
    fn the_format_comes_from_the_name_or_the_first_line() {
        assert_eq!(Format::of("a.yml", ""), Format::Yaml);
        assert_eq!(Format::of("a.TOML", "x: y"), Format::Toml);
        assert_eq!(
            Format::of("<stdin>", "# c\nkind: CiliumNetworkPolicy"),
            Format::Yaml
        );
        assert_eq!(Format::of("<stdin>", "kind = \"a:b\""), Format::Toml);
        assert_eq!(Format::of("<stdin>", "[metadata]"), Format::Toml);
        assert_eq!(Format::of("<stdin>", "---\n"), Format::Yaml);
    }

    #[test]
    fn round_trips_through_toml() {
        let policy = policy_from_toml("p.toml", GOOD).unwrap();
        let text = policy_to_toml(&policy).unwrap();
        assert_eq!(policy_from_toml("again.toml", &text).unwrap(), policy);
    }
}
