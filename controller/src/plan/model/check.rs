//! Reading TOML's spanned tree with every problem collected: typed getters that
//! report a wrong type or a missing key where it is, unknown keys with the nearest
//! known one, and the rendering of the list as `FILE:LINE:COL: PATH: message`
//! lines. It knows no field of the plan; `read` does.

use std::ops::Range;
use std::time::Duration;

use cutover_api::duration::parse_duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::Error;

pub(super) type Node<'i> = Spanned<DeValue<'i>>;

/// One problem in the file.
#[derive(Debug)]
struct Diagnostic {
    /// 1-based line and column (in characters) of the key or value, when there is
    /// one to point at; a missing top-level table has none.
    at: Option<(usize, usize)>,
    /// The field, e.g. `apps[1].route`; empty when the message names it.
    path: String,
    message: String,
}

/// Reads the spanned tree and collects every problem, with its position.
pub(super) struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<Diagnostic>,
}

/// A table of the plan and its field path (`apps[1]`; empty for the document).
pub(super) struct Table<'t, 'i> {
    pub(super) path: String,
    pub(super) span: Range<usize>,
    pub(super) table: &'t DeTable<'i>,
    /// The keys it may hold.
    known: &'static [&'static str],
}

impl<'t, 'i> Table<'t, 'i> {
    pub(super) fn get(&self, key: &str) -> Option<&'t Node<'i>> {
        self.table.get(key)
    }

    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Where a missing key of this table is reported: its header, or nowhere for
    /// the document itself.
    pub(super) fn at(&self) -> Option<Range<usize>> {
        (!self.path.is_empty()).then(|| self.span.clone())
    }
}

/// A string value, where it is, and its field path.
#[derive(Debug, Clone)]
pub(super) struct Text<'t> {
    pub(super) value: &'t str,
    pub(super) span: Range<usize>,
    pub(super) path: String,
}

impl<'a> Checker<'a> {
    pub(super) fn new(file: &'a str, text: &'a str) -> Self {
        Checker {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// The document itself, its keys checked against `known`.
    pub(super) fn root<'t, 'i>(
        &mut self,
        doc: &'t Spanned<DeTable<'i>>,
        known: &'static [&'static str],
    ) -> Table<'t, 'i> {
        let root = Table {
            path: String::new(),
            span: doc.span(),
            table: doc.get_ref(),
            known,
        };
        self.unknown_keys(&root);
        root
    }

    /// How many problems were found so far.
    pub(super) fn problems(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    pub(super) fn err(
        &mut self,
        span: Option<Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        let at = span.map(|s| {
            let before = self.text.get(..s.start).unwrap_or(self.text);
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let col = before.get(line_start..).map_or(0, |l| l.chars().count());
            (before.matches('\n').count() + 1, col + 1)
        });
        self.errors.push(Diagnostic {
            at,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Every problem in file order (those without a position last), as one error.
    pub(super) fn into_error(mut self) -> Error {
        self.errors.sort_by_key(|d| d.at.unwrap_or((usize::MAX, 0)));
        let lines: Vec<String> = self
            .errors
            .iter()
            .map(|d| {
                let at = d.at.map_or_else(String::new, |(l, c)| format!(":{l}:{c}"));
                let path = if d.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", d.path)
                };
                format!("{}{at}: {path}{}", self.file, d.message)
            })
            .collect();
        match lines.as_slice() {
            [one] => Error::Plan(one.clone()),
            _ => Error::Plan(format!(
                "{} problems in the plan:\n  {}",
                lines.len(),
                lines.join("\n  ")
            )),
        }
    }

    pub(super) fn wrong_type(&mut self, node: &Node<'_>, path: &str, expected: &str) {
        let found = match node.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a number",
            DeValue::Boolean(_) => "true or false",
            DeValue::Datetime(_) => "a date",
            DeValue::Array(_) => "a list",
            DeValue::Table(_) => "a table",
        };
        self.err(
            Some(node.span()),
            path,
            format!("expected {expected}, found {found}"),
        );
    }

    /// Reports the keys of `t` that are not in `known`, with the nearest known one.
    pub(super) fn unknown_keys(&mut self, t: &Table<'_, '_>) {
        for key in t.table.keys() {
            let k: &str = key.get_ref();
            if t.known.contains(&k) {
                continue;
            }
            let fix = match closest(k, t.known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("the keys here are {}", t.known.join(", ")),
            };
            self.err(Some(key.span()), t.field(k), format!("unknown key; {fix}"));
        }
    }

    pub(super) fn table<'t, 'i>(
        &mut self,
        node: &'t Node<'i>,
        path: String,
        known: &'static [&'static str],
    ) -> Option<Table<'t, 'i>> {
        let DeValue::Table(table) = node.get_ref() else {
            self.wrong_type(node, &path, "a table");
            return None;
        };
        let t = Table {
            path,
            span: node.span(),
            table,
            known,
        };
        self.unknown_keys(&t);
        Some(t)
    }

    /// An optional sub-table such as `[switchover]`.
    pub(super) fn section<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
        known: &'static [&'static str],
    ) -> Option<Table<'t, 'i>> {
        let node = t.get(key)?;
        self.table(node, t.field(key), known)
    }

    /// An array of tables such as `[[apps]]`; empty when absent.
    pub(super) fn tables<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
        known: &'static [&'static str],
    ) -> Vec<Table<'t, 'i>> {
        let Some(node) = t.get(key) else {
            return Vec::new();
        };
        let path = t.field(key);
        let DeValue::Array(items) = node.get_ref() else {
            self.wrong_type(node, &path, &format!("[[{key}]] tables"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            out.extend(self.table(item, format!("{path}[{i}]"), known));
        }
        out
    }

    /// The value of `key`, reporting its absence with `fix`.
    pub(super) fn required<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
        fix: &str,
    ) -> Option<&'t Node<'i>> {
        let node = t.get(key);
        // A misspelling of it is reported already, with the right spelling.
        let misspelt = t.table.keys().any(|k| {
            !t.known.contains(&k.get_ref().as_ref()) && closest(k.get_ref(), t.known) == Some(key)
        });
        if node.is_none() && !misspelt {
            self.err(t.at(), t.field(key), format!("missing; {fix}"));
        }
        node
    }

    pub(super) fn text_of<'t>(&mut self, node: &'t Node<'_>, path: String) -> Option<Text<'t>> {
        match node.get_ref() {
            DeValue::String(s) => Some(Text {
                value: s,
                span: node.span(),
                path,
            }),
            _ => {
                self.wrong_type(node, &path, "a string (in quotes)");
                None
            }
        }
    }

    pub(super) fn text<'t>(&mut self, t: &Table<'t, '_>, key: &str) -> Option<Text<'t>> {
        let node = t.get(key)?;
        self.text_of(node, t.field(key))
    }

    pub(super) fn required_text<'t>(
        &mut self,
        t: &Table<'t, '_>,
        key: &str,
        fix: &str,
    ) -> Option<Text<'t>> {
        let node = self.required(t, key, fix)?;
        self.text_of(node, t.field(key))
    }

    /// A list of strings; the good ones when some are not strings.
    pub(super) fn texts<'t>(&mut self, t: &Table<'t, '_>, key: &str) -> Option<Vec<Text<'t>>> {
        let node = t.get(key)?;
        let path = t.field(key);
        let DeValue::Array(items) = node.get_ref() else {
            self.wrong_type(node, &path, "a list of strings, e.g. [\"a\", \"b\"]");
            return None;
        };
        let texts = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.text_of(item, format!("{path}[{i}]")))
            .collect();
        Some(texts)
    }

    pub(super) fn boolean(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        let node = t.get(key)?;
        match node.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(node, &t.field(key), "true or false");
                None
            }
        }
    }

    /// An integer or a decimal number.
    pub(super) fn number_of(&mut self, node: &Node<'_>, path: &str) -> Option<f64> {
        let n = match node.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            DeValue::Float(f) => f.as_str().parse().ok(),
            _ => None,
        };
        if n.is_none() {
            self.wrong_type(node, path, "a number");
        }
        n
    }

    pub(super) fn duration(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Duration> {
        let node = t.get(key)?;
        self.duration_of(node, &t.field(key))
    }

    pub(super) fn duration_of(&mut self, node: &Node<'_>, path: &str) -> Option<Duration> {
        match node.get_ref() {
            DeValue::String(s) => parse_duration(s)
                .map_err(|e| self.err(Some(node.span()), path, e))
                .ok(),
            DeValue::Integer(_) | DeValue::Float(_) => {
                let n = self.text.get(node.span()).unwrap_or_default();
                let msg = format!("{n} has no unit; write a string such as \"{n}s\" or \"{n}ms\"");
                self.err(Some(node.span()), path, msg);
                None
            }
            _ => {
                self.wrong_type(node, path, "a duration such as \"30s\"");
                None
            }
        }
    }
}

/// The known key a misspelt one was probably meant to be: the nearest by edits
/// (a swap of two letters counts as one), if it is near enough for its length.
pub(super) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let word = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&word, k), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// swaps of neighbours.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}
