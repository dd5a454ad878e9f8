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

#[test]
fn a_missing_environment_variable_names_the_field() {
    let err = parse(EXAMPLE).unwrap_err();
    assert!(
        err.contains("plan.toml: apps[1] (tasks).database.source_env")
            && err.contains("TASKS_SOURCE_DSN is not set"),
        "{err}"
    );
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
    assert!(err.contains("proxies: give admin"), "{err}");
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
    assert!(
        parse(&text)
            .unwrap_err()
            .contains("another app has this name")
    );
    let text = example_inline().replace("medical.example.com", "tasks.example.com");
    assert!(
        parse(&text)
            .unwrap_err()
            .contains("another app has this route")
    );
}
