//! What to run: the target, the load shape, the request and the checks.
//!
//! [`LoadSpec`] is what the command line builds and what the controller and the tests
//! build directly. [`LoadSpec::validate`] runs before any traffic; its errors name the
//! command-line flag so that both audiences can act on them.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri};

use crate::scenario::{Scenario, ScenarioError};
use crate::slo::{Slo, SloError};

/// A spec that cannot run; each names the flag (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The target URL.
    #[error("<URL> {url:?}: {reason}")]
    Url {
        /// What was given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// `--rate` of 0, negative or not a number.
    #[error("--rate must be a number of requests per second above 0, got {0}")]
    Rate(f64),
    /// `--connections 0`.
    #[error("--connections must be at least 1")]
    Connections,
    /// `--threads 0`.
    #[error("--threads must be at least 1")]
    Threads,
    /// `--duration 0s`.
    #[error("--duration must be longer than 0s")]
    Duration,
    /// `--requests 0`.
    #[error("--requests must be at least 1")]
    Requests,
    /// `--timeout 0s`.
    #[error("--timeout must be longer than 0s")]
    Timeout,
    /// A `--header` that is not `Name: value`.
    #[error("--header {value:?}: {reason}")]
    Header {
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A `--method` that is not a token.
    #[error("--method {0:?} is not a valid HTTP method")]
    Method(String),
    /// `--body-file` could not be read.
    #[error("--body-file {}: cannot read it: {source}", path.display())]
    BodyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--scenario` could not be used (the message names the file).
    #[error("--{0}")]
    Scenario(#[from] ScenarioError),
    /// A scenario records writes but no `--ledger` file was given.
    #[error("--ledger <FILE> is required: scenario {} has templates with ledger = true", path.display())]
    LedgerMissing {
        /// The scenario file.
        path: PathBuf,
    },
    /// `--ledger` without any template that records writes.
    #[error("--ledger needs a --scenario with at least one template that has ledger = true")]
    LedgerUnused,
    /// `--slo` could not be read.
    #[error("--slo: {0}")]
    Slo(#[from] SloError),
}

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// True for `https`.
    pub tls: bool,
    /// The host to connect to (brackets removed from IPv6 literals).
    pub host: String,
    /// The port to connect to.
    pub port: u16,
    /// `host[:port]` as in the URL, the default Host header.
    pub authority: Authority,
    /// Path and query of the URL.
    pub path_and_query: PathAndQuery,
}

/// How the live progress is shown while a run is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An updating line on a terminal; otherwise a log line per second on stderr.
    Auto,
    /// A log line per second on stderr.
    Lines,
    /// Nothing.
    Off,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The target.
    pub target: Target,
    /// Open loop at this many requests per second; `None` runs closed loop.
    pub rate: Option<f64>,
    /// Measure for this long (after the warmup).
    pub duration: Option<Duration>,
    /// Measure this many requests (after the warmup).
    pub requests: Option<u64>,
    /// Load sent before measuring starts, and left out of every figure.
    pub warmup: Duration,
    /// Connections, each driven by its own task with one request in flight.
    pub connections: usize,
    /// Threads that drive the connections, each with its own runtime and its share of
    /// the connections (capped at `connections`).
    pub threads: usize,
    /// Method of the single request (without a scenario).
    pub method: Method,
    /// Headers of every request; a `host` entry replaces the URL's authority.
    pub headers: HeaderMap,
    /// Body of the single request (without a scenario).
    pub body: Bytes,
    /// Per-request timeout, measured from the actual send.
    pub timeout: Duration,
    /// Speak HTTP/2 (prior knowledge on `http`, ALPN on `https`).
    pub http2: bool,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Trust only the CA certificates in this PEM file.
    pub cacert: Option<PathBuf>,
    /// A weighted mix of request templates instead of the single request.
    pub scenario: Option<Scenario>,
    /// Where acknowledged writes are recorded.
    pub ledger: Option<PathBuf>,
    /// Objectives the run must meet.
    pub slo: Option<Slo>,
    /// Live progress.
    pub progress: ProgressMode,
    /// Seed for template randomness and picks; random when `None`.
    pub seed: Option<u64>,
    /// Where one JSON line per second goes (see [`crate::timeline`]).
    pub timeline: Option<PathBuf>,
}

/// Used when neither a duration nor a request count is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

impl Target {
    /// Parses an `http://` or `https://` URL with a host.
    pub fn parse(url: &str) -> Result<Self, SpecError> {
        let fail = |reason: &str| SpecError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if !url.contains("://") {
            return Err(fail(
                "expected a URL with a scheme, such as http://127.0.0.1:8080/",
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| fail(&format!("not a valid URL ({e})")))?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) if *s == Scheme::HTTPS => true,
            Some(_) => return Err(fail("the scheme must be http or https")),
            None => {
                return Err(fail(
                    "expected a URL with a scheme, such as http://127.0.0.1:8080/",
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| fail("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(fail(
                "credentials in the URL are not supported; use -H 'Authorization: ...'",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(fail("the URL has no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Self {
            url: url.to_owned(),
            tls,
            host: host.to_owned(),
            port,
            authority,
            path_and_query,
        })
    }
}

impl LoadSpec {
    /// A closed-loop GET of `url` for [`DEFAULT_DURATION`] over 64 connections on one thread.
    pub fn new(url: &str) -> Result<Self, SpecError> {
        Ok(Self {
            target: Target::parse(url)?,
            rate: None,
            duration: None,
            requests: None,
            warmup: Duration::ZERO,
            connections: 64,
            threads: 1,
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: Duration::from_secs(10),
            http2: false,
            insecure: false,
            cacert: None,
            scenario: None,
            ledger: None,
            slo: None,
            progress: ProgressMode::Off,
            seed: None,
            timeline: None,
        })
    }

    /// Checks the values that the type system does not.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(SpecError::Rate(rate));
        }
        if self.connections == 0 {
            return Err(SpecError::Connections);
        }
        if self.threads == 0 {
            return Err(SpecError::Threads);
        }
        if self.duration == Some(Duration::ZERO) {
            return Err(SpecError::Duration);
        }
        if self.requests == Some(0) {
            return Err(SpecError::Requests);
        }
        if self.timeout.is_zero() {
            return Err(SpecError::Timeout);
        }
        let ledger_templates = self.scenario.as_ref().filter(|s| s.has_ledger());
        match (ledger_templates, &self.ledger) {
            (Some(scenario), None) => {
                return Err(SpecError::LedgerMissing {
                    path: scenario.path().to_owned(),
                });
            }
            (None, Some(_)) => return Err(SpecError::LedgerUnused),
            _ => {}
        }
        Ok(())
    }

    /// The measured duration when neither a duration nor a count is set.
    pub fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (None, None) => Some(DEFAULT_DURATION),
            (duration, _) => duration,
        }
    }
}

/// Parses `Name: value` as given to `-H`.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), SpecError> {
    let fail = |reason: &str| SpecError::Header {
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| fail("expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| fail("the name is not a valid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| fail("the value has characters a header cannot carry"))?;
    Ok((name, value))
}

/// Parses a `--method`.
pub fn parse_method(text: &str) -> Result<Method, SpecError> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| SpecError::Method(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_reads_scheme_host_port_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=1").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.path_and_query.as_str(), "/a?b=1");
        let t = Target::parse("https://[::1]").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert_eq!(t.path_and_query.as_str(), "/");
        assert_eq!(t.authority.as_str(), "[::1]");
    }

    #[test]
    fn target_refuses_what_it_cannot_reach() {
        for (url, needle) in [
            ("http://not a url", "not a valid URL"),
            ("127.0.0.1:8080/", "with a scheme"),
            ("ftp://127.0.0.1/", "scheme must be http or https"),
            ("/path-only", "with a scheme"),
            ("http://u:p@127.0.0.1/", "credentials"),
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(
                err.starts_with("<URL>") && err.contains(needle),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn validate_names_the_flag() {
        let base = LoadSpec::new("http://127.0.0.1:1/").unwrap();
        let check = |f: &dyn Fn(&mut LoadSpec), needle: &str| {
            let mut spec = base.clone();
            f(&mut spec);
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        };
        check(&|s| s.rate = Some(0.0), "--rate");
        check(&|s| s.rate = Some(f64::NAN), "--rate");
        check(&|s| s.connections = 0, "--connections");
        check(&|s| s.threads = 0, "--threads");
        check(&|s| s.duration = Some(Duration::ZERO), "--duration");
        check(&|s| s.requests = Some(0), "--requests");
        check(&|s| s.timeout = Duration::ZERO, "--timeout");
        check(
            &|s| s.ledger = Some("l.jsonl".into()),
            "--ledger needs a --scenario",
        );
        assert!(base.validate().is_ok());
        assert_eq!(base.effective_duration(), Some(DEFAULT_DURATION));
    }

    #[test]
    fn headers_and_methods_are_checked() {
        let (name, value) = parse_header("Host:  shop.example.com ").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("host", "shop.example.com")
        );
        assert!(
            parse_header("no-colon")
                .unwrap_err()
                .to_string()
                .contains("--header")
        );
        assert!(parse_header("bad name: x").is_err());
        assert_eq!(parse_method("post").unwrap(), Method::POST);
        assert!(
            parse_method("GE T")
                .unwrap_err()
                .to_string()
                .contains("--method")
        );
    }
}
