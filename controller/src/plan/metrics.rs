//! What the proxies measured between two moments: the plan's gates and the report
//! read traffic from here.
//!
//! Every replica's `/metrics` is scraped (all at once) at the start and at the end of
//! a window; the window is the difference, summed over replicas. Counters are taken
//! from `cutover_requests_total` (5xx codes are the errors) and latencies from the
//! `cutover_request_duration_seconds` histogram, whose quantiles are estimated as
//! Prometheus' `histogram_quantile` does. Differencing counters here rather than
//! querying a Prometheus server keeps the runner free of one more dependency in the
//! migration's critical path, and the windows exact to the step.
//!
//! A window keeps each route's figures twice: every answer on the route, and the
//! answers of the app's new backend alone, with the weight the proxies gave that
//! backend (`cutover_route_weight`). The gates judge the new side by the latter: at
//! 10% new, a new side failing half its requests is a 5% route, and only its own
//! figures show the 50%.
//!
//! A replica that restarted during a window (one of its counters went down, or a
//! series it had is gone) contributes everything it counted since its restart. A
//! replica missing from the window's first scrape is new to the run (the runner
//! scrapes every replica it knows when a window starts) and contributes everything it
//! counted since it started, as if its earlier counters were zero. A replica gone by
//! the window's end contributes nothing: its last counts are lost with it.
//!
//! The parser reads the text exposition format (comments, escaped label values,
//! `+Inf`, `NaN`, optional timestamps); it is not a general OpenMetrics parser.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::error::Error;
use crate::plan::record::{BackendTraffic, Traffic};
use crate::proxy::Proxies;

/// The proxy's request counter, labelled `route`, `backend`, `code`.
const REQUESTS: &str = "cutover_requests_total";
/// The proxy's latency histogram's buckets, labelled `route`, `backend`, `le`.
const BUCKETS: &str = "cutover_request_duration_seconds_bucket";
/// The proxy's routing gauge: a backend's configured share of a route's reads in
/// percent, labelled `route`, `backend`.
const WEIGHT: &str = "cutover_route_weight";
/// The new side's backend name when a plan names none (`proxies.new`'s default).
pub const DEFAULT_NEW: &str = "new";

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a text exposition into its samples. Comments and blank lines are
/// skipped; a malformed line is an error naming its number.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", i + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let mut rest = line;
    let name = take_name(&mut rest, true).ok_or("expected a metric name")?;
    let mut labels = Vec::new();
    rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let key = take_name(&mut rest, false).ok_or("expected a label name")?;
            rest = rest
                .trim_start()
                .strip_prefix('=')
                .ok_or("expected = after a label name")?
                .trim_start();
            rest = rest
                .strip_prefix('"')
                .ok_or("expected a quoted label value")?;
            let value = take_quoted(&mut rest).ok_or("unterminated label value")?;
            labels.push((key, value));
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the value".into());
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without `colon`, a label name.
fn take_name(rest: &mut &str, colon: bool) -> Option<String> {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let end = rest
        .char_indices()
        .find(|&(i, c)| !ok(c, i == 0))
        .map_or(rest.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = rest[..end].to_string();
    *rest = &rest[end..];
    Some(name)
}

/// The rest of a quoted label value (the opening quote already taken), unescaping
/// `\\`, `\"` and `\n`.
fn take_quoted(rest: &mut &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                *rest = &rest[i + 1..];
                return Some(out);
            }
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// One route × backend pair's counters on one replica.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Answers, every code.
    pub requests: f64,
    /// 5xx answers.
    pub errors: f64,
    /// Cumulative latency buckets: upper bound in seconds → count, ascending, with
    /// `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

/// A (route, backend) label pair.
pub type Pair = (String, String);

/// Every replica's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Replica admin URL → (route, backend) → counters.
    pub replicas: BTreeMap<String, BTreeMap<Pair, Series>>,
    /// Replica admin URL → (route, backend) → configured weight in percent.
    pub weights: BTreeMap<String, BTreeMap<Pair, f64>>,
    /// When the scrape began; `None` for one assembled by hand.
    pub at: Option<Instant>,
}

impl Scrape {
    /// Adds replica `url`'s exposition `text`.
    pub fn add_replica(&mut self, url: &str, text: &str) -> Result<(), Error> {
        let samples = parse(text).map_err(|detail| Error::Proxy {
            url: url.to_string(),
            what: "parse /metrics".into(),
            detail,
        })?;
        let mut pairs: BTreeMap<Pair, Series> = BTreeMap::new();
        let mut weights: BTreeMap<Pair, f64> = BTreeMap::new();
        for s in &samples {
            let (Some(route), Some(backend)) = (s.label("route"), s.label("backend")) else {
                continue;
            };
            let key = (route.to_string(), backend.to_string());
            if s.name == REQUESTS {
                let series = pairs.entry(key).or_default();
                series.requests += s.value;
                if s.label("code").is_some_and(|c| c.starts_with('5')) {
                    series.errors += s.value;
                }
            } else if s.name == BUCKETS {
                let Some(le) = s.label("le").and_then(parse_value) else {
                    continue;
                };
                pairs.entry(key).or_default().buckets.push((le, s.value));
            } else if s.name == WEIGHT {
                weights.insert(key, s.value);
            }
        }
        for series in pairs.values_mut() {
            series.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        self.replicas.insert(url.to_string(), pairs);
        self.weights.insert(url.to_string(), weights);
        Ok(())
    }
}

/// Scrapes every replica of `proxies` concurrently. Any replica that cannot be
/// read fails the scrape, naming it: a window missing a replica's errors would let
/// a gate pass on partial data.
pub async fn scrape(proxies: &Proxies) -> Result<Scrape, Error> {
    let at = Instant::now();
    let texts = join_all(
        proxies
            .urls()
            .iter()
            .map(|url| async move { (url, proxies.metrics_text(url).await) }),
    )
    .await;
    let mut scrape = Scrape {
        at: Some(at),
        ..Scrape::default()
    };
    for (url, text) in texts {
        scrape.add_replica(url, &text?)?;
    }
    Ok(scrape)
}

/// Requests, 5xx answers and latency of some of a window's traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    /// Cumulative latency buckets (upper bound → count), `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl Figures {
    /// 5xx answers over all answers; `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        error_ratio(self.requests, self.errors)
    }

    /// The `q` quantile of latency in seconds, as [`quantile`](fn@quantile) computes
    /// it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, q)
    }

    fn add(&mut self, s: &Series) {
        self.requests += count(s.requests);
        self.errors += count(s.errors);
        self.buckets = add_buckets(&self.buckets, &s.buckets);
    }
}

/// One route's traffic in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteWindow {
    /// The route as the proxies label it.
    pub route: String,
    /// Every answer on the route: the old side's, the new side's and the proxy's own
    /// (given before any backend was chosen).
    pub all: Figures,
    /// The app's new backend as the proxies label it; `None` when the caller did not
    /// name it and the route has no backend called [`DEFAULT_NEW`] (none with a
    /// weight on it, nor answering on it, in the window).
    pub new_backend: Option<String>,
    /// The answers of the new backend alone.
    pub new: Figures,
    /// The new backend's configured weight on the route in percent, the largest any
    /// replica reported at either end of the window; `None` without a reading.
    pub new_weight: Option<f64>,
}

/// An app's route and its new backend, as the proxies label them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub route: String,
    pub new: String,
}

/// The traffic between two scrapes, summed over replicas.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Answers on every route of the window.
    pub requests: u64,
    /// 5xx answers on every route of the window.
    pub errors: u64,
    /// Per backend, over every route.
    pub by_backend: BTreeMap<String, BackendTraffic>,
    /// Cumulative latency buckets over every pair (upper bound → count), `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    /// Seconds between the two scrapes, when both carry their time.
    pub seconds: Option<f64>,
    /// Each route's own figures and its new backend's, in the order asked for.
    pub routes: Vec<RouteWindow>,
    /// cutover-load's seconds in the same window, when the plan follows its
    /// timeline (`[users]`).
    pub users: Option<crate::plan::users::UsersWindow>,
}

impl Window {
    /// 5xx answers over all answers; `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        error_ratio(self.requests, self.errors)
    }

    /// The `q` quantile (0..=1) of latency in seconds over every route, as
    /// [`quantile`](fn@quantile) computes it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, q)
    }

    /// The window as the run record stores it.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.requests,
            errors: self.errors,
            p50_s: self.quantile(0.5),
            p99_s: self.quantile(0.99),
            by_backend: self.by_backend.clone(),
        }
    }
}

fn error_ratio(requests: u64, errors: u64) -> Option<f64> {
    (requests > 0).then(|| errors as f64 / requests as f64)
}

/// The `q` quantile (0..=1) of latency in seconds from cumulative `buckets`, as
/// `histogram_quantile` computes it: linear interpolation inside the bucket the rank
/// falls in; a rank in the `+Inf` bucket gives the highest finite bound. `None`
/// without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    // Cumulative counts never fall; a scrape that interleaved with observations
    // can make them look as if they did, so force monotonicity like Prometheus.
    let mut buckets = buckets.to_vec();
    let mut top: f64 = 0.0;
    for b in &mut buckets {
        top = top.max(b.1);
        b.1 = top;
    }
    let &(last_le, total) = buckets.last()?;
    if last_le != f64::INFINITY || total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|b| b.1 >= rank)?;
    if i == buckets.len() - 1 {
        return Some(buckets[i - 1].0);
    }
    let (end, count) = buckets[i];
    let (start, below) = if i == 0 {
        if end <= 0.0 {
            return Some(end);
        }
        (0.0, 0.0)
    } else {
        buckets[i - 1]
    };
    let inside = count - below;
    if inside <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank - below) / inside)
}

/// The traffic of `routes` (route names, as the proxies label them; empty means
/// every route) between `before` and `after`. A route's new backend is the one called
/// [`DEFAULT_NEW`], if it has one; [`window_of`] names each app's own.
pub fn window(before: &Scrape, after: &Scrape, routes: &[String]) -> Window {
    measure(before, after, routes, &BTreeMap::new())
}

/// The traffic of the apps' routes between `before` and `after`, each route's new
/// backend the one `sides` names for it.
pub fn window_of(before: &Scrape, after: &Scrape, sides: &[Side]) -> Window {
    let mut routes: Vec<String> = Vec::new();
    let mut named = BTreeMap::new();
    for s in sides {
        if !routes.contains(&s.route) {
            routes.push(s.route.clone());
        }
        named.insert(s.route.as_str(), s.new.as_str());
    }
    measure(before, after, &routes, &named)
}

/// The window of `routes`, with `named` route → new backend.
fn measure(
    before: &Scrape,
    after: &Scrape,
    routes: &[String],
    named: &BTreeMap<&str, &str>,
) -> Window {
    let wanted = |route: &str| routes.is_empty() || routes.iter().any(|r| r == route);
    let mut pairs: BTreeMap<Pair, Series> = BTreeMap::new();
    let unseen = BTreeMap::new();
    for (url, now) in &after.replicas {
        // Missing from the first scrape: new to the run, so its counters began at 0.
        let then = before.replicas.get(url).unwrap_or(&unseen);
        let restarted = restarted(then, now);
        for (key, series) in now {
            if !wanted(&key.0) {
                continue;
            }
            let delta = match then.get(key) {
                Some(old) if !restarted => minus(series, old),
                _ => series.clone(),
            };
            let sum = pairs.entry(key.clone()).or_default();
            sum.requests += delta.requests;
            sum.errors += delta.errors;
            sum.buckets = add_buckets(&sum.buckets, &delta.buckets);
        }
    }
    let mut weights: BTreeMap<&Pair, f64> = BTreeMap::new();
    for (key, &w) in before
        .weights
        .values()
        .chain(after.weights.values())
        .flatten()
    {
        if wanted(&key.0) && !w.is_nan() {
            let top = weights.entry(key).or_insert(w);
            *top = top.max(w);
        }
    }

    let mut total = Figures::default();
    let mut by_backend: BTreeMap<String, BackendTraffic> = BTreeMap::new();
    for ((_, backend), s) in &pairs {
        total.add(s);
        let b = by_backend.entry(backend.clone()).or_default();
        b.requests += count(s.requests);
        b.errors += count(s.errors);
    }
    let names: Vec<String> = if routes.is_empty() {
        let every: BTreeSet<&String> = pairs
            .keys()
            .chain(weights.keys().copied())
            .map(|k| &k.0)
            .collect();
        every.into_iter().cloned().collect()
    } else {
        routes.to_vec()
    };
    let routes = names
        .into_iter()
        .map(|route| {
            let new_backend = match named.get(route.as_str()) {
                Some(b) => Some(b.to_string()),
                None => {
                    // The proxy keeps a (zero) series for every backend on every
                    // route; only a weight, or answers, make one the route's.
                    let key = (route.clone(), DEFAULT_NEW.to_string());
                    (weights.contains_key(&key)
                        || pairs.get(&key).is_some_and(|s| count(s.requests) > 0))
                    .then(|| DEFAULT_NEW.to_string())
                }
            };
            let new_weight = new_backend
                .as_ref()
                .and_then(|b| weights.get(&(route.clone(), b.clone())).copied());
            let mut r = RouteWindow {
                route,
                new_backend,
                new_weight,
                ..RouteWindow::default()
            };
            for ((route, backend), s) in &pairs {
                if *route == r.route {
                    r.all.add(s);
                    if r.new_backend.as_ref() == Some(backend) {
                        r.new.add(s);
                    }
                }
            }
            r
        })
        .collect();
    Window {
        requests: total.requests,
        errors: total.errors,
        by_backend,
        buckets: total.buckets,
        seconds: match (before.at, after.at) {
            (Some(a), Some(b)) if b >= a => Some((b - a).as_secs_f64()),
            _ => None,
        },
        routes,
        users: None,
    }
}

/// Whether a replica's counters went back: a series that fell or vanished, or a
/// histogram whose buckets changed, means the process behind the URL is new.
fn restarted(then: &BTreeMap<Pair, Series>, now: &BTreeMap<Pair, Series>) -> bool {
    then.iter().any(|(key, old)| {
        let Some(new) = now.get(key) else {
            return true;
        };
        new.requests < old.requests
            || new.errors < old.errors
            || (!old.buckets.is_empty()
                && (old.buckets.len() != new.buckets.len()
                    || old
                        .buckets
                        .iter()
                        .zip(&new.buckets)
                        .any(|(o, n)| o.0 != n.0 || n.1 < o.1)))
    })
}

/// `now - then` for one series whose counters did not go back.
fn minus(now: &Series, then: &Series) -> Series {
    let buckets = if then.buckets.is_empty() {
        now.buckets.clone()
    } else {
        now.buckets
            .iter()
            .zip(&then.buckets)
            .map(|(n, t)| (n.0, n.1 - t.1))
            .collect()
    };
    Series {
        requests: now.requests - then.requests,
        errors: now.errors - then.errors,
        buckets,
    }
}

/// The sum of two cumulative histograms. With the same bounds (every replica runs
/// the same binary) bucket by bucket; otherwise over the union of bounds, each side
/// read at its largest bound not above the new one.
fn add_buckets(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if a.is_empty() {
        return b.to_vec();
    }
    if b.is_empty() {
        return a.to_vec();
    }
    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0) {
        return a.iter().zip(b).map(|(x, y)| (x.0, x.1 + y.1)).collect();
    }
    let mut bounds: Vec<f64> = a.iter().chain(b).map(|x| x.0).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let at = |h: &[(f64, f64)], le: f64| {
        h.iter()
            .take_while(|x| x.0 <= le)
            .last()
            .map_or(0.0, |x| x.1)
    };
    bounds
        .into_iter()
        .map(|le| (le, at(a, le) + at(b, le)))
        .collect()
}

/// A counter's value as a count (counters hold whole numbers; a float that is not
/// one is rounded, a negative or NaN one is 0).
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
