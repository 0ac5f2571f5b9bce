//! Output formats shared by the commands: a human table, JSON or YAML.

use clap::ValueEnum;
use serde::Serialize;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML, or calls `table` for the human form.
///
/// # Errors
///
/// When `value` cannot be serialised.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T),
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", yaml_serde::to_string(value)?),
        Format::Table => table(value),
    }
    Ok(())
}

/// Rows padded into columns, two spaces apart, the last column unpadded.
pub fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (column, cell) in row.iter().enumerate() {
            if column == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let rows = vec![
            vec!["NAME".to_owned(), "RULES".to_owned()],
            vec!["allow-ssh".to_owned(), "2".to_owned()],
        ];
        assert_eq!(columns(&rows), "NAME       RULES\nallow-ssh  2\n");
    }
}
