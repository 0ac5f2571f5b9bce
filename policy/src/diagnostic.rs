//! Errors that point at the file, line, column and field they are about.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem found in a source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file (or other source name) the problem is in.
    pub file: String,
    /// 1-based line, when the position is known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the position is known.
    pub column: Option<usize>,
    /// The field path, such as `spec.ingress[0].fromCIDR[1]`; empty for syntax errors.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is more to say than the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at byte `offset` of `text` (or at no known position).
    pub fn at(
        file: &str,
        text: &str,
        offset: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = match offset.map(|offset| line_column(text, offset)) {
            Some((line, column)) => (Some(line), Some(column)),
            None => (None, None),
        };
        Self {
            file: file.to_owned(),
            line,
            column,
            field: bounded(field.into()),
            message: bounded(message.into()),
            hint: None,
        }
    }

    /// A diagnostic at a known line and column (or none), with the field
    /// path and message cut to [`MAX_TEXT`] characters.
    pub fn placed(
        file: &str,
        position: Option<(usize, usize)>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            field: bounded(field.into()),
            message: bounded(message.into()),
            hint: None,
        }
    }

    /// The same diagnostic with `hint` attached.
    #[must_use]
    pub fn with_hint(self, hint: Option<String>) -> Self {
        Self { hint, ..self }
    }
}

/// Longest field path or message a diagnostic repeats (characters): a
/// hostile file's 100 KB key must not come back 100 KB long per problem.
pub const MAX_TEXT: usize = 512;

/// `text` cut to [`MAX_TEXT`] characters, marked where it was cut.
fn bounded(text: String) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        None => text,
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in one or more files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (counted in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbb = \"é2\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(line_column(text, text.find('2').unwrap()), (2, 8));
    }

    #[test]
    fn display_names_file_position_and_field() {
        let d = Diagnostic::at("p.toml", "x\ny", Some(2), "spec.ingress", "bad");
        assert_eq!(d.to_string(), "p.toml:2:1: spec.ingress: bad");
    }
}
