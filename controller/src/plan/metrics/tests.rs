use super::*;

const BOUNDS: [&str; 14] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "+Inf",
];

/// One pair as the proxy exports it: requests per code, and how many requests
/// fell into each bucket (not cumulative; the 14th entry is above 10 s).
struct Row<'a> {
    route: &'a str,
    backend: &'a str,
    codes: &'a [(u16, u64)],
    per_bucket: [u64; 14],
}

/// The exposition in the shape of the proxy's (prometheus crate) encoder.
fn exposition(pairs: &[Row<'_>]) -> String {
    let mut t = String::from(
        "# HELP cutover_config_generation Generation of the routing snapshot in force.\n\
         # TYPE cutover_config_generation gauge\ncutover_config_generation 4\n\
         # HELP cutover_request_duration_seconds Time from a request's arrival until its response body ended.\n\
         # TYPE cutover_request_duration_seconds histogram\n",
    );
    for p in pairs {
        let mut cum = 0;
        for (le, n) in BOUNDS.iter().zip(p.per_bucket) {
            cum += n;
            t.push_str(&format!(
                "{BUCKETS}{{backend=\"{}\",route=\"{}\",le=\"{le}\"}} {cum}\n",
                p.backend, p.route
            ));
        }
        t.push_str(&format!(
            "cutover_request_duration_seconds_sum{{backend=\"{}\",route=\"{}\"}} 1.5\n\
             cutover_request_duration_seconds_count{{backend=\"{}\",route=\"{}\"}} {cum}\n",
            p.backend, p.route, p.backend, p.route
        ));
    }
    t.push_str(
        "# HELP cutover_requests_total Requests answered, by route, backend and status code.\n\
         # TYPE cutover_requests_total counter\n",
    );
    for p in pairs {
        for (code, n) in p.codes {
            t.push_str(&format!(
                "{REQUESTS}{{backend=\"{}\",code=\"{code}\",route=\"{}\"}} {n}\n",
                p.backend, p.route
            ));
        }
    }
    t.push_str(
        "# TYPE cutover_route_weight gauge\n\
         cutover_route_weight{backend=\"new\",route=\"shop\"} 12.5\n",
    );
    t
}

fn scrape(replicas: &[(&str, &[Row<'_>])]) -> Scrape {
    let mut s = Scrape::default();
    for (url, pairs) in replicas {
        s.add_replica(url, &exposition(pairs)).unwrap();
    }
    s
}

fn buckets(fast: u64, slow: u64) -> [u64; 14] {
    // `fast` requests in 5..10 ms, `slow` in 0.5..1 s.
    let mut b = [0; 14];
    b[3] = fast;
    b[9] = slow;
    b
}

fn shop<'a>(backend: &'a str, codes: &'a [(u16, u64)], per_bucket: [u64; 14]) -> Row<'a> {
    Row {
        route: "shop",
        backend,
        codes,
        per_bucket,
    }
}

#[test]
fn the_text_format_parses_with_escapes_infinities_and_timestamps() {
    let text = "# HELP x_total A \"quoted\" help.\n\
                # TYPE x_total counter\n\
                \n\
                x_total{path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\nbye\",} 3 1700000000000\n\
                up 1\n\
                h_bucket{le=\"+Inf\"} +Inf\n\
                g{a=\"1\"} NaN\n\
                g2 { a = \"x\" } -1.5e-3\n";
    let s = parse(text).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s[0].name, "x_total");
    assert_eq!(s[0].label("path"), Some("C:\\dir"));
    assert_eq!(s[0].label("msg"), Some("say \"hi\"\nbye"));
    assert_eq!(s[0].value, 3.0);
    assert_eq!((s[1].name.as_str(), s[1].value), ("up", 1.0));
    assert_eq!(s[2].value, f64::INFINITY);
    assert!(s[3].value.is_nan());
    assert_eq!((s[4].label("a"), s[4].value), (Some("x"), -0.0015));

    for bad in [
        "x{a=\"1\" 2",
        "x{a=1} 2",
        "x 1 2 3",
        "x one",
        "{a=\"1\"} 2",
        "x{a=\"1} 2",
    ] {
        let e = parse(&format!("ok 1\n{bad}\n")).unwrap_err();
        assert!(e.starts_with("line 2: "), "{bad}: {e}");
    }
}

#[test]
fn a_scrape_sums_codes_and_keeps_buckets_per_pair() {
    let s = scrape(&[(
        "http://127.0.0.1:9901",
        &[
            shop(
                "old",
                &[(200, 90), (404, 5), (502, 3), (503, 2)],
                buckets(95, 5),
            ),
            shop("new", &[(200, 10)], buckets(10, 0)),
        ],
    )]);
    let r = &s.replicas["http://127.0.0.1:9901"];
    let old = &r[&("shop".to_string(), "old".to_string())];
    assert_eq!((old.requests, old.errors), (100.0, 5.0));
    assert_eq!(old.buckets.len(), 14);
    assert_eq!(old.buckets[3], (0.01, 95.0));
    assert_eq!(old.buckets[13], (f64::INFINITY, 100.0));
    assert_eq!(r.len(), 2, "gauges without a code are not pairs: {r:?}");

    let e = Scrape::default()
        .add_replica("http://127.0.0.1:1", "ok 1\nbroken{\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("http://127.0.0.1:1") && e.contains("line 2"),
        "{e}"
    );
}

#[test]
fn a_window_is_the_difference_summed_over_replicas() {
    let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.2:1");
    let before = scrape(&[
        (a, &[shop("old", &[(200, 100)], buckets(100, 0))]),
        (b, &[shop("old", &[(200, 50)], buckets(50, 0))]),
    ]);
    let after = scrape(&[
        (
            a,
            &[
                shop("old", &[(200, 190), (500, 10)], buckets(195, 5)),
                shop("new", &[(200, 20)], buckets(20, 0)),
            ],
        ),
        (b, &[shop("old", &[(200, 120)], buckets(120, 0))]),
    ]);
    let w = window(&before, &after, &["shop".to_string()]);
    assert_eq!((w.requests, w.errors), (100 + 70 + 20, 10));
    assert_eq!(w.by_backend["old"].requests, 170);
    assert_eq!(w.by_backend["old"].errors, 10);
    assert_eq!(w.by_backend["new"].requests, 20);
    assert!((w.error_ratio().unwrap() - 10.0 / 190.0).abs() < 1e-12);
    // 185 fast (5..10 ms), 5 slow (0.5..1 s).
    assert_eq!(w.buckets.last(), Some(&(f64::INFINITY, 190.0)));
    let p50 = w.quantile(0.5).unwrap();
    assert!(
        (p50 - (0.005 + 0.005 * 95.0 / 185.0)).abs() < 1e-12,
        "{p50}"
    );
    let p99 = w.quantile(0.99).unwrap();
    let expect = 0.5 + 0.5 * (0.99 * 190.0 - 185.0) / 5.0;
    assert!((p99 - expect).abs() < 1e-12, "{p99}");

    let t = w.traffic();
    assert_eq!((t.requests, t.errors), (190, 10));
    assert_eq!(t.p50_s, Some(p50));
    assert_eq!(t.p99_s, Some(p99));
    assert_eq!(t.by_backend["new"].requests, 20);

    // Another route's traffic is left out; no routes means all of them.
    assert_eq!(window(&before, &after, &["blog".to_string()]).requests, 0);
    assert_eq!(window(&before, &after, &[]).requests, 190);
}

#[test]
fn a_restarted_replica_counts_from_zero_and_a_new_one_waits() {
    let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.2:1");
    let before = scrape(&[(
        a,
        &[shop("old", &[(200, 1000), (502, 4)], buckets(1004, 0))],
    )]);
    // `a` restarted and has answered 30 since; `b` is new.
    let after = scrape(&[
        (a, &[shop("old", &[(200, 28), (502, 2)], buckets(30, 0))]),
        (b, &[shop("old", &[(200, 5000)], buckets(5000, 0))]),
    ]);
    let w = window(&before, &after, &[]);
    assert_eq!((w.requests, w.errors), (30, 2));
    assert_eq!(w.buckets.last(), Some(&(f64::INFINITY, 30.0)));

    // A restart whose totals rose again is still seen: a series it had is gone.
    let before = scrape(&[(
        a,
        &[
            shop("old", &[(200, 10)], buckets(10, 0)),
            shop("new", &[(200, 10)], buckets(10, 0)),
        ],
    )]);
    let after = scrape(&[(a, &[shop("old", &[(200, 40)], buckets(40, 0))])]);
    assert_eq!(window(&before, &after, &[]).requests, 40);

    // And the next window, with `b` known, counts both normally.
    let later = scrape(&[
        (a, &[shop("old", &[(200, 50)], buckets(50, 0))]),
        (b, &[shop("old", &[(200, 5007)], buckets(5007, 0))]),
    ]);
    let after = scrape(&[
        (a, &[shop("old", &[(200, 40)], buckets(40, 0))]),
        (b, &[shop("old", &[(200, 5000)], buckets(5000, 0))]),
    ]);
    assert_eq!(window(&after, &later, &[]).requests, 17);
}

#[test]
fn quantiles_follow_histogram_quantile() {
    let w = |per_bucket: [u64; 14]| {
        let s = scrape(&[("u", &[shop("old", &[(200, 1)], per_bucket)])]);
        Window {
            buckets: s.replicas["u"][&("shop".to_string(), "old".to_string())]
                .buckets
                .clone(),
            ..Window::default()
        }
    };
    // Everything above 10 s: the highest finite bound.
    let mut b = [0; 14];
    b[13] = 7;
    assert_eq!(w(b).quantile(0.5), Some(10.0));
    // All in the first bucket: interpolated from 0.
    let mut b = [0; 14];
    b[0] = 4;
    assert_eq!(w(b).quantile(0.5), Some(0.0005));
    // Empty and out of range.
    assert_eq!(w([0; 14]).quantile(0.5), None);
    assert_eq!(Window::default().quantile(0.5), None);
    assert_eq!(w(b).quantile(1.5), None);
    assert_eq!(Window::default().error_ratio(), None);
    let t = Window::default().traffic();
    assert_eq!((t.requests, t.p50_s, t.p99_s), (0, None, None));
}

#[test]
fn histograms_with_different_bounds_still_add_up() {
    let a = [(0.1, 1.0), (1.0, 3.0), (f64::INFINITY, 4.0)];
    let b = [(0.5, 2.0), (f64::INFINITY, 2.0)];
    assert_eq!(
        add_buckets(&a, &b),
        vec![(0.1, 1.0), (0.5, 3.0), (1.0, 5.0), (f64::INFINITY, 6.0)]
    );
}
