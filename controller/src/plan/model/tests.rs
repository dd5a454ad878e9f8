use super::check::closest;
use super::read::{APP_KEYS, STEP_KEYS};
use super::*;

const EXAMPLE: &str = include_str!("../../../../examples/plan.toml");

/// The example with its DSNs inline instead of from the environment.
fn example_inline() -> String {
    EXAMPLE
        .replace(
            "source_env = \"TASKS_SOURCE_DSN\"",
            "source = \"host=127.0.0.1 user=cutover password=pw-tasks-1 dbname=tasks\"",
        )
        .replace(
            "target_env = \"TASKS_TARGET_DSN\"",
            "target = \"host=127.0.0.2 user=cutover dbname=tasks\"",
        )
        .replace(
            "source_env = \"MEDICAL_SOURCE_DSN\"",
            "source = \"postgresql://cutover@127.0.0.1/medical\"",
        )
        .replace(
            "target_env = \"MEDICAL_TARGET_DSN\"",
            "target = \"postgresql://cutover@127.0.0.2/medical\"",
        )
}

fn parse(text: &str) -> Result<Plan, String> {
    Plan::parse(text, Path::new("plan.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_example_plan_parses() {
    let plan = parse(&example_inline()).unwrap();
    assert_eq!(plan.name, "platform");
    assert_eq!(plan.apps.len(), 3);
    assert!(plan.apps[0].database.is_none());
    let tasks = plan.apps[1].database.as_ref().unwrap();
    assert_eq!(tasks.replication, "cutover_tasks");
    assert_eq!(plan.steps.len(), 3);
    assert_eq!(plan.steps[0].new_percent, 10.0);
    assert_eq!(plan.steps[0].bake, Duration::from_secs(120));
    assert_eq!(plan.steps[0].gates.len(), 3);
    assert_eq!(plan.steps[1].label(1), "step 2 (new 50%)");
    assert_eq!(plan.databases().count(), 2);
    assert!(plan.reverse);
    assert_eq!(plan.max_pause, Duration::from_secs(10));
    assert!(matches!(plan.proxies, ProxySource::Admin(ref u) if u.len() == 3));
    // The password is never shown.
    assert!(!format!("{plan:?}").contains("pw-tasks-1"));
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn a_missing_environment_variable_names_the_field() {
    let err = parse(EXAMPLE).unwrap_err();
    let line = line_of(EXAMPLE, "source_env = \"TASKS_SOURCE_DSN\"");
    assert!(
        err.contains(&format!(
            "plan.toml:{line}:14: apps[1].database.source_env: the environment variable \
             TASKS_SOURCE_DSN is not set"
        )),
        "{err}"
    );
    // Every unset variable at once, not only the first.
    for var in [
        "TASKS_TARGET_DSN",
        "MEDICAL_SOURCE_DSN",
        "MEDICAL_TARGET_DSN",
    ] {
        assert!(err.contains(var), "{var}: {err}");
    }
    assert!(err.starts_with("4 problems in the plan:\n"), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_point_at_the_line() {
    let text = example_inline().replace("bake = \"2m\"", "bake = \"2m\"\nbaek = 1");
    let err = parse(&text).unwrap_err();
    assert!(
        err.starts_with("plan.toml:") && err.contains("baek"),
        "{err}"
    );
    let line = text.lines().position(|l| l.starts_with("baek")).unwrap() + 1;
    assert!(err.contains(&format!(":{line}:")), "{err}");

    let err = parse(&example_inline().replace("{ old = 90, new = 10 }", "{ old = 90, new = 20 }"))
        .unwrap_err();
    assert!(
        err.contains("steps[0].weights: old 90 + new 20 must be 100"),
        "{err}"
    );

    let err = parse(&example_inline().replace("{ old = 90, new = 10 }", "{ old = 90, blue = 10 }"))
        .unwrap_err();
    assert!(err.contains("steps[0].weights.blue"), "{err}");

    let err = parse(&example_inline().replace("bake = \"2m\"", "bake = \"soon\"")).unwrap_err();
    assert!(err.contains("steps[0].bake"), "{err}");

    let err = parse(&example_inline().replace("\"p99 < 1s\"", "\"p98 < 1s\"")).unwrap_err();
    assert!(err.contains("p98"), "{err}");
}

#[test]
fn proxies_need_exactly_one_source() {
    let both = example_inline().replace(
        "# discover = \"cutover-proxy-admin",
        "discover = \"cutover-proxy-admin",
    );
    let err = parse(&both).unwrap_err();
    let line = line_of(&both, "discover = ");
    assert!(
        err.contains(&format!(
            "plan.toml:{line}:12: proxies.discover: give admin"
        )),
        "{err}"
    );
    let dns = both.replace(
        "admin = [\"http://10.0.0.5:9901\", \"http://10.0.0.6:9901\", \"http://10.0.0.7:9901\"]",
        "",
    );
    let plan = parse(&dns).unwrap();
    assert!(matches!(
        plan.proxies,
        ProxySource::Discover { port: 9901, .. }
    ));
}

#[test]
fn duplicate_apps_and_routes_are_refused() {
    let text = example_inline().replace("name = \"medical\"", "name = \"tasks\"");
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("apps[2].name: another app (apps[1]) has this name"),
        "{err}"
    );
    let text = example_inline().replace("medical.example.com", "tasks.example.com");
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("apps[2].route: another app (apps[1]) has this route"),
        "{err}"
    );
}

/// A small plan, to break in more than one place.
const SMALL: &str = "name = \"small\"

[proxies]
admin = [\"http://127.0.0.1:9901\"]

[[apps]]
name = \"web\"
route = \"web.test\"

[[steps]]
weights = { new = 10 }
bake = \"1m\"

[[steps]]
weights = { new = 50 }
bake = \"2m\"

[switchover]
max_pause = \"10s\"
";

#[test]
fn the_small_plan_parses() {
    let plan = parse(SMALL).unwrap();
    assert_eq!(plan.steps[1].new_percent, 50.0);
    assert_eq!(plan.steps[1].bake, Duration::from_secs(120));
    assert_eq!(plan.max_pause, Duration::from_secs(10));
    assert_eq!(
        (plan.apps[0].old.as_str(), plan.apps[0].new.as_str()),
        ("old", "new")
    );
}

#[test]
fn independent_errors_are_all_reported_each_with_its_position() {
    let text = SMALL
        .replace("route = ", "rout = ")
        .replace("bake = \"2m\"", "bake = \"2 minutes\"")
        .replace("{ new = 50 }", "{ new = 50, old = 60 }");
    let err = parse(&text).unwrap_err();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "3 problems in the plan:", "{err}");
    // In file order, each with its own line and column; the misspelt `route` is
    // not reported a second time as missing.
    let rout = line_of(&text, "rout");
    let weights = line_of(&text, "weights = { new = 50");
    let bake = line_of(&text, "bake = \"2 minutes");
    assert_eq!(
        lines[1..],
        [
            format!("  plan.toml:{rout}:1: apps[0].rout: unknown key; did you mean `route`?"),
            format!(
                "  plan.toml:{weights}:11: steps[1].weights: old 60 + new 50 must be 100; \
                 e.g. {{ old = 60, new = 40 }}"
            ),
            format!(
                "  plan.toml:{bake}:8: steps[1].bake: \"2 minutes\": unknown unit \"minutes\"; \
                 write \"m\" (units: ns, us, ms, s, m, h, d)"
            ),
        ],
        "{err}"
    );
}

#[test]
fn a_typo_suggests_the_key_that_was_meant() {
    let err = parse(&SMALL.replace("max_pause", "max_puase")).unwrap_err();
    assert!(
        err.ends_with("switchover.max_puase: unknown key; did you mean `max_pause`?"),
        "{err}"
    );
    let err = parse(&SMALL.replace(
        "[[steps]]\nweights = { new = 10 }",
        "[[step]]\nweights = { new = 10 }",
    ))
    .unwrap_err();
    assert!(
        err.contains("step: unknown key; did you mean `steps`?"),
        "{err}"
    );
    // Nothing near: the keys that may be there instead.
    let err =
        parse(&SMALL.replace("name = \"web\"", "name = \"web\"\ncolour = \"red\"")).unwrap_err();
    assert!(
        err.contains(
            "apps[0].colour: unknown key; the keys here are name, route, old, new, database"
        ),
        "{err}"
    );
    assert_eq!(closest("baek", STEP_KEYS), Some("bake"));
    assert_eq!(closest("Route", APP_KEYS), Some("route"));
    assert_eq!(closest("od", &["old", "new"]), Some("old"));
    assert_eq!(closest("x", &["old", "new"]), None);
}

#[test]
fn a_bad_duration_names_the_field_and_the_fix() {
    let text = SMALL.replace("max_pause = \"10s\"", "max_pause = \"10\"");
    let line = line_of(&text, "max_pause");
    assert_eq!(
        parse(&text).unwrap_err(),
        format!(
            "plan.toml:{line}:13: switchover.max_pause: \"10\": the unit is missing; \
             use e.g. \"10s\" or \"10ms\""
        )
    );
    let err = parse(&SMALL.replace("bake = \"1m\"", "bake = 60")).unwrap_err();
    assert!(
        err.contains("steps[0].bake: 60 has no unit; write a string such as \"60s\" or \"60ms\""),
        "{err}"
    );
    let err = parse(&SMALL.replace("max_pause = \"10s\"", "max_pause = \"soon\"")).unwrap_err();
    assert!(
        err.contains("switchover.max_pause: \"soon\" is not a duration"),
        "{err}"
    );
}

#[test]
fn missing_and_mistyped_values_point_at_their_table() {
    let text = SMALL.replace("bake = \"1m\"\n", "");
    let err = parse(&text).unwrap_err();
    assert!(
        err.starts_with("plan.toml:10:1: steps[0].bake: missing; add bake = \"2m\""),
        "{err}"
    );
    let err = parse(&SMALL.replace("name = \"web\"", "name = 7")).unwrap_err();
    assert!(
        err.contains(
            "plan.toml:7:8: apps[0].name: expected a string (in quotes), found an integer"
        ),
        "{err}"
    );
    let err = parse(&SMALL.replace("[[apps]]", "[apps]")).unwrap_err();
    assert!(
        err.contains("plan.toml:6:1: apps: expected [[apps]] tables"),
        "{err}"
    );
    // Nothing in the file to point at: the file and the field.
    let text = SMALL.replace("[proxies]\nadmin = [\"http://127.0.0.1:9901\"]\n", "");
    assert!(
        parse(&text)
            .unwrap_err()
            .starts_with("plan.toml: proxies: missing; add a [proxies] table"),
        "{}",
        parse(&text).unwrap_err()
    );
}

#[test]
fn both_sides_of_an_app_must_differ_and_both_token_sources_are_refused() {
    let text = SMALL.replace(
        "route = \"web.test\"",
        "route = \"web.test\"\nnew = \"old\"",
    );
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("plan.toml:9:7: apps[0].new: old and new are both the backend \"old\""),
        "{err}"
    );
    let text = SMALL.replace(
        "admin = [",
        "token_file = \"t\"\ntoken_env = \"T\"\nadmin = [",
    );
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("plan.toml:5:13: proxies.token_env: give token_file or token_env, not both"),
        "{err}"
    );
}

#[test]
fn a_bad_admin_url_and_a_bad_gate_are_found_where_they_are_written() {
    let text = SMALL
        .replace(
            "[\"http://127.0.0.1:9901\"]",
            "[\"http://127.0.0.1:9901\", \"https://b:1\"]",
        )
        .replace(
            "bake = \"1m\"",
            "bake = \"1m\"\ngates = [\"p99 < 1s\", \"p98 < 1s\"]",
        );
    let err = parse(&text).unwrap_err();
    assert!(err.contains("plan.toml:4:35: proxies.admin[1]: bad proxy admin URL \"https://b:1\": the admin API is plain HTTP"), "{err}");
    let gates = line_of(&text, "gates");
    assert!(
        err.contains(&format!(
            "plan.toml:{gates}:22: steps[0].gates[1]: gate \"p98 < 1s\": unknown metric \"p98\""
        )),
        "{err}"
    );
}

#[test]
fn users_gates_need_the_timeline_they_read() {
    let with_gate = SMALL.replace(
        "bake = \"1m\"",
        "bake = \"1m\"\ngates = [\"p99 < 1s\", \"users_p99 < 1s\"]",
    );
    let err = parse(&with_gate).unwrap_err();
    let gates = line_of(&with_gate, "gates");
    assert!(
        err.contains(&format!(
            "plan.toml:{gates}:22: steps[0].gates[1]: users_p99 reads cutover-load's timeline: \
             add [users] timeline = \"FILE\""
        )),
        "{err}"
    );
    let plan = parse(&format!(
        "{with_gate}\n[users]\ntimeline = \"load/timeline.jsonl\"\n"
    ))
    .unwrap();
    assert_eq!(
        plan.users_timeline,
        Some(PathBuf::from("load/timeline.jsonl"))
    );
    assert_eq!(plan.steps[0].gates.len(), 2);
    let empty = parse(&format!("{SMALL}\n[users]\n")).unwrap_err();
    assert!(
        empty.contains("users.timeline: missing; add timeline = \"FILE\""),
        "{empty}"
    );
    let typo = parse(&format!("{SMALL}\n[users]\ntimline = \"t\"\n")).unwrap_err();
    assert!(typo.contains("timline"), "{typo}");
}

#[test]
fn secrets_and_syntax_errors_keep_their_positions() {
    let text = format!("{SMALL}\n[secrets]\nfrom = \"kubectl:old\"\nto = \"vault:x\"\nfom = 1\n");
    let line = line_of(&text, "fom");
    let err = parse(&text).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "plan.toml:{line}:1: secrets.fom: unknown field `fom`"
        )),
        "{err}"
    );
    let err = parse("name = \"x\"\n[proxies\n").unwrap_err();
    assert!(err.starts_with("plan.toml:2:"), "{err}");
}

#[test]
fn an_app_cache_is_read_with_defaults_and_its_errors_are_placed() {
    let with = |cache: &str| {
        SMALL.replace(
            "route = \"web.test\"\n",
            &format!("route = \"web.test\"\n{cache}"),
        )
    };
    let plan = parse(&with(
        "[apps.cache]\nsource = \"redis://:pw@10.0.0.7:6379\"\ntarget = \"rediss://10.1.0.7?ca=/ca.pem\"\n",
    ))
    .unwrap();
    let c = plan.apps[0].cache.as_ref().unwrap();
    assert_eq!(c.mode, CacheMode::Sync);
    assert_eq!(c.wait, Duration::from_secs(300));
    assert_eq!(c.source.password.as_deref(), Some("pw"));
    assert!(c.target.tls && !c.enable_notifications);
    assert!(
        !format!("{plan:?}").contains("pw@"),
        "a password in {plan:?}"
    );

    let plan = parse(&with(
        "[apps.cache]\nsource = \"redis://a\"\ntarget = \"redis://b\"\nmode = \"warm\"\nhit_ratio = 0.9\nwait = \"1m\"\n",
    ))
    .unwrap();
    let c = plan.apps[0].cache.as_ref().unwrap();
    assert_eq!(
        (c.mode, c.hit_ratio, c.wait),
        (CacheMode::Warm, 0.9, Duration::from_secs(60))
    );

    let text =
        with("[apps.cache]\nsource = \"http://a\"\nmode = \"cold\"\nhit_ratio = 2\nttl = 1\n");
    let err = parse(&text).unwrap_err();
    for want in [
        format!(
            "plan.toml:{}:10: apps[0].cache.source: a Redis URL starts with redis://",
            line_of(&text, "source")
        ),
        "apps[0].cache.target: missing; give target = \"redis://…\" or target_env = \"VARIABLE\""
            .to_string(),
        format!(
            "plan.toml:{}:8: apps[0].cache.mode: \"cold\" is not a mode",
            line_of(&text, "mode")
        ),
        "apps[0].cache.hit_ratio: 2 is not a ratio".to_string(),
        "apps[0].cache.ttl: unknown key".to_string(),
    ] {
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
    }
}
