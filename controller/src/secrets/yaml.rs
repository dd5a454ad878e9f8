//! A small YAML writer for the manifests `render` produces: maps keep their
//! order (apiVersion, kind, metadata, spec, as people write them), block style,
//! lists as `- ` at their key's indentation. Any string that a YAML 1.1 or 1.2
//! reader could take for something else (a boolean, a number, null, or text
//! with special characters) is written double-quoted with JSON escapes, which
//! YAML reads the same.

/// A YAML value: text, an ordered map, or a list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Str(String),
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
}

pub(crate) fn s(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

pub(crate) fn map<const N: usize>(pairs: [(&str, Node); N]) -> Node {
    Node::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// One document, ending with a newline.
pub(crate) fn to_yaml(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(pairs) if !pairs.is_empty() => write_map(pairs, 0, false, &mut out),
        Node::List(items) if !items.is_empty() => write_list(items, 0, &mut out),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// `{}`, `[]` or a scalar: what fits after `key: ` on one line.
fn inline(node: &Node) -> String {
    match node {
        Node::Str(t) => scalar(t),
        Node::Map(_) => "{}".into(),
        Node::List(_) => "[]".into(),
    }
}

fn is_block(node: &Node) -> bool {
    match node {
        Node::Str(_) => false,
        Node::Map(p) => !p.is_empty(),
        Node::List(i) => !i.is_empty(),
    }
}

/// `first_inline`: the first key goes on the current line (after `- `).
fn write_map(pairs: &[(String, Node)], indent: usize, first_inline: bool, out: &mut String) {
    for (i, (key, value)) in pairs.iter().enumerate() {
        if !(first_inline && i == 0) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&scalar(key));
        out.push(':');
        match value {
            Node::Map(p) if !p.is_empty() => {
                out.push('\n');
                write_map(p, indent + 2, false, out);
            }
            Node::List(items) if !items.is_empty() => {
                out.push('\n');
                write_list(items, indent, out);
            }
            other => {
                out.push(' ');
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

fn write_list(items: &[Node], indent: usize, out: &mut String) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Node::Map(p) if !p.is_empty() => {
                out.push(' ');
                write_map(p, indent + 2, true, out);
            }
            Node::List(inner) if is_block(item) => {
                out.push('\n');
                write_list(inner, indent + 2, out);
            }
            other => {
                out.push(' ');
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

/// Plain when unambiguous, else double-quoted.
fn scalar(text: &str) -> String {
    const RESERVED: [&str; 11] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "",
    ];
    let plain = text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !RESERVED.contains(&text.to_ascii_lowercase().as_str());
    if plain {
        text.to_string()
    } else {
        // A JSON string is a valid YAML double-quoted scalar.
        serde_json::Value::String(text.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_block_style_in_order() {
        let doc = map([
            ("apiVersion", s("external-secrets.io/v1")),
            ("kind", s("ExternalSecret")),
            (
                "metadata",
                map([("name", s("db")), ("labels", Node::Map(vec![]))]),
            ),
            (
                "spec",
                map([(
                    "data",
                    Node::List(vec![
                        map([
                            ("secretKey", s("tls.crt")),
                            ("remoteRef", map([("key", s("a/b"))])),
                        ]),
                        map([("secretKey", s(".dockerconfigjson"))]),
                    ]),
                )]),
            ),
        ]);
        assert_eq!(
            to_yaml(&doc),
            "apiVersion: external-secrets.io/v1\n\
             kind: ExternalSecret\n\
             metadata:\n  name: db\n  labels: {}\n\
             spec:\n  data:\n  - secretKey: tls.crt\n    remoteRef:\n      key: a/b\n\
             \x20 - secretKey: \".dockerconfigjson\"\n"
        );
    }

    #[test]
    fn ambiguous_text_is_quoted() {
        assert_eq!(scalar("Opaque"), "Opaque");
        assert_eq!(scalar("kubernetes.io/tls"), "kubernetes.io/tls");
        for (text, quoted) in [
            ("yes", "\"yes\""),
            ("No", "\"No\""),
            ("1h", "\"1h\""),
            ("0123", "\"0123\""),
            ("", "\"\""),
            ("a: b", "\"a: b\""),
            ("x#y", "\"x#y\""),
            ("say \"hi\"\n", "\"say \\\"hi\\\"\\n\""),
        ] {
            assert_eq!(scalar(text), quoted, "{text}");
        }
    }
}
