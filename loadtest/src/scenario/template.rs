//! Text with placeholders: `{{seq}}`, `{{uuid}}`, `{{rand:1..1000}}`, `{{request_id}}`.
//!
//! A pattern is parsed once into segments and rendered per request into a reused
//! buffer, so substitution costs a few writes and no parsing on the request path.

use std::fmt::Write as _;

use rand::Rng;

/// A placeholder that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reason} in {text:?}")]
pub struct TemplateError {
    /// The text being parsed.
    pub text: String,
    /// Why it was refused.
    pub reason: String,
}

/// Parsed text with placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// The request's sequence number, unique within a run.
    Seq,
    /// A fresh random UUID (version 4) at each use.
    Uuid,
    /// A uniform random integer in `lo..=hi`.
    Rand {
        lo: u64,
        hi: u64,
    },
    /// The request's id, the same at every use within one request (and in the ledger).
    RequestId,
}

/// Values for one request's placeholders.
pub struct Vars<'a, R: Rng> {
    /// Value of `{{seq}}`.
    pub seq: u64,
    /// Value of `{{request_id}}`.
    pub request_id: &'a str,
    /// Source of `{{uuid}}` and `{{rand:..}}`.
    pub rng: &'a mut R,
}

impl Pattern {
    /// Parses `text`; `{{` opens a placeholder, and every placeholder must be known.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let fail = |reason: String| TemplateError {
            text: text.to_owned(),
            reason,
        };
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| fail("a placeholder opened with {{ is not closed with }}".into()))?;
            segments.push(parse_placeholder(after[..close].trim()).map_err(fail)?);
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Self { segments })
    }

    /// The text when the pattern has no placeholder.
    pub fn as_static(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// True when the pattern uses `{{request_id}}`.
    pub fn uses_request_id(&self) -> bool {
        self.segments.contains(&Segment::RequestId)
    }

    /// Appends the rendered text to `out`.
    pub fn render_into<R: Rng>(&self, out: &mut String, vars: &mut Vars<'_, R>) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                // Writing into a String cannot fail; `fmt::Error` only comes from the writer.
                Segment::Seq => {
                    let _ = write!(out, "{}", vars.seq);
                }
                Segment::Uuid => push_uuid(out, vars.rng),
                Segment::Rand { lo, hi } => {
                    let _ = write!(out, "{}", vars.rng.random_range(*lo..=*hi));
                }
                Segment::RequestId => out.push_str(vars.request_id),
            }
        }
    }

    /// Renders into a new string (for checks at load time and for tests).
    pub fn render<R: Rng>(&self, vars: &mut Vars<'_, R>) -> String {
        let mut out = String::new();
        self.render_into(&mut out, vars);
        out
    }
}

fn parse_placeholder(inner: &str) -> Result<Segment, String> {
    match inner {
        "seq" => return Ok(Segment::Seq),
        "uuid" => return Ok(Segment::Uuid),
        "request_id" => return Ok(Segment::RequestId),
        _ => {}
    }
    let Some(range) = inner.strip_prefix("rand:") else {
        return Err(format!(
            "unknown placeholder {{{{{inner}}}}} (known: seq, uuid, rand:LO..HI, request_id)"
        ));
    };
    let bad = || format!("{{{{{inner}}}}} needs a range such as rand:1..1000");
    let (lo, hi) = range.split_once("..").ok_or_else(bad)?;
    // `1..=1000` reads the same as `1..1000`: both ends are included either way.
    let hi = hi.strip_prefix('=').unwrap_or(hi);
    let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!(
            "{{{{{inner}}}}}: the low end is above the high end"
        ));
    }
    Ok(Segment::Rand { lo, hi })
}

/// Writes a random version-4 UUID in its canonical lowercase form.
pub fn push_uuid<R: Rng>(out: &mut String, rng: &mut R) {
    let bits: u128 = rng.random();
    // Version 4 in the high nibble of byte 6, variant 10xx in the high bits of byte 8.
    let bits = (bits & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let _ = write!(
        out,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (bits >> 96) as u32,
        (bits >> 80) as u16,
        (bits >> 64) as u16,
        (bits >> 48) as u16,
        bits & 0xFFFF_FFFF_FFFF,
    );
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn render(text: &str, seq: u64) -> String {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut vars = Vars {
            seq,
            request_id: "req-1",
            rng: &mut rng,
        };
        Pattern::parse(text).unwrap().render(&mut vars)
    }

    #[test]
    fn substitutes_seq_and_request_id() {
        assert_eq!(render("/items/{{seq}}", 42), "/items/42");
        assert_eq!(
            render("{{ request_id }}:{{seq}}:{{seq}}", 3),
            "req-1:3:3",
            "the same request sees one value"
        );
        assert_eq!(render("no placeholders", 0), "no placeholders");
        assert_eq!(Pattern::parse("plain").unwrap().as_static(), Some("plain"));
        assert_eq!(Pattern::parse("/{{seq}}").unwrap().as_static(), None);
    }

    #[test]
    fn rand_stays_within_its_inclusive_range() {
        let pattern = Pattern::parse("{{rand:1..3}}").unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = [false; 4];
        for _ in 0..200 {
            let mut vars = Vars {
                seq: 0,
                request_id: "",
                rng: &mut rng,
            };
            let n: usize = pattern.render(&mut vars).parse().unwrap();
            assert!((1..=3).contains(&n), "{n} out of range");
            seen[n] = true;
        }
        assert_eq!(seen, [false, true, true, true], "both ends are reachable");
        assert_eq!(render("{{rand:5..=5}}", 0), "5");
    }

    #[test]
    fn uuids_are_version_4_and_fresh_at_each_use() {
        let text = render("{{uuid}} {{uuid}}", 0);
        let (a, b) = text.split_once(' ').unwrap();
        assert_ne!(a, b);
        for id in [a, b] {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn refuses_unknown_and_malformed_placeholders() {
        for (text, needle) in [
            ("{{nope}}", "unknown placeholder"),
            ("/a/{{seq", "not closed"),
            ("{{rand:9..1}}", "low end is above"),
            ("{{rand:1-9}}", "needs a range"),
            ("{{rand:x..9}}", "needs a range"),
        ] {
            let err = Pattern::parse(text).unwrap_err();
            assert!(err.reason.contains(needle), "{text}: {err}");
        }
    }
}
