//! What the database tests share: two clusters with the demo schema, the `cutover`
//! binary, and the check that no password ever shows.

use std::process::Command;

pub use cutover_tests::{APP_PASSWORD, Pair, Run};
use cutover_tests::{Postgres, SUPERUSER_PASSWORD, WRITER_PASSWORD, binary};
use tokio::sync::Semaphore;

/// The tests that put real load on the machine run one at a time, so that each
/// gets the CPU its throughput assertion needs.
pub static HEAVY: Semaphore = Semaphore::const_new(1);

/// Runs `cutover ARGS` with `env`, off the async runtime, and checks that nothing
/// it printed contains a password.
pub async fn cutover(args: &[&str], env: &[(String, String)]) -> Run {
    let bin = binary("cutover");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.to_vec();
    let run = tokio::task::spawn_blocking(move || {
        let out = Command::new(bin)
            .args(&args)
            .env_remove("CUTOVER_SOURCE")
            .env_remove("CUTOVER_TARGET")
            .env_remove("CUTOVER_ADMIN_TOKEN")
            .envs(env)
            .output()
            .expect("run cutover");
        Run::from(out)
    })
    .await
    .unwrap();
    assert_no_secrets(&run.all());
    run
}

/// No password of the test clusters appears in `text`.
#[track_caller]
pub fn assert_no_secrets(text: &str) {
    for secret in [SUPERUSER_PASSWORD, APP_PASSWORD, WRITER_PASSWORD] {
        assert!(
            !text.contains(secret),
            "a password leaked into output:\n{text}"
        );
    }
}

/// Rows of `items` on `pg` as (id, body).
pub async fn items(pg: &Postgres) -> std::collections::HashMap<i64, String> {
    pg.connect("app")
        .await
        .query("SELECT id::bigint, body FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
