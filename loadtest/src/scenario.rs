//! A scenario: a TOML file with a weighted mix of request templates.
//!
//! ```toml
//! [[request]]
//! name = "browse"
//! weight = 9
//! path = "/items/{{rand:1..1000}}"
//!
//! [[request]]
//! name = "order"
//! weight = 1
//! method = "POST"
//! host = "shop.example.com"
//! headers = { content-type = "application/json" }
//! body = '{"sku": "sku-{{seq}}", "ref": "{{uuid}}"}'
//! ledger = true
//! ```
//!
//! This module reads and checks the file (every template is rendered once at load time,
//! so a bad path or header fails before any traffic) and picks a template by weight.
//! Building the HTTP request from a template is the engine's job.

mod template;

use std::path::{Path, PathBuf};

use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use rand::SeedableRng;
use rand::rngs::SmallRng;

pub use template::{Pattern, TemplateError, Vars, push_uuid};

/// The header that carries a ledger request's id unless the template names another.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";

/// A scenario file that cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("scenario {}: cannot read it: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("scenario {}: {source}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A template is not usable.
    #[error("scenario {}: [[request]] #{index} ({name}): {reason}", path.display())]
    Template {
        /// The file.
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        /// The template's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The file has no template that can be picked.
    #[error("scenario {}: {reason}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    path: PathBuf,
    templates: Vec<Template>,
    /// Running sum of weights, for picking by binary search.
    cumulative: Vec<u64>,
}

/// One request template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The name used in messages and the ledger.
    pub name: String,
    /// Relative weight in the mix.
    pub weight: u32,
    /// The method.
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: Pattern,
    /// Value of the Host header (h1) or `:authority` (h2), when set.
    pub host: Option<Pattern>,
    /// Extra headers.
    pub headers: Vec<(HeaderName, Pattern)>,
    /// The body, when set.
    pub body: Option<Pattern>,
    /// Whether acknowledged (2xx) requests are written to the ledger.
    pub ledger: bool,
    /// A response header holding the created id; without it the JSON body's `id` is used.
    pub id_header: Option<HeaderName>,
    /// The request header that carries the ledger's request id.
    pub request_id_header: HeaderName,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    request: Vec<RawTemplate>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    name: Option<String>,
    #[serde(default = "one")]
    weight: u32,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: Option<String>,
    #[serde(default)]
    ledger: bool,
    id_header: Option<String>,
    request_id_header: Option<String>,
}

fn one() -> u32 {
    1
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks scenario text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|source| ScenarioError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let mut templates = Vec::with_capacity(raw.request.len());
        for (i, raw) in raw.request.into_iter().enumerate() {
            let name = raw
                .name
                .clone()
                .unwrap_or_else(|| format!("request-{}", i + 1));
            let template = build(raw, name.clone()).map_err(|reason| ScenarioError::Template {
                path: path.to_owned(),
                index: i + 1,
                name,
                reason,
            })?;
            templates.push(template);
        }
        let cumulative: Vec<u64> = templates
            .iter()
            .scan(0u64, |sum, t| {
                *sum += u64::from(t.weight);
                Some(*sum)
            })
            .collect();
        if cumulative.last().copied().unwrap_or(0) == 0 {
            return Err(ScenarioError::Empty {
                path: path.to_owned(),
                reason: "no [[request]] with a weight above 0".into(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            templates,
            cumulative,
        })
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The templates in file order.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// True when any template writes to the ledger.
    pub fn has_ledger(&self) -> bool {
        self.templates.iter().any(|t| t.ledger)
    }

    /// The sum of all weights (at least 1).
    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(1)
    }

    /// The template index for `roll` in `0..total_weight()`.
    pub fn pick(&self, roll: u64) -> usize {
        // The first template whose running sum exceeds the roll; weight-0 templates never win.
        self.cumulative
            .partition_point(|&sum| sum <= roll)
            .min(self.templates.len() - 1)
    }
}

impl Template {
    /// True when any field uses `{{request_id}}`.
    pub fn uses_request_id(&self) -> bool {
        self.path.uses_request_id()
            || self.host.as_ref().is_some_and(Pattern::uses_request_id)
            || self.body.as_ref().is_some_and(Pattern::uses_request_id)
            || self.headers.iter().any(|(_, p)| p.uses_request_id())
    }
}

fn build(raw: RawTemplate, name: String) -> Result<Template, String> {
    let method = match raw.method.as_deref() {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method {m:?} is not valid"))?,
    };
    let pattern =
        |field: &str, text: &str| Pattern::parse(text).map_err(|e| format!("{field}: {e}"));
    let path = pattern("path", raw.path.as_deref().unwrap_or("/"))?;
    let host = raw
        .host
        .as_deref()
        .map(|h| pattern("host", h))
        .transpose()?;
    let body = raw
        .body
        .as_deref()
        .map(|b| pattern("body", b))
        .transpose()?;
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (key, value) in &raw.headers {
        let header = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("header name {key:?} is not valid"))?;
        headers.push((header, pattern(&format!("headers.{key}"), value)?));
    }
    let header_name = |field: &str, text: &str| {
        HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| format!("{field} {text:?} is not a valid header name"))
    };
    let id_header = raw
        .id_header
        .as_deref()
        .map(|h| header_name("id_header", h))
        .transpose()?;
    let request_id_header = header_name(
        "request_id_header",
        raw.request_id_header
            .as_deref()
            .unwrap_or(DEFAULT_REQUEST_ID_HEADER),
    )?;
    let template = Template {
        name,
        weight: raw.weight,
        method,
        path,
        host,
        headers,
        body,
        ledger: raw.ledger,
        id_header,
        request_id_header,
    };
    dry_run(&template)?;
    Ok(template)
}

/// Renders every field once with sample values. Placeholders expand to digits, hex and
/// dashes only, so a template that renders valid parts here renders valid parts always.
fn dry_run(t: &Template) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(0);
    let mut vars = Vars {
        seq: 0,
        request_id: "00000000-0000-4000-8000-000000000000",
        rng: &mut rng,
    };
    let path = t.path.render(&mut vars);
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    PathAndQuery::try_from(path.as_str())
        .map_err(|e| format!("path {path:?} is not a valid path and query: {e}"))?;
    if let Some(host) = &t.host {
        let host = host.render(&mut vars);
        http::uri::Authority::try_from(host.as_str())
            .map_err(|e| format!("host {host:?} is not a valid host[:port]: {e}"))?;
    }
    for (name, value) in &t.headers {
        let value = value.render(&mut vars);
        HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("header {name} value {value:?} is not valid"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("mix.toml"))
    }

    #[test]
    fn reads_the_documented_example() {
        let scenario = parse(
            r#"
            [[request]]
            name = "browse"
            weight = 9
            path = "/items/{{rand:1..1000}}"

            [[request]]
            name = "order"
            weight = 1
            method = "post"
            host = "shop.example.com"
            headers = { content-type = "application/json" }
            body = '{"sku": "sku-{{seq}}", "ref": "{{uuid}}"}'
            ledger = true
            id_header = "location"
            "#,
        )
        .unwrap();
        let [browse, order] = scenario.templates() else {
            panic!("two templates expected");
        };
        assert_eq!(browse.method, Method::GET);
        assert!(!browse.ledger);
        assert_eq!(order.method, Method::POST);
        assert!(order.ledger && scenario.has_ledger());
        assert_eq!(
            order.id_header.as_ref().map(|h| h.as_str()),
            Some("location")
        );
        assert_eq!(order.request_id_header.as_str(), DEFAULT_REQUEST_ID_HEADER);
        assert_eq!(scenario.total_weight(), 10);
    }

    #[test]
    fn picks_by_weight_and_never_picks_weight_zero() {
        let scenario =
            parse("[[request]]\nweight = 0\n[[request]]\nweight = 3\n[[request]]\nweight = 1\n")
                .unwrap();
        let picks: Vec<usize> = (0..scenario.total_weight())
            .map(|r| scenario.pick(r))
            .collect();
        assert_eq!(picks, [1, 1, 1, 2]);
    }

    #[test]
    fn errors_name_the_file_and_the_template() {
        let err = parse(
            "[[request]]\npath = \"/ok\"\n[[request]]\nname = \"bad\"\npath = \"no-slash\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mix.toml") && text.contains("#2 (bad)"),
            "{text}"
        );
        assert!(text.contains("must start with /"), "{text}");

        let err = parse("[[request]]\npth = \"/\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let err = parse("[[request]]\npath = \"/{{what}}\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown placeholder"), "{err}");

        let err = parse("").unwrap_err();
        assert!(err.to_string().contains("no [[request]]"), "{err}");

        let err = Scenario::load(Path::new("/nonexistent/mix.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/mix.toml: cannot read it"),
            "{err}"
        );
    }
}
