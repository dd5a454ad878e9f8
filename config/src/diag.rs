//! Configuration errors that point at the file, the line and column, and the field.

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line and column of the offending value; 0 when unknown.
    pub line: usize,
    pub col: usize,
    /// The field's path, e.g. `routes[1].weights.new`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in file order; never empty.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The individual problems (one for an I/O error).
    pub fn diagnostics(&self) -> Vec<String> {
        match self {
            ConfigError::Io { .. } => vec![self.to_string()],
            ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
        }
    }
}

fn render(d: &[Diagnostic]) -> String {
    let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
    let mut out = format!(
        "{} error{} in configuration",
        d.len(),
        if d.len() == 1 { "" } else { "s" }
    );
    for l in lines {
        out.push_str("\n  ");
        out.push_str(&l);
    }
    out
}

/// Maps byte offsets of one source text to 1-based line and column (in characters).
pub(crate) struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Self { file, text }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }

    pub(crate) fn at(
        &self,
        span: Option<std::ops::Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, col) = span.map_or((0, 0), |s| self.line_col(s.start));
        Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            path: path.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        let loc = Locator::new("f.toml", text);
        assert_eq!(loc.line_col(0), (1, 1));
        assert_eq!(loc.line_col(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(loc.line_col(12), (2, 6));
    }
}
