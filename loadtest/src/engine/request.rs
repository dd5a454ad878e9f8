//! Building each request: the fixed one from the command line, or one rendered from a
//! scenario template.
//!
//! The fixed request is assembled once; each send clones reference-counted parts (the
//! URI and body are `Bytes` underneath) and the small header map. HTTP/1 requests use the
//! origin form with a Host header; HTTP/2 requests carry the authority in the URI, which
//! hyper sends as `:authority`.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{Scenario, Template, Vars, push_uuid};
use crate::spec::LoadSpec;
use crate::stats::ErrorKind;

/// Where requests come from; shared by all connection tasks.
pub struct RequestSource {
    scheme: Scheme,
    /// The Host (h1) or `:authority` (h2) unless a template names its own.
    authority: Authority,
    http2: bool,
    kind: Kind,
}

enum Kind {
    Fixed {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    },
    Scenario {
        scenario: Scenario,
        /// `-H` headers, without Host.
        headers: HeaderMap,
        seq: AtomicU64,
    },
}

/// A request ready to send, with what the response handling needs to know about it.
pub struct Built {
    /// The request.
    pub request: Request<Full<Bytes>>,
    /// Set for ledger templates: which template, and the id sent with it.
    pub ledger: Option<(usize, String)>,
}

/// A connection task's own randomness and scratch buffer.
pub struct Maker {
    rng: SmallRng,
    buf: String,
}

impl Maker {
    /// A maker seeded for task `index` (reproducible when the run has a seed).
    pub fn new(seed: u64, index: usize) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            buf: String::with_capacity(256),
        }
    }
}

impl RequestSource {
    /// Prepares the requests of `spec`.
    pub fn new(spec: &LoadSpec) -> Self {
        let target = &spec.target;
        let scheme = if target.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        // A Host given with -H replaces the URL's authority, for h1 and h2 alike; a value
        // that is not a valid authority can still be sent as an h1 Host header.
        let authority = spec
            .headers
            .get(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| target.authority.clone());
        let mut headers = spec.headers.clone();
        let host_header = headers.remove(HOST);
        let kind = match &spec.scenario {
            Some(scenario) => Kind::Scenario {
                scenario: scenario.clone(),
                headers,
                seq: AtomicU64::new(0),
            },
            None => {
                let uri = if spec.http2 {
                    absolute(&scheme, &authority, target.path_and_query.clone())
                } else {
                    Uri::from(target.path_and_query.clone())
                };
                if !spec.http2 {
                    let host = host_header.unwrap_or_else(|| authority_value(&authority));
                    headers.insert(HOST, host);
                }
                Kind::Fixed {
                    method: spec.method.clone(),
                    uri,
                    headers,
                    body: spec.body.clone(),
                }
            }
        };
        Self {
            scheme,
            authority,
            http2: spec.http2,
            kind,
        }
    }

    /// The scenario's templates, if there is a scenario.
    pub fn templates(&self) -> &[Template] {
        match &self.kind {
            Kind::Scenario { scenario, .. } => scenario.templates(),
            Kind::Fixed { .. } => &[],
        }
    }

    /// Builds the next request.
    pub fn build(&self, maker: &mut Maker) -> Result<Built, ErrorKind> {
        match &self.kind {
            Kind::Fixed {
                method,
                uri,
                headers,
                body,
            } => {
                let mut request = Request::new(Full::new(body.clone()));
                *request.method_mut() = method.clone();
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                Ok(Built {
                    request,
                    ledger: None,
                })
            }
            Kind::Scenario {
                scenario,
                headers,
                seq,
            } => {
                let index = scenario.pick(maker.rng.random_range(0..scenario.total_weight()));
                let template = &scenario.templates()[index];
                let seq = seq.fetch_add(1, Ordering::Relaxed);
                self.render(template, index, seq, headers, maker)
            }
        }
    }

    /// Renders one template. The patterns were rendered once at load time, and
    /// placeholders only ever expand to digits, hex and dashes, so a failure here would be
    /// a bug; it is reported as a protocol error rather than a crash.
    fn render(
        &self,
        template: &Template,
        index: usize,
        seq: u64,
        base_headers: &HeaderMap,
        maker: &mut Maker,
    ) -> Result<Built, ErrorKind> {
        let Maker { rng, buf } = maker;
        let mut request_id = String::new();
        if template.ledger || template.uses_request_id() {
            push_uuid(&mut request_id, rng);
        }
        let mut vars = Vars {
            seq,
            request_id: &request_id,
            rng,
        };
        let mut headers = base_headers.clone();
        for (name, pattern) in &template.headers {
            buf.clear();
            pattern.render_into(buf, &mut vars);
            headers.insert(name.clone(), HeaderValue::from_str(buf).map_err(bad)?);
        }
        let authority = match &template.host {
            Some(host) => {
                buf.clear();
                host.render_into(buf, &mut vars);
                Authority::try_from(buf.as_str()).map_err(bad)?
            }
            None => self.authority.clone(),
        };
        buf.clear();
        template.path.render_into(buf, &mut vars);
        let path = PathAndQuery::try_from(buf.as_str()).map_err(bad)?;
        let uri = if self.http2 {
            absolute(&self.scheme, &authority, path)
        } else {
            headers.insert(HOST, authority_value(&authority));
            Uri::from(path)
        };
        let body = match &template.body {
            Some(pattern) => {
                let mut body = String::new();
                pattern.render_into(&mut body, &mut vars);
                Bytes::from(body)
            }
            None => Bytes::new(),
        };
        if !body.is_empty() {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let ledger = if template.ledger {
            headers.insert(
                template.request_id_header.clone(),
                HeaderValue::from_str(&request_id).map_err(bad)?,
            );
            Some((index, request_id))
        } else {
            None
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = template.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(Built { request, ledger })
    }
}

fn bad<E>(_: E) -> ErrorKind {
    ErrorKind::Protocol
}

fn absolute(scheme: &Scheme, authority: &Authority, path: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path);
    // Scheme, authority and path are each already valid, and together they always form a
    // valid absolute URI; fall back to the path alone rather than fail a request.
    Uri::from_parts(parts).unwrap_or_default()
}

fn authority_value(authority: &Authority) -> HeaderValue {
    // An authority is a subset of the characters a header value may hold.
    HeaderValue::from_str(authority.as_str()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::parse_header;

    fn spec(http2: bool) -> LoadSpec {
        let mut spec = LoadSpec::new("http://127.0.0.1:8080/a?b=1").unwrap();
        spec.http2 = http2;
        spec
    }

    #[test]
    fn fixed_h1_requests_use_origin_form_and_a_host_header() {
        let mut s = spec(false);
        let (name, value) = parse_header("Host: shop.example.com").unwrap();
        s.headers.insert(name, value);
        s.method = Method::POST;
        s.body = Bytes::from_static(b"{}");
        let source = RequestSource::new(&s);
        let built = source.build(&mut Maker::new(1, 0)).unwrap();
        let req = built.request;
        assert_eq!(req.uri().to_string(), "/a?b=1");
        assert_eq!(req.headers()[HOST], "shop.example.com");
        assert_eq!(req.method(), Method::POST);
        assert!(built.ledger.is_none());
    }

    #[test]
    fn fixed_h2_requests_carry_the_authority_in_the_uri() {
        let source = RequestSource::new(&spec(true));
        let req = source.build(&mut Maker::new(1, 0)).unwrap().request;
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:8080/a?b=1");
        assert!(req.headers().get(HOST).is_none());
    }

    #[test]
    fn scenario_requests_render_templates_and_carry_the_request_id() {
        let mut s = spec(false);
        s.scenario = Some(
            Scenario::parse(
                r#"
                [[request]]
                name = "order"
                method = "PUT"
                host = "shop.example.com"
                path = "/orders/{{seq}}"
                headers = { x-tag = "t{{seq}}" }
                body = '{"n": {{seq}}}'
                ledger = true
                "#,
                Path::new("s.toml"),
            )
            .unwrap(),
        );
        let source = RequestSource::new(&s);
        let mut maker = Maker::new(1, 0);
        let first = source.build(&mut maker).unwrap();
        let second = source.build(&mut maker).unwrap();
        let req = &second.request;
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri().to_string(), "/orders/1");
        assert_eq!(req.headers()[HOST], "shop.example.com");
        assert_eq!(req.headers()["x-tag"], "t1");
        assert_eq!(req.headers()[CONTENT_LENGTH], "8");
        let (index, id) = second.ledger.clone().unwrap();
        assert_eq!(index, 0);
        assert_eq!(req.headers()["x-request-id"], id.as_str());
        assert_ne!(
            Some(id),
            first.ledger.map(|(_, id)| id),
            "ids are fresh per request"
        );
    }
}
