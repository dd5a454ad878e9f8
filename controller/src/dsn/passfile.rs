//! libpq's password file (`passfile=` in a DSN): lines of
//! `hostname:port:database:username:password`, `*` matching anything, `\:` and `\\`
//! escaping, `#` starting a comment. With it, a subscription's `CONNECTION` names a
//! file on the subscriber's server instead of carrying the password, so the
//! password appears in no SQL text and no catalog; the controller reads the same
//! file for its own connections when the DSN has no password.

use std::path::Path;

/// The password of the first line that matches, as libpq picks it.
pub fn lookup(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = fields(line);
        let [h, p, d, u, password] = fields.as_slice() else {
            continue;
        };
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(h, host) && matches(p, &port) && matches(d, database) && matches(u, user) {
            return Some(password.clone());
        }
    }
    None
}

/// A line's fields: split on unescaped `:`; the last field takes the rest.
fn fields(line: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => field.extend(chars.next()),
            ':' if out.len() < 4 => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Reads the file; the error says why, naming the file (never its contents).
pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("passfile {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5432:shop:app:nope\n\
                    db.internal:5433:*:app:first\\:part\n\
                    *:*:*:app:fallback\n";
        assert_eq!(
            lookup(text, "db.internal", 5433, "shop", "app").as_deref(),
            Some("first:part")
        );
        assert_eq!(
            lookup(text, "db.internal", 5432, "shop", "app").as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup(text, "db.internal", 5433, "shop", "root"), None);
        // A short line is skipped, not read as a password.
        assert_eq!(lookup("h:1:d:u\n", "h", 1, "d", "u"), None);
    }
}
