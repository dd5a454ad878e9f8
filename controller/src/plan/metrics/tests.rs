use std::time::Duration;

use super::*;
use crate::plan::gate::Gate;

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
    /// The pair's `cutover_route_weight`, if exported.
    weight: Option<f64>,
}

impl Row<'_> {
    fn weighted(self, weight: f64) -> Self {
        Row {
            weight: Some(weight),
            ..self
        }
    }
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
    t.push_str("# TYPE cutover_route_weight gauge\n");
    for p in pairs {
        if let Some(w) = p.weight {
            t.push_str(&format!(
                "{WEIGHT}{{backend=\"{}\",route=\"{}\"}} {w}\n",
                p.backend, p.route
            ));
        }
    }
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
    on("shop", backend, codes, per_bucket)
}

fn on<'a>(
    route: &'a str,
    backend: &'a str,
    codes: &'a [(u16, u64)],
    per_bucket: [u64; 14],
) -> Row<'a> {
    Row {
        route,
        backend,
        codes,
        per_bucket,
        weight: None,
    }
}

/// `s` as if taken `secs` after `t0`.
fn at(mut s: Scrape, t0: Instant, secs: u64) -> Scrape {
    s.at = Some(t0 + Duration::from_secs(secs));
    s
}

fn gate(text: &str) -> Gate {
    Gate::parse(text).unwrap()
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
            shop("new", &[(200, 10)], buckets(10, 0)).weighted(12.5),
        ],
    )]);
    let r = &s.replicas["http://127.0.0.1:9901"];
    let old = &r[&("shop".to_string(), "old".to_string())];
    assert_eq!((old.requests, old.errors), (100.0, 5.0));
    assert_eq!(old.buckets.len(), 14);
    assert_eq!(old.buckets[3], (0.01, 95.0));
    assert_eq!(old.buckets[13], (f64::INFINITY, 100.0));
    assert_eq!(r.len(), 2, "gauges without a code are not pairs: {r:?}");
    let w = &s.weights["http://127.0.0.1:9901"];
    assert_eq!(
        w.iter().collect::<Vec<_>>(),
        [(&("shop".to_string(), "new".to_string()), &12.5)]
    );

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
fn a_restarted_replica_and_a_new_one_count_from_zero() {
    let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.2:1");
    let before = scrape(&[(
        a,
        &[shop("old", &[(200, 1000), (502, 4)], buckets(1004, 0))],
    )]);
    // `a` restarted and has answered 30 since; `b` is new to the run and has
    // answered 5000 since it started.
    let after = scrape(&[
        (a, &[shop("old", &[(200, 28), (502, 2)], buckets(30, 0))]),
        (
            b,
            &[shop("old", &[(200, 4990), (503, 10)], buckets(5000, 0))],
        ),
    ]);
    let w = window(&before, &after, &[]);
    assert_eq!((w.requests, w.errors), (5030, 12));
    assert_eq!(w.buckets.last(), Some(&(f64::INFINITY, 5030.0)));

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
        (
            b,
            &[shop("old", &[(200, 4997), (503, 10)], buckets(5007, 0))],
        ),
    ]);
    let after = scrape(&[
        (a, &[shop("old", &[(200, 40)], buckets(40, 0))]),
        (
            b,
            &[shop("old", &[(200, 4990), (503, 10)], buckets(5000, 0))],
        ),
    ]);
    let w = window(&after, &later, &[]);
    assert_eq!((w.requests, w.errors), (17, 0));
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

/// 10% new, failing half its requests: 1080 good answers from old, 60 of 120 from
/// new are 500s, over 4 s on two replicas. The route sees 5%; new's own figure is
/// 50%, and only that fails the gate.
#[test]
fn the_new_side_is_judged_by_its_own_answers() {
    let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.2:1");
    let t0 = Instant::now();
    let before = at(
        scrape(&[
            (
                a,
                &[
                    on("shop.test", "old", &[(200, 500)], buckets(500, 0)).weighted(90.0),
                    on("shop.test", "new", &[], [0; 14]).weighted(10.0),
                ],
            ),
            (
                b,
                &[
                    on("shop.test", "old", &[(200, 300)], buckets(300, 0)).weighted(90.0),
                    on("shop.test", "new", &[(200, 2)], buckets(0, 2)).weighted(10.0),
                ],
            ),
        ]),
        t0,
        0,
    );
    let after = at(
        scrape(&[
            (
                a,
                &[
                    on("shop.test", "old", &[(200, 1040)], buckets(1040, 0)).weighted(90.0),
                    on("shop.test", "new", &[(200, 30), (500, 30)], buckets(0, 60)).weighted(10.0),
                ],
            ),
            (
                b,
                &[
                    on("shop.test", "old", &[(200, 840)], buckets(840, 0)).weighted(90.0),
                    on("shop.test", "new", &[(200, 32), (500, 30)], buckets(0, 62)).weighted(10.0),
                ],
            ),
        ]),
        t0,
        4,
    );
    let w = window(&before, &after, &["shop.test".to_string()]);
    assert_eq!((w.requests, w.errors, w.seconds), (1200, 60, Some(4.0)));
    let r = &w.routes[0];
    assert_eq!((r.all.requests, r.all.errors), (1200, 60));
    assert_eq!((r.new.requests, r.new.errors), (120, 60));
    assert_eq!(
        (r.new_backend.as_deref(), r.new_weight),
        (Some("new"), Some(10.0))
    );

    let g = gate("error_ratio < 0.1").evaluate(0, &w, None);
    assert!(!g.passed);
    assert_eq!(g.value, Some(0.5));
    assert_eq!(
        g.detail,
        "error_ratio of new (shop.test) 0.5000 >= 0.1 over 4.0 s (60 of 120 requests)"
    );
    let g = gate("route_error_ratio < 0.1").evaluate(0, &w, None);
    assert!(g.passed, "{}", g.detail);
    assert_eq!(g.value, Some(0.05));
    assert_eq!(
        g.detail,
        "route_error_ratio of shop.test 0.0500 < 0.1 over 4.0 s (60 of 1200 requests)"
    );
    // The old way of reading it, kept for the record's spans: 5%.
    assert_eq!(w.error_ratio(), Some(0.05));

    // Latency too: new's answers took 0.5..1 s, old's 5..10 ms. Nine in ten of the
    // route's answers are fast, so its p90 is; new's p90 is new's.
    let g = gate("p90 < 500ms").evaluate(0, &w, None);
    assert!(!g.passed);
    assert!((g.value.unwrap() - 0.95).abs() < 1e-12, "{:?}", g.value);
    assert_eq!(
        g.detail,
        "p90 of new (shop.test) 0.950s >= 500ms over 4.0 s (120 requests)"
    );
    let g = gate("route_p90 < 500ms").evaluate(0, &w, None);
    assert!(g.passed, "{}", g.detail);
    assert!((g.value.unwrap() - 0.01).abs() < 1e-12, "{:?}", g.value);
    let p50 = r.new.quantile(0.5).unwrap();
    assert!((p50 - 0.75).abs() < 1e-12, "{p50}");
}

/// A replica that first shows up in the window's last scrape (scaled out mid-bake)
/// counts everything since its start, new side included; one that went away
/// takes its counts along.
#[test]
fn a_replica_that_appears_mid_window_is_counted() {
    let (a, b, c) = (
        "http://127.0.0.1:1",
        "http://127.0.0.2:1",
        "http://127.0.0.3:1",
    );
    let before = scrape(&[
        (
            a,
            &[
                on("shop.test", "old", &[(200, 100)], buckets(100, 0)),
                on("shop.test", "new", &[(200, 10)], buckets(10, 0)),
            ],
        ),
        (c, &[on("shop.test", "old", &[(200, 70)], buckets(70, 0))]),
    ]);
    let after = scrape(&[
        (
            a,
            &[
                on("shop.test", "old", &[(200, 190)], buckets(190, 0)),
                on("shop.test", "new", &[(200, 20)], buckets(20, 0)),
            ],
        ),
        (
            b,
            &[
                on("shop.test", "old", &[(200, 45)], buckets(45, 0)),
                on("shop.test", "new", &[(200, 3), (502, 2)], buckets(0, 5)).weighted(10.0),
            ],
        ),
    ]);
    let w = window(&before, &after, &[]);
    assert_eq!((w.requests, w.errors), (90 + 10 + 45 + 5, 2));
    let r = &w.routes[0];
    assert_eq!(r.route, "shop.test");
    assert_eq!((r.new.requests, r.new.errors), (15, 2));
    assert_eq!(r.new.buckets.last(), Some(&(f64::INFINITY, 15.0)));
    // Only `b` exports the weight here; it is still the new side's.
    assert_eq!(r.new_weight, Some(10.0));
    // No counter went negative: every count is a whole, non-negative number.
    let g = gate("error_ratio < 0.2").evaluate(0, &w, None);
    assert!(g.passed, "{}", g.detail);
    assert!(
        g.detail.ends_with("(2 of 15 requests)") && !g.detail.contains(" over "),
        "a window without scrape times has no length: {}",
        g.detail
    );
}

/// At weight 0 the new side answering nothing is the step's point; at 10% it is a
/// step that showed nothing.
#[test]
fn a_silent_new_side_is_judged_by_its_route() {
    let t0 = Instant::now();
    let silent = |new_weight: f64, old: u64| {
        let codes = [(200, old)];
        let rows = [
            on("shop.test", "old", &codes, buckets(old, 0)).weighted(100.0 - new_weight),
            on("shop.test", "new", &[], [0; 14]).weighted(new_weight),
        ];
        scrape(&[("http://127.0.0.1:1", &rows)])
    };
    let w = window(
        &at(silent(0.0, 100), t0, 0),
        &at(silent(0.0, 400), t0, 3),
        &["shop.test".to_string()],
    );
    assert_eq!((w.requests, w.routes[0].new.requests), (300, 0));
    for g in ["error_ratio < 0.01", "p99 < 1s"] {
        let r = gate(g).evaluate(0, &w, None);
        assert!(r.passed, "{g}: {}", r.detail);
        assert_eq!(r.value, None);
        assert_eq!(
            r.detail,
            "no requests answered by new (shop.test) in the window, as none were sent: its \
             weight is 0"
        );
    }

    let w = window(
        &at(silent(10.0, 100), t0, 0),
        &at(silent(10.0, 400), t0, 3),
        &["shop.test".to_string()],
    );
    // At 10% with no answer from new (every request may be a write, which stays on
    // the write side until the switchover), the route's own figures are judged.
    let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
    assert!(r.passed, "{}", r.detail);
    assert!(
        r.detail.starts_with(
            "no requests answered by new (shop.test) in the window (at weight 10%; writes \
             stay on the write side until the switchover), so the whole route is judged: "
        ),
        "{}",
        r.detail
    );
    // A weight set during the window counts: 0 at its start, 10 at its end.
    let w = window(
        &at(silent(0.0, 100), t0, 0),
        &at(silent(10.0, 400), t0, 3),
        &["shop.test".to_string()],
    );
    assert_eq!(w.routes[0].new_weight, Some(10.0));
    assert!(
        gate("error_ratio < 0.01")
            .evaluate(0, &w, None)
            .detail
            .contains("at weight 10%")
    );
}

/// Each app names its own new backend; a route whose new side nobody named and
/// that has no backend called `new` is judged as a whole rather than not at all.
#[test]
fn apps_name_their_own_new_backends() {
    let before = Scrape::default();
    let rows = [
        on("shop.test", "old", &[(200, 90)], buckets(90, 0)).weighted(50.0),
        on("shop.test", "new", &[(200, 10)], buckets(10, 0)).weighted(50.0),
        on("static.test", "static-old", &[(200, 50)], buckets(50, 0)).weighted(50.0),
        on(
            "static.test",
            "static-new",
            &[(200, 40), (503, 10)],
            buckets(50, 0),
        )
        .weighted(50.0),
        on("blog.test", "old", &[(200, 1)], buckets(1, 0)),
        // The proxy exports an empty histogram for every backend on every route.
        on("static.test", "new", &[], [0; 14]),
    ];
    let after = scrape(&[("http://127.0.0.1:1", &rows)]);
    let sides = [
        Side {
            route: "static.test".into(),
            new: "static-new".into(),
        },
        Side {
            route: "shop.test".into(),
            new: "new".into(),
        },
    ];
    let w = window_of(&before, &after, &sides);
    let names: Vec<&str> = w.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(names, ["static.test", "shop.test"]);
    assert_eq!(w.requests, 200, "blog.test is no app's route");
    let r = &w.routes[0];
    assert_eq!(
        (r.new.requests, r.new.errors, r.new_weight),
        (50, 10, Some(50.0))
    );
    let g = gate("error_ratio < 0.1").evaluate(0, &w, None);
    assert!(!g.passed);
    assert_eq!(
        g.detail,
        "error_ratio of new (static-new on static.test) 0.2000 >= 0.1 (10 of 50 requests)"
    );

    // Without the names, `static.test` has no backend called `new` (an empty
    // series with neither a weight nor an answer does not make one).
    let w = window(&before, &after, &[]);
    let names: Vec<&str> = w.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(names, ["blog.test", "shop.test", "static.test"]);
    assert_eq!(w.routes[1].new_backend.as_deref(), Some("new"));
    assert_eq!(w.routes[2].new_backend, None);
    assert_eq!(w.routes[2].new, Figures::default());
    let g = gate("error_ratio < 0.1").evaluate(0, &w, None);
    assert!(!g.passed);
    assert_eq!(
        g.detail,
        "error_ratio of static.test (every backend: none there is named \"new\") 0.1000 >= 0.1 \
         (10 of 100 requests)"
    );
}
