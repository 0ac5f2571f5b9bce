//! Reading and writing policies as YAML (what `kubectl` and Cilium use),
//! with every error placed at its line and column. A file may hold several
//! documents (`---`); each is one policy.
//!
//! yaml_serde (the YAML organisation's serde_yaml) does the (de)serialising;
//! yaml-rust2's marked events give the position of every field path, for the
//! problems found after parsing.

use std::collections::BTreeMap;

use serde::Deserialize;
use yaml_rust2::{
    parser::{Event, Parser},
    scanner::{Marker, ScanError},
};

use crate::{
    diagnostic::{Diagnostic, Diagnostics},
    model::Policy,
    validate::{ValidateOptions, validate_with},
};

/// Parses and validates every policy document in `text`, with default
/// [`ValidateOptions`]. `file` names it in errors.
///
/// # Errors
///
/// Every problem found: the first syntax or schema problem of each policy,
/// or all validation problems, each with its position.
pub fn policies_from_yaml(file: &str, text: &str) -> Result<Vec<Policy>, Diagnostics> {
    policies_from_yaml_with(file, text, ValidateOptions::default())
}

/// Parses and validates every policy in `text`: one per document, or the
/// `items` of a `kind: List` document (what `kubectl get -o yaml` prints).
///
/// # Errors
///
/// Every problem found: the first syntax or schema problem of each policy,
/// or all validation problems, each with its position.
pub fn policies_from_yaml_with(
    file: &str,
    text: &str,
    options: ValidateOptions,
) -> Result<Vec<Policy>, Diagnostics> {
    // A walk that records nothing: syntax, depth and how many documents,
    // before yaml_serde reads it. Positions are walked for only when a
    // problem has to be placed.
    let checked = Positions::walk(text, 0).map_err(|error| {
        let (mark, message) = match &error {
            WalkError::Syntax(error) => (*error.marker(), error.info().to_owned()),
            WalkError::TooDeep(mark) => (
                *mark,
                format!("nested deeper than {MAX_DEPTH} levels (a policy needs about 12); refused"),
            ),
        };
        Diagnostics(vec![placed(
            file,
            Some((mark.line(), mark.col() + 1)),
            String::new(),
            message,
        )])
    })?;
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    // After a syntax error yaml_serde's document iterator repeats that error
    // for ever; yaml-rust2 counted the documents.
    let documents = yaml_serde::Deserializer::from_str(text).take(checked.documents.len().max(1));
    let positions = std::cell::OnceCell::new();
    let find = |document: usize, path: &str, target: Target| {
        positions
            .get_or_init(|| Positions::of(text).unwrap_or_default())
            .find(document, path, target)
    };
    for (number, document) in documents.enumerate() {
        let value = match Option::<yaml_serde::Value>::deserialize(document) {
            Ok(Some(value)) => value,
            // An empty document (a trailing `---`, a file of comments).
            Ok(None) => continue,
            Err(error) => {
                let position = error
                    .location()
                    .map(|location| (location.line(), location.column()));
                problems.push(placed(file, position, String::new(), message(&error)));
                break;
            }
        };
        for (prefix, item) in list_items(value) {
            let parsed: Result<Policy, _> = serde_path_to_error::deserialize(item);
            let policy = match parsed {
                Ok(policy) => policy,
                Err(error) => {
                    let field = error.path().to_string();
                    let field = if field == "." {
                        prefix.trim_end_matches('.').to_owned()
                    } else {
                        format!("{prefix}{field}")
                    };
                    let text = message(error.inner());
                    // The path names the exact place: the key of an unknown
                    // field, the value of a bad one.
                    let target = if text.starts_with("unknown field") {
                        Target::Key
                    } else {
                        Target::Value
                    };
                    let position = find(number, &field, target);
                    problems.push(placed(file, position, field, text));
                    continue;
                }
            };
            let found = validate_with(&policy, options);
            if found.is_empty() {
                policies.push(policy);
            }
            for problem in found {
                let path = format!("{prefix}{}", problem.path);
                let path = path.trim_end_matches('.').to_owned();
                let position = find(number, &path, Target::Key);
                problems
                    .push(placed(file, position, path, problem.message).with_hint(problem.hint));
            }
        }
    }
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(Diagnostics(problems))
    }
}

/// Walks `text` as [`policies_from_yaml`] does before deserialising it
/// (every field's position, within the depth and size bounds) and says how
/// many documents it holds; for measuring that walk on its own
/// (`cargo xtask bench policy`).
///
/// # Errors
///
/// The first syntax error, or nesting too deep, as a message.
pub fn walk_field_positions(text: &str) -> Result<usize, String> {
    match Positions::of(text) {
        Ok(positions) => Ok(positions.documents.len()),
        Err(WalkError::Syntax(error)) => Err(error.info().to_owned()),
        Err(WalkError::TooDeep(_)) => Err(format!("nested deeper than {MAX_DEPTH} levels")),
    }
}

/// A `kind: List` document's items with their path prefixes (`items[0].`);
/// any other document as itself.
fn list_items(value: yaml_serde::Value) -> Vec<(String, yaml_serde::Value)> {
    let is_list = value.get("kind").and_then(yaml_serde::Value::as_str) == Some("List");
    match value.get("items").and_then(yaml_serde::Value::as_sequence) {
        Some(items) if is_list => items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("items[{i}]."), item.clone()))
            .collect(),
        _ => vec![(String::new(), value)],
    }
}

/// Serialises policies as YAML, one document each.
///
/// # Errors
///
/// When a policy cannot be represented in YAML (it always can today).
pub fn policies_to_yaml(policies: &[Policy]) -> Result<String, yaml_serde::Error> {
    let mut text = String::new();
    for (i, policy) in policies.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&yaml_serde::to_string(policy)?);
    }
    Ok(text)
}

/// yaml_serde's message without its own field path prefix and " at line L
/// column C" (the diagnostic carries both).
fn message(error: &yaml_serde::Error) -> String {
    let mut text = error.to_string();
    if let Some(location) = error.location() {
        text = text.replace(
            &format!(" at line {} column {}", location.line(), location.column()),
            "",
        );
    }
    match text.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => rest.to_owned(),
        _ => text,
    }
}

fn placed(
    file: &str,
    position: Option<(usize, usize)>,
    field: String,
    message: impl Into<String>,
) -> Diagnostic {
    Diagnostic::placed(file, position, field, message)
}

/// Which part of a `key: value` pair a position should point at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Key,
    Value,
}

/// A 1-based line and column.
type Position = (usize, usize);

/// Where a field's key (absent for sequence elements and the root) and value start.
type FieldPositions = (Option<Position>, Position);

/// Deepest nesting of mappings and sequences read. Cilium's policies nest
/// about 12 deep; the limit keeps hostile input from exhausting the stack
/// of the deserialiser.
pub const MAX_DEPTH: usize = 64;

/// Bytes of field paths the positions may hold per byte of input (plus a
/// fixed allowance): memory stays linear in the input whatever its shape
/// (long keys over long sequences would otherwise repeat a key per element).
/// Past the budget, fields are read without positions.
const PATH_BYTES_PER_INPUT_BYTE: usize = 8;
const PATH_BYTES_ALLOWANCE: usize = 1 << 20;
/// What one recorded position costs besides its path.
const POSITION_OVERHEAD: usize = 64;

/// Why the positions could not be read.
enum WalkError {
    /// A YAML syntax error.
    Syntax(ScanError),
    /// Nested deeper than [`MAX_DEPTH`], at this mark.
    TooDeep(Marker),
}

impl From<ScanError> for WalkError {
    fn from(error: ScanError) -> Self {
        Self::Syntax(error)
    }
}

/// The positions of each field path, per document.
#[derive(Default)]
struct Positions {
    documents: Vec<BTreeMap<String, FieldPositions>>,
}

impl Positions {
    /// The positions in `text`, read event by event (without recursion).
    ///
    /// # Errors
    ///
    /// The first syntax error, or nesting deeper than [`MAX_DEPTH`].
    fn of(text: &str) -> Result<Self, WalkError> {
        let budget = text
            .len()
            .saturating_mul(PATH_BYTES_PER_INPUT_BYTE)
            .saturating_add(PATH_BYTES_ALLOWANCE);
        Self::walk(text, budget)
    }

    /// [`Positions::of`] recording at most `budget` bytes of paths (0:
    /// only the documents, for the syntax and depth checks).
    ///
    /// # Errors
    ///
    /// As [`Positions::of`].
    fn walk(text: &str, budget: usize) -> Result<Self, WalkError> {
        let mut walker = Walker {
            budget,
            ..Walker::default()
        };
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, mark) = parser.next_token()?;
            if event == Event::StreamEnd {
                return Ok(walker.positions);
            }
            walker.on_event(event, mark);
            if walker.stack.len() > MAX_DEPTH {
                return Err(WalkError::TooDeep(mark));
            }
        }
    }

    /// Where `path` is; for a field that is absent (a problem about a
    /// missing key), where the innermost enclosing mapping or sequence that
    /// is present starts.
    fn find(&self, document: usize, path: &str, target: Target) -> Option<(usize, usize)> {
        let fields = self.documents.get(document)?;
        if let Some((key, value)) = fields.get(path) {
            return match target {
                Target::Key => key.or(Some(*value)),
                Target::Value => Some(*value),
            };
        }
        let mut enclosing = path;
        while let Some(end) = enclosing.rfind(['.', '[']) {
            enclosing = &enclosing[..end];
            if let Some((_, value)) = fields.get(enclosing) {
                return Some(*value);
            }
        }
        fields.get("").map(|(_, value)| *value)
    }
}

/// One open collection while walking the events.
enum Frame {
    Mapping {
        path: String,
        /// The key read, waiting for its value, and where it was.
        key: Option<(String, (usize, usize))>,
        /// No key read yet.
        fresh: bool,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    positions: Positions,
    stack: Vec<Frame>,
    /// Bytes of paths still to be recorded; at 0 recording stops.
    budget: usize,
}

impl Walker {
    /// Records a value starting at `at` and returns its path, advancing the
    /// parent; `None` when the event was a mapping key instead.
    fn value(&mut self, at: (usize, usize), scalar: Option<&str>) -> Option<String> {
        let (path, key_at) = match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Mapping { path, key, fresh }) => match key.take() {
                None => {
                    *key = Some((scalar.unwrap_or_default().to_owned(), at));
                    // A block mapping's start event is marked after its
                    // first key; the mapping starts where that key does.
                    if std::mem::take(fresh)
                        && let Some(document) = self.positions.documents.last_mut()
                        && let Some((_, start)) = document.get_mut(path.as_str())
                        && at < *start
                    {
                        *start = at;
                    }
                    return None;
                }
                Some((name, key_at)) => {
                    let full = if path.is_empty() {
                        name
                    } else {
                        format!("{path}.{name}")
                    };
                    (full, Some(key_at))
                }
            },
            Some(Frame::Sequence { path, next }) => {
                let full = format!("{path}[{next}]");
                *next += 1;
                (full, None)
            }
        };
        let cost = path.len().saturating_add(POSITION_OVERHEAD);
        if self.budget < cost {
            // Out of budget: from here on nothing is recorded, and paths are
            // no longer built (children get an empty one).
            self.budget = 0;
            return Some(String::new());
        }
        self.budget -= cost;
        if let Some(document) = self.positions.documents.last_mut() {
            document.insert(path.clone(), (key_at, at));
        }
        Some(path)
    }

    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = (mark.line(), mark.col() + 1);
        match event {
            Event::DocumentStart => {
                self.positions.documents.push(BTreeMap::new());
                self.stack.clear();
            }
            Event::Scalar(text, ..) => {
                self.value(at, Some(&text));
            }
            Event::Alias(_) => {
                self.value(at, None);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.value(at, None) {
                    self.stack.push(Frame::Mapping {
                        path,
                        key: None,
                        fresh: true,
                    });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.value(at, None) {
                    self.stack.push(Frame::Sequence { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{policy_from_toml, policy_to_toml};

    const GOOD: &str = "\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: ssh
spec:
  nodeSelector: {}
  ingress:
    - fromCIDR:
        - 192.0.2.0/24
      toPorts:
        - ports:
            - port: \"22\"
              protocol: TCP
";

    fn errors(text: &str) -> Vec<String> {
        policies_from_yaml("p.yaml", text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_what_the_toml_codec_reads() {
        let policies = policies_from_yaml("p.yaml", GOOD).unwrap();
        let toml = r#"
apiVersion = "cilium.io/v2"
kind = "CiliumClusterwideNetworkPolicy"
metadata = { name = "ssh" }
[spec]
nodeSelector = {}
[[spec.ingress]]
fromCIDR = ["192.0.2.0/24"]
toPorts = [{ ports = [{ port = "22", protocol = "TCP" }] }]
"#;
        assert_eq!(policies, [policy_from_toml("p.toml", toml).unwrap()]);
    }

    #[test]
    fn deep_nesting_is_refused_with_its_position_instead_of_overflowing_the_stack() {
        // 10 KB that used to overflow the stack of whatever parsed it.
        let deep = format!("{}x\n", "- ".repeat(5000));
        let found = errors(&deep);
        assert_eq!(
            found,
            ["p.yaml:1:129: nested deeper than 64 levels (a policy needs about 12); refused"]
        );
        // Flow collections: the scanner's own limit, placed too.
        let flow = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(errors(&flow), ["p.yaml:1:256: recursion limit exceeded"]);
    }

    #[test]
    fn positions_stay_linear_in_the_input_whatever_its_shape() {
        // A 100 KB key over 20,000 elements: one path per element repeating
        // the key would be 2 GB.
        let key = "k".repeat(100_000);
        let text = format!("? {key}\n: [{}]\n", vec!["1"; 20_000].join(","));
        let Ok(positions) = Positions::of(&text) else {
            panic!("the walk fails");
        };
        let recorded: usize = positions
            .documents
            .iter()
            .flat_map(BTreeMap::keys)
            .map(|path| path.len() + POSITION_OVERHEAD)
            .sum();
        assert!(
            recorded <= text.len() * PATH_BYTES_PER_INPUT_BYTE + PATH_BYTES_ALLOWANCE,
            "{recorded} bytes of paths for {} bytes of input",
            text.len()
        );
        // And the problem it gives is short.
        let found = errors(&text);
        assert!(found.iter().all(|line| line.len() < 2_000), "{found:?}");
    }

    #[test]
    fn several_documents_are_several_policies() {
        let two = format!(
            "{GOOD}---\n{}---\n",
            GOOD.replace("name: ssh", "name: ssh-2")
        );
        let policies = policies_from_yaml("p.yaml", &two).unwrap();
        assert_eq!(policies.len(), 2);
        assert_eq!(policies[1].metadata.name, "ssh-2");
    }

    #[test]
    fn schema_errors_are_placed() {
        assert_eq!(
            errors(&GOOD.replace("fromCIDR:", "fromCidr:")),
            [
                "p.yaml:8:7: spec.ingress[0].fromCidr: unknown field `fromCidr`, expected one of `fromEndpoints`, `fromRequires`, `fromCIDR`, `fromCIDRSet`, `fromEntities`, `fromGroups`, `fromNodes`, `toPorts`, `icmps`, `authentication`"
            ]
        );
        let bad_cidr = errors(&GOOD.replace("192.0.2.0/24", "192.0.2.300/24"));
        assert_eq!(bad_cidr.len(), 1);
        assert!(
            bad_cidr[0].starts_with(
                "p.yaml:9:11: spec.ingress[0].fromCIDR[0]: invalid CIDR \"192.0.2.300/24\""
            ),
            "{bad_cidr:?}"
        );
    }

    #[test]
    fn validation_errors_are_placed_per_document() {
        let two = format!("{GOOD}---\n{}", GOOD.replace("name: ssh", "name: Bad_Name"));
        let found = errors(&two);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("p.yaml:18:3: metadata.name: invalid name \"Bad_Name\""),
            "{found:?}"
        );
    }

    #[test]
    fn a_list_holds_policies_and_its_errors_name_the_item() {
        let item = GOOD.replace('\n', "\n    ");
        let list = format!("apiVersion: v1\nkind: List\nitems:\n  - {item}");
        let policies = policies_from_yaml("l.yaml", &list).unwrap();
        assert_eq!(policies, policies_from_yaml("p.yaml", GOOD).unwrap());
        let found = errors(&list.replace("fromCIDR:", "fromCidr:"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "p.yaml:11:11: items[0].spec.ingress[0].fromCidr: unknown field `fromCidr`"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn syntax_errors_are_placed() {
        let found = errors("kind: [unclosed\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("p.yaml:2:1: "), "{found:?}");
    }

    #[test]
    fn round_trips_through_yaml_and_toml() {
        let policies = policies_from_yaml("p.yaml", GOOD).unwrap();
        let yaml = policies_to_yaml(&policies).unwrap();
        assert_eq!(policies_from_yaml("again.yaml", &yaml).unwrap(), policies);
        let toml = policy_to_toml(&policies[0]).unwrap();
        assert_eq!(policy_from_toml("p.toml", &toml).unwrap(), policies[0]);
    }
}
