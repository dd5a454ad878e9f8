//! The platform a rehearsal migrates: the six applications of the runbook it
//! replaces (weather, stateless; ecommerce, education, tasks, medical and social,
//! each with its own database), and the files that describe it to the other
//! programs: `cutover-proxy`'s config, `cutover-load`'s scenario and the migration
//! plan. Rendering is pure (text from addresses and names), so it is tested alone;
//! the database set-up runs against the clusters.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use super::app::{AppSpec, ITEM_ID_HEADER, schema};
use super::cluster::{Cluster, ClusterError};
use super::workers::WriterRole;
use cutover_controller::cache::RedisUrl;

/// One application of the platform.
#[derive(Debug, Clone, Copy)]
pub struct AppDef {
    pub name: &'static str,
    /// Where its records go; `None` for the stateless app.
    pub table: Option<&'static str>,
    /// Its share of the traffic: the runbook's requests per minute, in thousands.
    pub share: u32,
}

/// The platform, in switchover order: the least critical databases first, so a
/// problem shows on `tasks` before it can touch a payment (`ecommerce`) or a
/// patient record (`medical`).
pub const PLATFORM: [AppDef; 6] = [
    AppDef {
        name: "weather",
        table: None,
        share: 5,
    },
    AppDef {
        name: "tasks",
        table: Some("tasks"),
        share: 3,
    },
    AppDef {
        name: "education",
        table: Some("enrollments"),
        share: 8,
    },
    AppDef {
        name: "social",
        table: Some("posts"),
        share: 20,
    },
    AppDef {
        name: "medical",
        table: Some("records"),
        share: 12,
    },
    AppDef {
        name: "ecommerce",
        table: Some("orders"),
        share: 15,
    },
];

/// Percent of each database app's requests that are writes.
const WRITE_PERCENT: u32 = 30;

/// Rows each database holds before the migration starts, so the initial copy has
/// something to copy.
const SEED_ROWS: u32 = 2000;

impl AppDef {
    /// The Host its route answers (`.test` is reserved: it never leaves the machine).
    pub fn host(&self) -> String {
        format!("{}.rehearse.test", self.name)
    }

    /// Its database's name.
    pub fn database(&self) -> &'static str {
        self.name
    }

    /// Its login role on both clusters.
    pub fn role(&self) -> String {
        format!("{}_app", self.name)
    }

    /// The name of its write template in the scenario (and so in the ledger).
    pub fn write_template(&self) -> String {
        format!("{}-write", self.name)
    }
}

/// The app whose ledger template is `template`.
pub fn app_of_template(template: &str) -> Option<&'static AppDef> {
    PLATFORM
        .iter()
        .find(|a| a.table.is_some() && a.write_template() == template)
}

/// The apps with a database.
pub fn stateful() -> impl Iterator<Item = &'static AppDef> {
    PLATFORM.iter().filter(|a| a.table.is_some())
}

/// A string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The site's apps for one side: each database app on its own database as its own
/// role, on `cluster`; the stateless app with its cache on `cache`.
pub fn site_apps(
    cluster: &Cluster,
    passwords: &[(String, String)],
    cache: RedisUrl,
) -> Vec<AppSpec> {
    PLATFORM
        .iter()
        .map(|a| match a.table {
            None => AppSpec::cached(a.name, &a.host(), cache.clone()),
            Some(table) => {
                let role = a.role();
                let pw = passwords
                    .iter()
                    .find(|(r, _)| *r == role)
                    .map_or("", |(_, p)| p.as_str());
                AppSpec::with_db(
                    a.name,
                    &a.host(),
                    &cluster.dsn_as(&role, pw, a.database()),
                    table,
                )
            }
        })
        .collect()
}

/// Creates every app's role (same name and password on both clusters: roles are
/// per cluster and the schema copy's grants name them) and database on both; the
/// schema and seed rows on `old` only (`sync` copies the schema).
pub async fn create_databases(
    old: &Cluster,
    new: &Cluster,
    passwords: &[(String, String)],
) -> Result<(), ClusterError> {
    for cluster in [old, new] {
        let mut ddl = String::new();
        for app in stateful() {
            let role = app.role();
            let pw = passwords
                .iter()
                .find(|(r, _)| *r == role)
                .map_or("", |(_, p)| p.as_str());
            let _ = writeln!(ddl, "CREATE ROLE {role} LOGIN PASSWORD '{pw}';");
        }
        cluster.sql("postgres", &ddl).await?;
        // CREATE DATABASE cannot run inside a multi-statement batch.
        for app in stateful() {
            cluster
                .sql("postgres", &format!("CREATE DATABASE {}", app.database()))
                .await?;
        }
    }
    let seeds = stateful().map(|app| async move {
        let Some(table) = app.table else {
            return Ok(());
        };
        let sql = format!(
            "{}\nINSERT INTO {table} (body) SELECT '{{\"seed\":' || g || '}}' FROM generate_series(1, {SEED_ROWS}) g;",
            schema(table, &app.role())
        );
        old.sql(app.database(), &sql).await
    });
    for r in futures_util::future::join_all(seeds).await {
        r?;
    }
    Ok(())
}

/// The login roles of the writers past the proxy (`workers.rs`) on `cluster`:
/// each with its own password, member of no other role. Roles are cluster-wide and
/// the schema copy's grants name them, so both clusters need them before `sync`.
pub async fn create_writer_roles(
    cluster: &Cluster,
    roles: &[WriterRole],
) -> Result<(), ClusterError> {
    let ddl: String = roles
        .iter()
        .map(|r| {
            format!(
                "CREATE ROLE {} LOGIN PASSWORD '{}';\n",
                r.name,
                r.password()
            )
        })
        .collect();
    cluster.sql("postgres", &ddl).await
}

/// What a writer past the proxy may do on its app's table: INSERT, read the id
/// `RETURNING` gives back (that column only) and use the id's sequence. Granted on
/// the old database; `sync` copies the grants to the new one with the schema.
pub fn writer_grants(table: &str, role: &str) -> String {
    format!(
        "GRANT INSERT, SELECT (id) ON {table} TO {role};\n\
         GRANT USAGE ON SEQUENCE {table}_id_seq TO {role};\n"
    )
}

/// Grants every writer role its app's table on `cluster` (the old one: the tables
/// exist there before the plan runs).
pub async fn grant_writers(cluster: &Cluster, roles: &[WriterRole]) -> Result<(), ClusterError> {
    for app in stateful() {
        let Some(table) = app.table else {
            continue;
        };
        let sql: String = roles
            .iter()
            .filter(|r| r.app.name == app.name)
            .map(|r| writer_grants(table, &r.name))
            .collect();
        if !sql.is_empty() {
            cluster.sql(app.database(), &sql).await?;
        }
    }
    Ok(())
}

/// Where the proxy finds the two sides.
#[derive(Debug, Clone)]
pub struct Backends {
    pub old: SocketAddr,
    pub new: SocketAddr,
    /// The new side serves HTTPS only: the CA file that signed its certificate
    /// (for [`crate::tls::SITE_NAME`]).
    pub new_ca: Option<std::path::PathBuf>,
}

impl Backends {
    /// `[backends.*]`: each side health-checked every second on an app's
    /// `/healthz`; the new one over TLS when it has it, its name verified against
    /// the run's CA. Pooled HTTP/1.1 (ALPN `http/1.1`), though the new side offers
    /// `h2` too: one multiplexed connection per replica costs more CPU per request
    /// on this machine.
    fn toml(&self) -> String {
        let health = format!(
            "[backends.{{side}}.health]\npath = \"/healthz\"\nhost = {}\ninterval = \"1s\"\n\
             timeout = \"1s\"\n",
            toml_str(&PLATFORM[0].host())
        );
        let mut s = format!(
            "[backends.old]\naddrs = [\"{}\"]\n{}\n[backends.new]\naddrs = [\"{}\"]\n",
            self.old,
            health.replace("{side}", "old"),
            self.new
        );
        if let Some(ca) = &self.new_ca {
            let _ = writeln!(
                s,
                "tls = {{ sni = {}, ca_file = {} }}",
                toml_str(crate::tls::SITE_NAME),
                toml_str(&ca.display().to_string())
            );
        }
        s.push_str(&health.replace("{side}", "new"));
        s
    }
}

/// `cutover-proxy`'s config: the two sites as backends `old` and `new`, one route
/// per app at 100/0 with writes on old and a sticky cookie, listeners on loopback
/// ports the proxy picks (it logs them).
pub fn proxy_config(backends: &Backends) -> String {
    proxy_config_with(
        backends,
        "# cutover rehearse: the two sites behind one proxy\n\
         [listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
}

/// One replica of a fleet (`rehearse --replicas`).
#[derive(Debug, Clone)]
pub struct ReplicaConf<'a> {
    /// `[fleet] name`.
    pub name: &'a str,
    /// Its data listener (port 0: the proxy picks one and logs it).
    pub http: SocketAddr,
    /// Its admin listener: its own address at the port every replica shares.
    pub admin: SocketAddr,
    /// `[fleet] peers`: `NAME:PORT`.
    pub peers: &'a str,
    /// The DNS server that resolves `peers`.
    pub nameserver: SocketAddr,
    pub state_file: &'a std::path::Path,
}

/// `cutover-proxy`'s config for one replica of a fleet: as [`proxy_config`], with
/// its own listeners, `[fleet]` (name, state file, peers by DNS) and the resolver
/// that answers for the peers' name.
pub fn replica_config(backends: &Backends, r: &ReplicaConf<'_>) -> String {
    proxy_config_with(
        backends,
        &format!(
            "# cutover rehearse: replica {name} of the proxy fleet\n\
             [listen]\nhttp = \"{http}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [fleet]\nname = {name_str}\nstate_file = {state}\npeers = {peers}\n\
             bootstrap_timeout = \"5s\"\nsync_interval = \"1s\"\n\n\
             [resolver]\nnameservers = [\"{ns}\"]\n",
            name = r.name,
            name_str = toml_str(r.name),
            http = r.http,
            admin = r.admin,
            state = toml_str(&r.state_file.display().to_string()),
            peers = toml_str(r.peers),
            ns = r.nameserver,
        ),
    )
}

/// The config's common part (proxy settings, backends, routes) after `head`.
fn proxy_config_with(backends: &Backends, head: &str) -> String {
    let mut s = format!(
        "{head}\n[proxy]\nthreads = 2\ngrace = \"5s\"\n\n\
         [hold]\nupgrade_grace = \"500ms\"\nupgrade_rate = 50\n\n{}",
        backends.toml()
    );
    for app in &PLATFORM {
        let _ = write!(
            s,
            "\n[[routes]]\nname = {}\nhosts = [{}]\nweights = {{ old = 100, new = 0 }}\n\
             writes = \"old\"\nsticky = {{ cookie = \"cutover\" }}\n",
            toml_str(app.name),
            toml_str(&app.host())
        );
    }
    s
}

/// `cutover-load`'s scenario: every app's share of the traffic as in the runbook,
/// 70% reads and 30% writes for the database apps (reads that always answer 200),
/// forecasts for weather. Writes carry the request id in their body and record the
/// id the app returns in the ledger.
pub fn scenario() -> String {
    let mut s = String::from("# cutover rehearse: the platform's traffic mix\n");
    for app in &PLATFORM {
        let host = toml_str(&app.host());
        let reads = app.share * 10 * (100 - WRITE_PERCENT) / 100;
        match app.table {
            None => {
                let _ = write!(
                    s,
                    "\n[[request]]\nname = \"{}-read\"\nweight = {}\nhost = {host}\n\
                     path = \"/forecast/city-{{{{rand:1..500}}}}\"\n",
                    app.name,
                    app.share * 10
                );
            }
            Some(_) => {
                let writes = app.share * 10 * WRITE_PERCENT / 100;
                let _ = write!(
                    s,
                    "\n[[request]]\nname = \"{name}-read\"\nweight = {reads}\nhost = {host}\n\
                     path = \"/items\"\n\n\
                     [[request]]\nname = \"{write}\"\nweight = {writes}\nmethod = \"POST\"\n\
                     host = {host}\npath = \"/items\"\n\
                     headers = {{ content-type = \"application/json\" }}\n\
                     body = '{{\"app\":\"{name}\",\"request_id\":\"{{{{request_id}}}}\",\"n\":{{{{seq}}}}}}'\n\
                     ledger = true\nid_header = \"{ITEM_ID_HEADER}\"\n",
                    name = app.name,
                    write = app.write_template(),
                );
            }
        }
    }
    s
}

/// The plan's timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub bake: Duration,
}

/// The stateless app's caches, as URLs with their passwords (the plan file is
/// private to the run).
#[derive(Debug, Clone)]
pub struct Caches {
    pub old: String,
    pub new: String,
}

/// How the plan finds the proxies.
#[derive(Debug, Clone)]
pub enum PlanProxies {
    /// One proxy, by its admin address.
    Admin(SocketAddr),
    /// Every replica `name` resolves to (at `nameserver`), at admin port `port`.
    Discover {
        name: String,
        port: u16,
        nameserver: SocketAddr,
    },
}

impl PlanProxies {
    /// The `[proxies]` lines that say so.
    fn toml(&self) -> String {
        match self {
            PlanProxies::Admin(admin) => format!("admin = [\"http://{admin}\"]\n"),
            PlanProxies::Discover {
                name,
                port,
                nameserver,
            } => format!(
                "discover = {}\nnameservers = [\"{nameserver}\"]\n",
                toml_str(&format!("{name}:{port}"))
            ),
        }
    }
}

/// The migration plan, in the real format: the six apps with their databases
/// (superuser DSNs by database name inline: the file is private to this run and
/// the servers are on loopback), 10% → 50% → 100% to new with gates, switchovers
/// without reverse replication, and finalize.
pub fn plan(
    proxies: &PlanProxies,
    old_dsn: impl Fn(&str) -> String,
    new_dsn: impl Fn(&str) -> String,
    caches: &Caches,
    timing: Timing,
) -> String {
    let bake = format!("{}ms", timing.bake.as_millis());
    let mut s = format!(
        "# cutover rehearse: the whole platform, migrated on this machine\n\
         name = \"rehearsal\"\n\n[proxies]\n{}old = \"old\"\nnew = \"new\"\n",
        proxies.toml()
    );
    for app in &PLATFORM {
        let _ = write!(
            s,
            "\n[[apps]]\nname = {}\nroute = {}\n",
            toml_str(app.name),
            toml_str(&app.host())
        );
        if app.table.is_some() {
            let _ = write!(
                s,
                "[apps.database]\nsource = {}\ntarget = {}\n",
                toml_str(&old_dsn(app.database())),
                toml_str(&new_dsn(app.database()))
            );
        } else {
            // The cache is copied and followed from the start; the step to 100%
            // waits for it. Notifications are off on the old Redis, as they are by
            // default: the plan turns them on.
            let _ = write!(
                s,
                "[apps.cache]\nsource = {}\ntarget = {}\nmode = \"sync\"\nwait = \"60s\"\n\
                 enable_notifications = true\n",
                toml_str(&caches.old),
                toml_str(&caches.new)
            );
        }
    }
    for new_share in [10, 50, 100] {
        let _ = write!(
            s,
            "\n[[steps]]\nweights = {{ old = {}, new = {new_share} }}\nbake = \"{bake}\"\n\
             gates = [\"error_ratio < 0.001\", \"p99 < 1s\", \"replication_lag < 5s\"]\n",
            100 - new_share
        );
    }
    s.push_str(
        "\n[switchover]\nmax_lag = \"5s\"\nmax_pause = \"10s\"\nreverse = false\n\n\
         [finalize]\ndrain_timeout = \"30s\"\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_is_the_runbooks() {
        let mut names: Vec<&str> = PLATFORM.iter().map(|a| a.name).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "ecommerce",
                "education",
                "medical",
                "social",
                "tasks",
                "weather"
            ]
        );
        assert_eq!(stateful().count(), 5);
        assert_eq!(PLATFORM.iter().map(|a| a.share).sum::<u32>(), 63);
    }

    #[test]
    fn every_write_template_maps_back_to_its_app() {
        for app in stateful() {
            assert_eq!(
                app_of_template(&app.write_template()).map(|a| a.name),
                Some(app.name)
            );
        }
        assert!(app_of_template("weather-read").is_none());
        assert!(app_of_template("tasks-read").is_none());
    }

    #[test]
    fn the_scenario_parses_and_has_a_ledger_template_per_database() {
        let text = scenario();
        let parsed = cutover_load::Scenario::parse(&text, std::path::Path::new("mix.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let ledgered: Vec<&str> = parsed
            .templates()
            .iter()
            .filter(|t| t.ledger)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(ledgered.len(), 5, "{ledgered:?}");
        // 30% writes in each database app.
        let weight = |name: &str| {
            parsed
                .templates()
                .iter()
                .find(|t| t.name == name)
                .map_or(0, |t| t.weight)
        };
        assert_eq!(weight("social-read"), 140);
        assert_eq!(weight("social-write"), 60);
        assert_eq!(weight("weather-read"), 50);
    }

    /// The plan for `proxies`, parsed as `cutover run` parses it.
    fn parsed(proxies: &PlanProxies) -> cutover_controller::plan::model::Plan {
        let dsn = |side: &'static str, port: u16| {
            move |db: &str| {
                format!("host=127.0.0.1 port={port} user=postgres password=pw-{side} dbname={db}")
            }
        };
        let text = plan(
            proxies,
            dsn("old", 1),
            dsn("new", 2),
            &Caches {
                old: "redis://:pw-old@127.0.0.1:6380".into(),
                new: "redis://:pw-new@127.0.0.1:6381".into(),
            },
            Timing {
                bake: Duration::from_secs(3),
            },
        );
        cutover_controller::plan::model::Plan::parse(&text, std::path::Path::new("plan.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_plan_is_a_valid_plan_with_every_app_and_three_steps() {
        let plan = parsed(&PlanProxies::Admin("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(plan.apps.len(), 6);
        assert_eq!(plan.databases().count(), 5);
        let shares: Vec<f64> = plan.steps.iter().map(|s| s.new_percent).collect();
        assert_eq!(shares, [10.0, 50.0, 100.0]);
        assert!(!plan.reverse);
        assert_eq!(plan.max_pause, Duration::from_secs(10));
        assert_eq!(plan.drain_timeout, Duration::from_secs(30));
        // The weather app's cache, followed with notifications the plan turns on.
        let cached: Vec<&str> = plan
            .apps
            .iter()
            .filter(|a| a.cache.is_some())
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(cached, ["weather"]);
        let c = plan.apps[0].cache.as_ref().unwrap();
        assert_eq!((c.source.port, c.target.port), (6380, 6381));
        assert!(c.enable_notifications);
    }

    #[test]
    fn strings_are_quoted_for_toml() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_str("x\ny"), r#""x\ny""#);
    }

    #[test]
    fn a_replica_config_joins_its_fleet_by_dns() {
        let cfg = replica_config(
            &backends(None),
            &ReplicaConf {
                name: "proxy-1",
                http: "127.0.0.3:0".parse().unwrap_or_else(|e| panic!("{e}")),
                admin: "127.0.0.3:9901".parse().unwrap_or_else(|e| panic!("{e}")),
                peers: "proxies.rehearse:9901",
                nameserver: "127.0.0.1:5353".parse().unwrap_or_else(|e| panic!("{e}")),
                state_file: std::path::Path::new("/run/proxy-1/state.json"),
            },
        );
        // The proxy's own validation runs in the rehearsal test; here, the shape.
        let value: toml::Value = toml::from_str(&cfg).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        let get = |table: &str, key: &str| {
            value
                .get(table)
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        assert_eq!(get("admin", "listen").as_deref(), Some("127.0.0.3:9901"));
        assert_eq!(get("listen", "http").as_deref(), Some("127.0.0.3:0"));
        assert_eq!(get("fleet", "name").as_deref(), Some("proxy-1"));
        assert_eq!(
            get("fleet", "peers").as_deref(),
            Some("proxies.rehearse:9901")
        );
        assert_eq!(
            get("fleet", "state_file").as_deref(),
            Some("/run/proxy-1/state.json")
        );
        let ns = value
            .get("resolver")
            .and_then(|r| r.get("nameservers"))
            .and_then(|n| n.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>());
        assert_eq!(ns, Some(vec!["127.0.0.1:5353"]));
        let routes = value
            .get("routes")
            .and_then(|r| r.as_array())
            .map_or(0, Vec::len);
        assert_eq!(routes, 6);
    }

    #[test]
    fn a_fleet_plan_discovers_its_replicas() {
        let plan = parsed(&PlanProxies::Discover {
            name: "proxies.rehearse".into(),
            port: 9901,
            nameserver: "127.0.0.1:5353".parse().unwrap(),
        });
        assert_eq!(
            plan.proxies,
            cutover_controller::plan::discover::ProxySource::Discover {
                host: "proxies.rehearse".into(),
                port: 9901,
                nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
            }
        );
    }

    fn backends(new_ca: Option<&str>) -> Backends {
        Backends {
            old: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
            new: "127.0.0.1:2".parse().unwrap_or_else(|e| panic!("{e}")),
            new_ca: new_ca.map(Into::into),
        }
    }

    #[test]
    fn the_proxy_config_has_a_route_per_app() {
        let cfg = proxy_config(&backends(None));
        let value: toml::Value = toml::from_str(&cfg).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        let routes = value
            .get("routes")
            .and_then(|r| r.as_array())
            .map_or(0, Vec::len);
        assert_eq!(routes, 6);
        assert!(cfg.contains("writes = \"old\""));
        assert!(value["backends"]["new"].get("tls").is_none());
    }

    #[test]
    fn an_https_new_side_is_reached_and_checked_over_tls() {
        let cfg = proxy_config(&backends(Some("/run/ca.pem")));
        let value: toml::Value = toml::from_str(&cfg).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        let new = &value["backends"]["new"];
        assert_eq!(new["tls"]["ca_file"].as_str(), Some("/run/ca.pem"));
        assert_eq!(new["tls"]["sni"].as_str(), Some(crate::tls::SITE_NAME));
        for side in ["old", "new"] {
            let health = &value["backends"][side]["health"];
            assert_eq!(health["path"].as_str(), Some("/healthz"), "{side}");
        }
        assert!(value["backends"]["old"].get("tls").is_none());
    }
}
