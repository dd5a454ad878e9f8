use std::path::Path;
use std::time::Duration;

use super::*;
use crate::model::{Sticky, WriteSide};

const GOOD: &str = r#"
[listen]
http = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[backends.old]
addrs = ["127.0.0.1:9001"]

[backends.new]
addrs = ["127.0.0.1:9002", "lb.new.internal:80"]

[[routes]]
hosts = ["Shop.Example.com", "*.shop.example.com"]
weights = { old = 90, new = 10 }
writes = "old"
sticky = { cookie = "cutover" }

[[routes]]
hosts = ["*"]
weights = { old = 12.5, new = 87.5 }
sticky = { header = "Authorization" }
"#;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("cutover.toml"))
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse_str(text) {
        Err(ConfigError::Invalid(d)) => d,
        other => panic!("expected errors, got {other:?}"),
    }
}

#[test]
fn the_documented_example_parses() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.backend_names().collect::<Vec<_>>(), ["old", "new"]);
    assert_eq!(
        c.routes[0].hosts,
        ["shop.example.com", "*.shop.example.com"]
    );
    assert_eq!(c.routes[0].name, "shop.example.com");
    assert_eq!(c.routes[0].weights.as_slice(), [9000, 1000]);
    assert_eq!(c.routes[0].writes, WriteSide::Backend(0));
    assert_eq!(c.routes[1].weights.as_slice(), [1250, 8750]);
    assert_eq!(c.routes[0].members, [0, 1]);
    assert_eq!(c.routes[1].writes, WriteSide::Split);
    assert_eq!(c.routes[1].sticky, Sticky::Header("authorization".into()));
    assert!(matches!(c.routes[0].sticky, Sticky::Cookie { ref name, .. } if name == "cutover"));
}

#[test]
fn every_semantic_error_is_reported_with_position_and_path() {
    let text = r#"
[backends.old]
addrs = ["127.0.0.1:9001"]

[backends.new]
addrs = ["nope"]

[[routes]]
hosts = ["a.example.com"]
weights = { old = 90, blue = 10 }
writes = "green"

[[routes]]
hosts = ["a.example.com", "b.example.com:80"]
weights = { old = -5, new = 100 }

[[routes]]
hosts = ["c.example.com"]
weights = { old = 60, new = 30 }
"#;
    let d = errors(text);
    let rendered: Vec<String> = d.iter().map(ToString::to_string).collect();
    let all = rendered.join("\n");
    let expect = [
        "cutover.toml:6:10: backends.new.addrs[0]: \"nope\" has no port",
        "cutover.toml:10:30: routes[0].weights.blue: unknown backend \"blue\"",
        "cutover.toml:11:10: routes[0].writes: unknown backend \"green\"",
        "cutover.toml:14:10: routes[1].hosts[0]: \"a.example.com\" is already routed by routes[0]",
        "cutover.toml:14:27: routes[1].hosts[1]: hosts are matched without the port",
        "cutover.toml:15:19: routes[1].weights.old: weight -5 is negative",
        "cutover.toml:19:11: routes[2].weights: weights sum to 90, not 100",
    ];
    for e in expect {
        assert!(all.contains(e), "missing {e:?} in:\n{all}");
    }
    assert_eq!(d.len(), expect.len(), "{all}");
}

#[test]
fn type_errors_name_the_field_and_position() {
    let d = errors("[[routes]]\nhosts = [\"a\"]\nweights = { old = \"ninety\" }\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].path, "routes[0].weights.old");
    assert_eq!((d[0].line, d[0].col), (3, 19));
}

#[test]
fn unknown_fields_are_rejected() {
    let d = errors("[listen]\nhttp3 = \"x\"\n");
    assert!(d[0].message.contains("unknown field"), "{}", d[0]);
    assert_eq!(d[0].line, 2);
}

#[test]
fn syntax_errors_point_at_the_line() {
    let d = errors("[listen\nhttp = 1\n");
    assert_eq!(d[0].line, 1);
}

#[test]
fn weights_allow_two_decimals_only() {
    let text = "[backends.a]\naddrs=[\"127.0.0.1:1\"]\n[backends.b]\naddrs=[\"127.0.0.1:2\"]\n\
                [[routes]]\nhosts=[\"x\"]\nweights={a=33.333, b=66.667}\n";
    let d = errors(text);
    assert!(
        d.iter().all(|e| e.message.contains("two decimals")),
        "{d:?}"
    );
    assert_eq!(d.len(), 2);
}

#[test]
fn sticky_needs_exactly_one_key_source() {
    let text = "[backends.a]\naddrs=[\"127.0.0.1:1\"]\n\
                [[routes]]\nhosts=[\"x\"]\nweights={a=100}\nsticky={cookie=\"c\", client_ip=true}\n";
    let d = errors(text);
    assert!(d[0].message.contains("exactly one"), "{d:?}");
    assert_eq!(d[0].path, "routes[0].sticky");
}

#[test]
fn wildcards_and_defaults_are_validated() {
    for bad in ["*example.com", "a.*.com", "*.", "exa mple.com"] {
        let text = format!(
            "[backends.a]\naddrs=[\"127.0.0.1:1\"]\n[[routes]]\nhosts=[{bad:?}]\nweights={{a=100}}\n"
        );
        assert_eq!(errors(&text).len(), 1, "{bad} should be rejected");
    }
}

#[test]
fn bad_process_settings_are_reported() {
    let d = errors("[proxy]\nthreads = 0\ngrace = \"soon\"\n[admin]\nlisten = \"localhost\"\n");
    let paths: Vec<&str> = d.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["proxy.threads", "proxy.grace", "admin.listen"]);
}

#[test]
fn resilience_settings_have_defaults_and_are_validated() {
    let c = parse_str(GOOD).unwrap();
    let r = &c.routes[0];
    assert_eq!((r.attempts, r.retry_buffer, r.failover), (2, 65536, true));
    assert_eq!(r.timeouts.connect, Duration::from_secs(3));
    assert_eq!(r.timeouts.total, None);
    assert_eq!(c.hold.max_queued, 10_000);
    assert_eq!(c.backends[0].eject.failures, 3);
    assert!(c.backends[0].health.is_none());

    let text = r#"
[proxy]
connect_timeout = "2s"
[hold]
max_queued = 50
[resolver]
nameservers = ["127.0.0.1:5353", "10.0.0.2"]
[backends.old]
addrs = ["old.internal:80"]
health = { path = "/ready", interval = "500ms", healthy = 1, unhealthy = 2 }
eject = { failures = 0 }
[[routes]]
hosts = ["a.test"]
weights = { old = 100 }
attempts = 3
retry_buffer = 1024
timeouts = { response_header = "5s", total = "30s" }
failover = false
"#;
    let c = parse_str(text).unwrap();
    let r = &c.routes[0];
    assert_eq!((r.attempts, r.retry_buffer, r.failover), (3, 1024, false));
    assert_eq!(
        r.timeouts.connect,
        Duration::from_secs(2),
        "inherits proxy.connect_timeout"
    );
    assert_eq!(r.timeouts.response_header, Duration::from_secs(5));
    assert_eq!(r.timeouts.total, Some(Duration::from_secs(30)));
    assert_eq!(c.hold.max_queued, 50);
    assert_eq!(c.resolver.nameservers[1], "10.0.0.2:53".parse().unwrap());
    let h = c.backends[0].health.as_ref().unwrap();
    assert_eq!((h.path.as_str(), h.healthy, h.unhealthy), ("/ready", 1, 2));
    assert_eq!(c.backends[0].eject.failures, 0);

    let bad = "[backends.old]\naddrs=[\"127.0.0.1:1\"]\nhealth = { path = \"ready\", unhealthy = 0 }\n\
               [[routes]]\nhosts=[\"a\"]\nweights={old=100}\nattempts = 0\ntimeouts = { total = \"0s\" }\n";
    let paths: Vec<String> = errors(bad).into_iter().map(|d| d.path).collect();
    assert_eq!(
        paths,
        [
            "backends.old.health.path",
            "backends.old.health.unhealthy",
            "routes[0].attempts",
            "routes[0].timeouts.total"
        ]
    );
}

#[test]
fn a_health_check_has_a_host_and_a_status_range() {
    let with = |health: &str| {
        format!(
            "[backends.old]\naddrs = [\"127.0.0.1:1\"]\nhealth = {{ {health} }}\n\
             [[routes]]\nhosts = [\"a.test\"]\nweights = {{ old = 100 }}\n"
        )
    };
    let check = |health: &str| {
        parse_str(&with(health)).unwrap().backends[0]
            .health
            .clone()
            .unwrap()
    };
    let h = check("path = \"/ready\"");
    assert_eq!((h.host, h.status), (None, (200, 399)));
    let h = check("host = \"ready.internal\", status = 200");
    assert_eq!(
        (h.host.as_deref(), h.status),
        (Some("ready.internal"), (200, 200))
    );
    assert_eq!(check("status = \"200-299\"").status, (200, 299));
    assert_eq!(check("status = \"204\"").status, (204, 204));

    for bad in [
        "status = 600",
        "status = \"600\"",
        "status = \"300-200\"",
        "status = \"2xx\"",
        "status = true",
    ] {
        let d = errors(&with(bad));
        let paths: Vec<&str> = d.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["backends.old.health.status"], "{bad}: {d:?}");
    }
    let d = errors(&with("status = \"300-200\""));
    assert!(
        d[0].message.contains("300 is above 200"),
        "{}",
        d[0].message
    );
    let d = errors(&with("status = \"600\""));
    assert!(
        d[0].message.contains("600 is not an HTTP status"),
        "{}",
        d[0].message
    );
    let d = errors(&with("host = \"\""));
    let paths: Vec<&str> = d.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["backends.old.health.host"]);
}

#[test]
fn upgrades_go_with_the_writes_unless_the_route_says_split() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.routes[0].upgrades, crate::model::Upgrades::Writes);
    assert_eq!(c.hold.upgrade_grace, Duration::from_secs(2));
    assert_eq!(c.hold.upgrade_rate, 500);
    let text = "[hold]\nupgrade_grace = \"500ms\"\nupgrade_rate = 0\n[backends.old]\naddrs = [\"127.0.0.1:1\"]\n\
                [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\nupgrades = \"split\"\n";
    let c = parse_str(text).unwrap();
    assert_eq!(c.routes[0].upgrades, crate::model::Upgrades::Split);
    assert_eq!(c.hold.upgrade_grace, Duration::from_millis(500));
    assert_eq!(c.hold.upgrade_rate, 0);
    let d = errors(
        "[hold]\nupgrade_grace = \"later\"\nupgrade_rate = -1\n[backends.old]\naddrs = [\"127.0.0.1:1\"]\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\nupgrades = \"reads\"\n",
    );
    let paths: Vec<&str> = d.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "hold.upgrade_grace",
            "hold.upgrade_rate",
            "routes[0].upgrades"
        ]
    );
    assert!(
        d[2].message.contains("\"writes\" or \"split\""),
        "{}",
        d[2].message
    );
}

#[test]
fn protocols_grpc_reads_proxy_protocol_and_the_access_log() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.backends[0].protocol, crate::model::Protocol::Http1);
    assert!(c.routes[0].grpc_reads.is_empty());
    assert!(!c.listen.proxy_protocol);
    assert_eq!((c.log.access, c.log.query), (0.0, false));

    let text = "[listen]\nproxy_protocol = true\n[log]\naccess = 0.25\nquery = true\n\
                [backends.old]\naddrs = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\n\
                [backends.new]\naddrs = [\"127.0.0.1:2\"]\nprotocol = \"auto\"\ntls = {}\n\
                [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\n\
                grpc_reads = [\"/pkg.S/Get*\", \"/pkg.S/List\"]\n";
    let c = parse_str(text).unwrap();
    assert!(c.listen.proxy_protocol);
    assert_eq!((c.log.access, c.log.query), (0.25, true));
    assert_eq!(c.backends[0].protocol, crate::model::Protocol::H2);
    assert_eq!(c.backends[1].protocol, crate::model::Protocol::Auto);
    assert_eq!(c.routes[0].grpc_reads, ["/pkg.S/Get*", "/pkg.S/List"]);
    for (access, want) in [("\"on\"", 1.0), ("\"off\"", 0.0), ("1", 1.0)] {
        let c = parse_str(&format!("[log]\naccess = {access}\n")).unwrap();
        assert_eq!(c.log.access, want, "{access}");
    }

    let d = errors(
        "[log]\naccess = \"sometimes\"\n\
         [backends.old]\naddrs = [\"127.0.0.1:1\"]\nprotocol = \"auto\"\n\
         [backends.new]\naddrs = [\"127.0.0.1:2\"]\nprotocol = \"http3\"\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\n\
         grpc_reads = [\"pkg.S/Get\", \"/pkg.S/*Get\"]\n",
    );
    let paths: Vec<&str> = d.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "log.access",
            "backends.old.protocol",
            "backends.new.protocol",
            "routes[0].grpc_reads[0]",
            "routes[0].grpc_reads[1]"
        ]
    );
    assert!(d[1].message.contains("ALPN"), "{}", d[1].message);
    assert!(d[2].message.contains("\"http3\""), "{}", d[2].message);
}

#[test]
fn limits_have_defaults_and_every_bad_one_is_named() {
    let c = parse_str(
        "[backends.old]\naddrs = [\"127.0.0.1:1\"]\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\n",
    )
    .unwrap();
    let l = &c.limits;
    assert_eq!(l.request_head, Duration::from_secs(10));
    assert_eq!(l.keepalive, Duration::from_secs(60));
    assert_eq!(
        (l.body_idle, l.send),
        (Duration::from_secs(30), Duration::from_secs(30))
    );
    assert_eq!((l.max_connections, l.max_connections_per_ip), (10_000, 0));
    assert_eq!((l.max_header_size, l.max_headers), (64 * 1024, 100));
    assert_eq!((l.max_body, l.buffer_memory), (1 << 30, 1 << 20));
    assert_eq!(l.upstream_idle, Duration::from_secs(55));
    let r = &c.routes[0];
    assert_eq!(r.max_body, 1 << 30, "a route inherits limits.max_body");
    assert!(r.request_buffering);
    assert_eq!(r.timeouts.body_idle, Duration::from_secs(30));
    assert_eq!(r.retry_budget.ratio, 0.2);

    let c = parse_str(
        "[limits]\nmax_body = \"10MB\"\nbody_idle = \"5s\"\nmax_header_size = 8192\n\
         [backends.old]\naddrs = [\"127.0.0.1:1\"]\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\n\
         [[routes]]\nhosts = [\"b.test\"]\nweights = { old = 100 }\nmax_body = \"1KiB\"\n\
         request_buffering = false\ntimeouts = { body_idle = \"1s\" }\n\
         retry_budget = { ratio = 0.5, window = \"30s\", min_per_second = 0 }\n",
    )
    .unwrap();
    assert_eq!(c.limits.max_header_size, 8192);
    assert_eq!(c.routes[0].max_body, 10_000_000);
    assert_eq!(c.routes[0].timeouts.body_idle, Duration::from_secs(5));
    let b = &c.routes[1];
    assert_eq!((b.max_body, b.request_buffering), (1024, false));
    assert_eq!(b.timeouts.body_idle, Duration::from_secs(1));
    assert_eq!(
        (
            b.retry_budget.ratio,
            b.retry_budget.window,
            b.retry_budget.min_per_second
        ),
        (0.5, Duration::from_secs(30), 0)
    );

    let d = errors(
        "[limits]\nrequest_head = \"0s\"\nmax_body = \"lots\"\nmax_header_size = 10\n\
         max_connections = -1\n\
         [backends.old]\naddrs = [\"127.0.0.1:1\"]\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 100 }\n\
         retry_budget = { ratio = 20.0, window = \"1h\" }\n",
    );
    let paths: Vec<&str> = d.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "limits.request_head",
            "limits.max_body",
            "limits.max_header_size",
            "limits.max_connections",
            "routes[0].retry_budget.ratio",
            "routes[0].retry_budget.window",
        ]
    );
    assert!(d[1].message.contains("\"lots\""), "{}", d[1].message);
}
