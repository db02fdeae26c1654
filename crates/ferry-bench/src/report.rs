//! Human-readable output: every report renders as a two-column table of labelled figures.

use std::fmt::Write;

/// A table of `label  value` rows under a title.
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Self {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(mut self, label: &str, value: impl std::fmt::Display) -> Self {
        self.rows.push((label.to_owned(), value.to_string()));
        self
    }

    /// Adds a row only when there is a value.
    pub fn row_opt<T: std::fmt::Display>(self, label: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.row(label, v),
            None => self,
        }
    }

    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (label, value) in &self.rows {
            let _ = writeln!(out, "  {label:<width$}  {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_aligned_and_empty_options_skipped() {
        let text = Table::new("transfer")
            .row("streams", 4)
            .row("upload MiB/s", "1234.5")
            .row_opt::<u32>("absent", None)
            .render();
        assert_eq!(
            text,
            "transfer\n  streams       4\n  upload MiB/s  1234.5\n"
        );
    }
}
