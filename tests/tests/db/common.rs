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
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.to_vec();
    let run = tokio::task::spawn_blocking(move || {
        // Off the runtime too: a first call may build the binary, for minutes,
        // and the test's own connections must go on meanwhile.
        let bin = binary("cutover");
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

/// A synced pair and a proxy whose route `HOST` the switchover holds, with plain
/// backends behind it: for the tests whose writers go straight to the databases.
pub struct SwitchSite {
    pub pair: Pair,
    pub proxy: cutover_tests::Proxy,
    _backends: (cutover_tests::Backend, cutover_tests::Backend),
}

impl SwitchSite {
    pub const HOST: &'static str = "jobs.test";

    /// Syncs `pair` and starts the proxy (writes on old).
    pub async fn start(pair: Pair) -> SwitchSite {
        cutover(&["db", "sync"], &pair.env()).await.ok();
        SwitchSite::serve(pair)
    }

    /// Starts the proxy (writes on old) in front of `pair` as it is.
    pub fn serve(pair: Pair) -> SwitchSite {
        let backends = (
            cutover_tests::Backend::start("jobs-old"),
            cutover_tests::Backend::start("jobs-new"),
        );
        let cfg = cutover_tests::two_backend_config(
            backends.0.addr,
            backends.1.addr,
            &[Self::HOST],
            (100.0, 0.0),
            "writes = \"old\"",
        );
        let proxy = cutover_tests::ProxyBuilder::new(cfg).start().unwrap();
        SwitchSite {
            pair,
            proxy,
            _backends: backends,
        }
    }

    /// `cutover db switchover` of the route with `--max-pause` and `extra` flags.
    pub async fn switchover(&self, max_pause: &str, extra: &[&str]) -> Run {
        self.switchover_env(max_pause, extra, &[]).await
    }

    /// [`SwitchSite::switchover`] with `env` added to the command's environment
    /// (the controller's fail and pause points).
    pub async fn switchover_env(
        &self,
        max_pause: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let admin = format!("http://{}", self.proxy.admin);
        let mut args = vec![
            "db",
            "switchover",
            "--proxy",
            admin.as_str(),
            "--route",
            Self::HOST,
            "--max-pause",
            max_pause,
        ];
        args.extend_from_slice(extra);
        let mut all = self.pair.env();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        cutover(&args, &all).await
    }

    /// The route as the proxy reports it.
    pub async fn route(&self) -> serde_json::Value {
        self.proxy.status().await["routes"][0].clone()
    }

    /// Writes still on old, nothing held, and the application can write to the
    /// source: what a refused switchover leaves.
    pub async fn assert_nothing_moved(&self) {
        let route = self.route().await;
        assert_eq!(route["writes"], "old", "{route:#}");
        assert_eq!(route["hold"], serde_json::Value::Null, "{route:#}");
        app_insert(&self.pair.old, "writable").await;
    }
}

/// Inserts a row into `items` on `pg` as the application role; panics if refused.
pub async fn app_insert(pg: &Postgres, body: &str) {
    let app = pg.connect_as("app", APP_PASSWORD, "app").await.unwrap();
    app.execute("INSERT INTO items (body) VALUES ($1)", &[&body])
        .await
        .unwrap();
}

/// Two clusters synced, the demo app on each, and a proxy in front with `host`'s
/// route at 100% old and writes on old, plus `extra` config lines.
pub struct Behind {
    pub pair: Pair,
    pub env: Vec<(String, String)>,
    pub proxy: cutover_tests::Proxy,
    _apps: (cutover_tests::App, cutover_tests::App),
}

impl Behind {
    pub async fn start(host: &str, extra: &str) -> Behind {
        let pair = Pair::start().await;
        let env = pair.env();
        cutover(&["db", "sync"], &env).await.ok();
        let old_app = cutover_tests::App::start("old", &Pair::app_dsn(&pair.old));
        let new_app = cutover_tests::App::start("new", &Pair::app_dsn(&pair.new));
        let cfg = cutover_tests::two_backend_config(
            old_app.addr,
            new_app.addr,
            &[host],
            (100.0, 0.0),
            &format!("writes = \"old\"\n{extra}"),
        );
        let proxy = cutover_tests::ProxyBuilder::new(cfg).start().unwrap();
        Behind {
            pair,
            env,
            proxy,
            _apps: (old_app, new_app),
        }
    }

    /// `cutover db switchover` of `host` through the proxy, with `--max-pause`;
    /// its JSON report.
    pub async fn switchover(&self, host: &str, max_pause: &str) -> serde_json::Value {
        let admin = format!("http://{}", self.proxy.admin);
        cutover(
            &[
                "db",
                "switchover",
                "--proxy",
                &admin,
                "--route",
                host,
                "--max-pause",
                max_pause,
                "--json",
            ],
            &self.env,
        )
        .await
        .ok()
        .json()
    }
}
