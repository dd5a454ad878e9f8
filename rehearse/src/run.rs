//! The rehearsal, step by step: binaries, clusters, databases, sites, proxy, load,
//! plan, and the checks after it. Each stage prints one progress line with its
//! duration. Everything started goes into the [`Rig`] at once, so an error or a
//! Ctrl-C at any point still stops it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

use super::app::Site;
use super::cluster::{self, Cluster};
use super::fleet::{self, Fleet};
use super::platform::{self, PLATFORM, PlanProxies, Timing};
use super::rig::Rig;
use super::users::{self, LoadFiles};
use super::workers;
use super::{
    Progress, RehearseArgs, RehearseError, binaries, cache, hostile, io, machine, procs, redis,
    sockets, tls, view, writes,
};
use cutover_controller::plan::record::Outcome;

/// A random password: 24 letters and digits.
fn password() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Writes a file readable by its owner only.
pub(super) fn write_private(path: &Path, text: &str) -> Result<(), RehearseError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("write {}", path.display())))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .map_err(io(format!("write {}", path.display())))
}

fn write_file(path: &Path, text: &str) -> Result<(), RehearseError> {
    std::fs::write(path, text).map_err(io(format!("write {}", path.display())))
}

/// The client programs the schema copy and the switchover run.
const CLIENT_PROGRAMS: [&str; 3] = ["pg_dump", "pg_restore", "psql"];

/// Chooses `pg_dump`, `pg_restore` and `psql` for the controller: `$CUTOVER_PG_BIN`
/// when set, else those beside the server programs that run the clusters (their
/// own version, and started directly: through a distribution's version-picking
/// wrapper script, each call cost about 25 ms of CPU, twice per switchover, in the
/// seconds users are measured), else `PATH`; an error says what is missing.
/// Returns where they are, for the progress line.
fn choose_client_programs(server_bin: &Path) -> Result<String, RehearseError> {
    let pg_bin = std::env::var_os("CUTOVER_PG_BIN");
    if pg_bin.is_none() && CLIENT_PROGRAMS.iter().all(|p| server_bin.join(p).is_file()) {
        cutover_controller::use_programs_from(server_bin.to_path_buf());
        return Ok(server_bin.display().to_string());
    }
    let found = |name: &str| match &pg_bin {
        Some(dir) => Path::new(dir).join(name).is_file(),
        None => std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())),
    };
    let missing: Vec<&str> = CLIENT_PROGRAMS.into_iter().filter(|n| !found(n)).collect();
    if missing.is_empty() {
        return Ok(match pg_bin {
            Some(dir) => format!("$CUTOVER_PG_BIN ({})", Path::new(&dir).display()),
            None => "PATH".into(),
        });
    }
    let hint = if server_bin.join("pg_dump").is_file() {
        format!("export CUTOVER_PG_BIN={}", server_bin.display())
    } else {
        "apt-get install postgresql-client-15, or set CUTOVER_PG_BIN to their directory".into()
    };
    Err(RehearseError::Step(format!(
        "the schema copy needs {} (looked in {}): {hint}",
        missing.join(", "),
        if pg_bin.is_some() {
            "$CUTOVER_PG_BIN"
        } else {
            "PATH"
        }
    )))
}

/// One GET per app through the proxy: every route must answer 200 before the
/// load starts, so a broken set-up fails here with the app's name.
async fn smoke_test(proxy: SocketAddr) -> Result<(), RehearseError> {
    for app in &PLATFORM {
        let path = if app.table.is_some() {
            "/items"
        } else {
            "/forecast/lisbon"
        };
        let (status, body) = procs::http_get_host(proxy, &app.host(), path, Duration::from_secs(5))
            .await
            .map_err(RehearseError::Step)?;
        if status != 200 {
            return Err(RehearseError::Step(format!(
                "{} (GET {path} through the proxy) answered {status}: {}",
                app.name,
                body.trim()
            )));
        }
    }
    Ok(())
}

/// Runs the rehearsal and returns its exit code (0: the plan succeeded, nothing
/// failed, nothing lost). What it starts is put in `rig`; the caller stops it.
pub(super) async fn rehearse(
    args: &RehearseArgs,
    progress: &Progress,
    rig: &mut Rig,
) -> Result<u8, RehearseError> {
    let timing = Timing {
        bake: Duration::from_secs(if args.quick { 3 } else { 10 }),
    };
    progress.line(&format!(
        "rehearsing the migration of {} apps at {} req/s (bakes of {}s)",
        PLATFORM.len(),
        args.rate,
        timing.bake.as_secs()
    ));

    let bins = tokio::task::spawn_blocking(binaries::locate)
        .await
        .map_err(|e| RehearseError::Step(format!("locating the binaries: {e}")))??;
    let server_bin = cluster::server_programs()?;
    let clients = choose_client_programs(&server_bin)?;
    redis::server_program()?;

    let dir = tempfile::Builder::new()
        .prefix("cutover-rehearse-")
        .tempdir()
        .map_err(io("create the run directory"))?;
    let run_dir = dir.path().to_path_buf();
    rig.dir = Some(dir);

    // One superuser password per cluster, one per application role (the same on
    // both clusters, like a secret copied to the new cluster).
    let (su_old, su_new) = (password(), password());
    let roles: Vec<(String, String)> = platform::stateful()
        .map(|a| (a.role(), password()))
        .collect();
    let mut listing = format!("old postgres {su_old}\nnew postgres {su_new}\n");
    for (role, pw) in &roles {
        let _ = writeln!(listing, "old+new {role} {pw}");
    }
    // Writers past the proxy: a role per worker and job, the same on both clusters.
    let writer_roles = workers::roles(password);
    listing.push_str(&workers::listing(&writer_roles));
    // The caches' passwords (the `default` user of each Redis).
    let (pw_old, pw_new) = (password(), password());
    let _ = writeln!(listing, "old redis {pw_old}\nnew redis {pw_new}");
    write_private(&run_dir.join("passwords"), &listing)?;
    rig.secrets = [su_old.clone(), su_new.clone()]
        .into_iter()
        .chain(roles.iter().map(|(_, p)| p.clone()))
        .collect();
    rig.secrets
        .extend(writer_roles.iter().map(|r| r.password().to_string()));

    // The databases.
    let t = Instant::now();
    progress.line("starting PostgreSQL clusters old and new");
    let (mut old, mut new) =
        tokio::task::spawn_blocking(move || Cluster::start_pair(&su_old, &su_new))
            .await
            .map_err(|e| RehearseError::Step(format!("starting the clusters: {e}")))??;
    if args.keep {
        old.keep();
        new.keep();
    }
    progress.done(
        t,
        &format!(
            "clusters up: old on port {}, new on port {} ({}; pg_dump, pg_restore and psql from {clients})",
            old.port(),
            new.port(),
            server_bin.display()
        ),
    );
    let (old, new) = &*rig.clusters.insert((old, new));

    // TLS where users have TLS: the run's CA; the new cluster takes TLS only.
    let t = Instant::now();
    let certs = tls::Certs::issue().map_err(RehearseError::Step)?;
    new.require_tls(&certs.database.cert, &certs.database.key, &certs.ca)
        .await?;
    let ca_file = run_dir.join("ca.pem");
    write_file(&ca_file, &certs.ca)?;
    let other_ca_refused = stranger_refused(new, &run_dir, &certs.other_ca).await?;
    progress.done(
        t,
        &format!(
            "TLS: the run's CA signed the new side's certificates; PostgreSQL new takes \
             TLS only (a plain connection and one trusting another CA were refused: {})",
            other_ca_refused
        ),
    );
    let mut tls_report = tls::TlsReport {
        site_name: tls::SITE_NAME.into(),
        plain_refused: true,
        other_ca_refused,
        ..Default::default()
    };

    let t = Instant::now();
    platform::create_databases(old, new, &roles).await?;
    progress.done(
        t,
        "databases: 5 on old with schema and seed rows, 5 empty on new, a role per app on both",
    );

    // Writers past the proxy, from now until the plan ends (aborted if dropped).
    let t = Instant::now();
    for cluster in [old, new] {
        platform::create_writer_roles(cluster, &writer_roles).await?;
    }
    platform::grant_writers(old, &writer_roles).await?;
    let writers = workers::start(old, new, &writer_roles);
    progress.done(
        t,
        &format!(
            "writers past the proxy: {} roles on both clusters, each writing straight to the \
             old and to the new database",
            writer_roles.len()
        ),
    );

    // The weather app's cache: a Redis per side, the old one seeded.
    let t = Instant::now();
    rig.secrets.extend([pw_old.clone(), pw_new.clone()]);
    let redis_old = redis::start("old", &run_dir, &pw_old).await?;
    let redis_new = redis::start("new", &run_dir, &pw_new).await?;
    let (redis_old, redis_new) = &*rig.redis.insert((redis_old, redis_new));
    let seeded_keys = cache::seed(redis_old).await?;
    let caches = platform::Caches {
        old: redis_old.url_with_password(),
        new: redis_new.url_with_password(),
    };
    progress.done(
        t,
        &format!(
            "caches: Redis old on port {}, new on port {}; {seeded_keys} keys in the old one",
            redis_old.port, redis_new.port
        ),
    );

    // The sites and the proxy.
    let old_site = Site::start(
        "old",
        platform::site_apps(old, &roles, redis_old.url()),
        None,
    )
    .map_err(io("start the old side's apps"))?;
    let site_tls = tls::server_config(&certs.site).map_err(RehearseError::Step)?;
    let new_site = Site::start(
        "new",
        platform::site_apps(new, &roles, redis_new.url()),
        Some(site_tls),
    )
    .map_err(io("start the new side's apps"))?;
    let (old_addr, new_addr) = (old_site.addr, new_site.addr);
    let backends = platform::Backends {
        old: old_addr,
        new: new_addr,
        new_ca: Some(ca_file.clone()),
    };
    rig.sites = Some((old_site, new_site));
    let t = Instant::now();
    // Where the users connect, the admin APIs, and how the plan finds them.
    let (proxy_http, admins, plan_proxies) = if args.replicas == 1 {
        let proxy_config = run_dir.join("cutover-proxy.toml");
        write_file(&proxy_config, &platform::proxy_config(&backends))?;
        let proxy = procs::start_proxy(&bins.proxy, &proxy_config, &run_dir.join("proxy.log"))
            .await
            .map_err(RehearseError::Step)?;
        let (proxy_http, admin) = (proxy.http, proxy.admin);
        rig.proxy = Some(proxy);
        smoke_test(proxy_http).await?;
        progress.done(
            t,
            &format!(
                "apps up (old {old_addr}, new https://{new_addr}); cutover-proxy on {proxy_http} \
                 (admin {admin}), every route at 100% old answers"
            ),
        );
        (proxy_http, vec![admin], PlanProxies::Admin(admin))
    } else {
        let fleet = rig.fleet.insert(Fleet::new(
            args.replicas,
            &bins.proxy,
            &run_dir,
            backends.clone(),
            progress.start,
        )?);
        fleet.start(args.replicas).await?;
        for r in &fleet.replicas {
            if let Some(http) = r.http {
                smoke_test(http).await?;
            }
        }
        let front = fleet.balancer.addr;
        smoke_test(front).await?;
        let admins = fleet.admins();
        let listed: Vec<String> = admins.iter().map(|a| a.ip().to_string()).collect();
        progress.done(
            t,
            &format!(
                "apps up (old {old_addr}, new https://{new_addr}); {} cutover-proxy replicas ready \
                 (admin {} port {}, found by {}:{} at DNS {}) behind the balancer on {front}; \
                 every route at 100% old answers on each",
                args.replicas,
                listed.join(", "),
                fleet.port,
                fleet::SERVICE,
                fleet.port,
                fleet.dns.addr,
            ),
        );
        (front, admins, fleet.plan_proxies())
    };

    // WebSocket clients of the social app, from before the users until the plan ends.
    let social = PLATFORM
        .iter()
        .find(|a| a.name == "social")
        .ok_or_else(|| RehearseError::Step("the platform has no social app".into()))?;
    let clients = if args.quick {
        sockets::CLIENTS / 4
    } else {
        sockets::CLIENTS
    };
    let t = Instant::now();
    let websockets_from = progress.start_unix + progress.at();
    let mut websockets = sockets::Sockets::start(proxy_http, social, clients);
    // Connected before the users start, as the chat tabs of a platform in service
    // are when its migration begins; a client still connecting is reported.
    let all_in = websockets.wait_connected(Duration::from_secs(15)).await;
    progress.done(
        t,
        &format!(
            "WebSocket clients: {}{clients} connected to the social app, a message a second \
             each, reconnecting when closed",
            if all_in {
                String::new()
            } else {
                format!("{} of ", websockets.connected())
            }
        ),
    );

    // The users.
    let scenario = run_dir.join("scenario.toml");
    write_file(&scenario, &platform::scenario())?;
    let (ledger, load_json) = (run_dir.join("ledger.jsonl"), run_dir.join("load.json"));
    let timeline = run_dir.join("timeline.jsonl");
    let files = LoadFiles {
        scenario: &scenario,
        ledger: &ledger,
        json: &load_json,
        log: &run_dir.join("load.log"),
        timeline: &timeline,
    };
    // A generous bound: the load is stopped when the plan ends, long before.
    let bound = timing.bake * 3 + Duration::from_secs(300);
    let users_from = progress.start_unix + progress.at();
    let load = rig.load.insert(users::start(
        &bins.load, args.rate, bound, proxy_http, &files,
    )?);
    users::wait_for_traffic(&admins, load, args.rate).await?;
    users::wait_for_first_second(&timeline, load).await?;
    let users_to = progress.start_unix + progress.at();
    progress.line(&format!(
        "cutover-load: {} req/s open loop over the six hosts, 30% writes on the database apps, with a ledger",
        args.rate
    ));

    // What the machine does meanwhile: CPU per component and commit rates, to say
    // what ran out if the users' view fails.
    let sampler = machine::Sampler::start([("old", &old.data_dir()), ("new", &new.data_dir())]);
    let commits_before = [machine::commits(old).await, machine::commits(new).await];
    let sampled = Instant::now();

    // Hostile clients beside the users, from now until the plan ends.
    let (idle, slow) = if args.quick {
        (hostile::IDLE / 4, hostile::SLOW / 4)
    } else {
        (hostile::IDLE, hostile::SLOW)
    };
    let hostile = hostile::Hostile::start(
        proxy_http,
        &PLATFORM[0].host(),
        idle,
        slow,
        hostile::ARRIVAL,
    );
    let hostile_from = progress.start_unix + progress.at();
    progress.line(&format!(
        "hostile clients: {idle} idle and {slow} slowloris connections held against the proxy \
         throughout, arriving over the first {}s, each reopened when closed",
        hostile::ARRIVAL.as_secs()
    ));

    // The migration.
    let plan_path = run_dir.join("plan.toml");
    let plan_text = platform::plan(
        &plan_proxies,
        |db| old.dsn(db),
        |db| new.dsn(db),
        &caches,
        timing,
    );
    write_private(&plan_path, &plan_text)?;
    let plan = cutover_controller::plan::model::Plan::load(&plan_path)?;
    let mut opts = cutover_controller::plan::runner::RunOptions::for_plan(&plan_path);
    opts.out = args.out.clone();
    opts.progress = true;
    // The forecast job writes to the old cache past the proxy while the plan runs.
    let forecast_job = cache::Job::start(redis_old.url(), admins.clone(), PLATFORM[0].name);
    let t = Instant::now();
    progress
        .line("running the plan: preflight, sync, 10% -> 50% -> 100% new, switchovers, finalize");
    let ran = {
        let run = cutover_controller::plan::runner::run(&plan, &opts);
        match rig.fleet.as_mut() {
            // The fleet's restart and addition happen while the plan runs; the
            // exercise never ends on its own.
            Some(fleet) => {
                let exercise = fleet::exercise(fleet, progress);
                tokio::pin!(run, exercise);
                tokio::select! {
                    ran = &mut run => ran,
                    () = &mut exercise => run.await,
                }
            }
            None => run.await,
        }
    };
    let plan_s = t.elapsed().as_secs_f64();
    progress.done(t, "plan finished");
    // The users' view covers the plan's last moments too.
    let plan_end = progress.start_unix + progress.at();
    if let Err(e) = users::wait_for_second_past(&timeline, load, plan_end).await {
        progress.line(&e.to_string());
    }

    // Who is on the new database, and how, before anyone stops.
    match tls::sessions(new).await {
        Ok((with, without)) => {
            tls_report.database_sessions_tls = with;
            tls_report.database_sessions_plain = without;
        }
        Err(e) => progress.line(&format!("TLS: counting the new database's sessions: {e}")),
    }
    let tls_to = progress.start_unix + progress.at();

    // The writers past the proxy stop with the plan.
    let mut writer_tallies = writers.stop().await;
    let (websockets_report, websocket_tally) = websockets.stop().await;
    let websockets_to = progress.start_unix + progress.at();
    writer_tallies.push(websocket_tally);
    let job_tally = forecast_job.stop();

    // Stop the users first: every acknowledged write is in the ledger then.
    let t = Instant::now();
    let load_report = users::stop(load, &load_json).await?;
    progress.done(
        t,
        &format!(
            "cutover-load stopped: {} requests, {} failed",
            load_report.requests,
            users::failed(&load_report)
        ),
    );
    let mut record = ran?;

    let t = Instant::now();
    let entries = cutover_load::read_ledger(&ledger)?;
    let check = writes::check(old, new, &record.switched, &entries).await?;
    let databases = platform::stateful().count();
    let sides = match record.switched.len() {
        n if n == databases => "on new".to_string(),
        0 => "on old: no switchover was done".to_string(),
        n => format!("{n} of {databases} apps on new, the rest on old"),
    };
    progress.done(
        t,
        &format!(
            "ledger checked ({sides}): {} acknowledged writes, {} found, {} missing",
            check.acknowledged, check.found, check.missing
        ),
    );
    record.ledger = Some(check);

    // The writers past the proxy: their acknowledged writes, checked the same way.
    let t = Instant::now();
    let past = workers::check(old, new, &record.switched, &writer_tallies).await?;
    progress.done(
        t,
        &format!(
            "writers past the proxy checked: {} acknowledged writes, {} found, {} missing",
            past.acknowledged(),
            past.found(),
            past.missing()
        ),
    );
    record.past_proxy = past.by_kind.clone();

    let cache_report = {
        let sites = rig.sites.as_ref().map_or_else(Default::default, |(o, n)| {
            (o.cache_counts(), n.cache_counts())
        });
        cache::CacheReport::new(
            seeded_keys,
            job_tally,
            sites,
            record.caches.get(PLATFORM[0].name),
            record.started_at,
            record.outcome == Outcome::Succeeded,
        )
    };

    users::add_users_view(&mut record, &load_report);
    let cpu = sampler.stop().await;
    let hostile_to = progress.start_unix + progress.at();
    let hostile_report = hostile.stop().await;
    let commits_after = [machine::commits(old).await, machine::commits(new).await];
    let secs = sampled.elapsed().as_secs_f64().max(1e-3);
    let commit_rates: Vec<(&str, f64)> = ["old", "new"]
        .into_iter()
        .zip(commits_before.iter().zip(&commits_after))
        .filter_map(|(name, (b, a))| Some((name, (a.as_ref()? - b.as_ref()?) as f64 / secs)))
        .collect();
    let seconds = cutover_load::timeline::read(&timeline).unwrap_or_default();
    let mut users_view = view::UsersVerdict::of(&load_report, &seconds);
    if !users_view.passed() {
        let max_behind = seconds.iter().map(|s| s.behind).max().unwrap_or(0);
        users_view.saturated = Some(machine::diagnose(&cpu, &commit_rates, max_behind));
    }
    let fleet_report = match &rig.fleet {
        Some(fleet) => Some(fleet.report(args.replicas).await),
        None => None,
    };
    let mut moments = view::plan_moments(&record);
    moments.push(view::Moment {
        part: "users".into(),
        what: "cutover-load starting, after the WebSocket clients connected and before the plan: \
               its connections opening"
            .into(),
        from: users_from,
        to: users_to,
    });
    moments.push(view::Moment {
        part: "hostile".into(),
        what: format!(
            "{idle} idle + {slow} slowloris connections held ({} opened, {} closed by the proxy)",
            hostile_report.opened, hostile_report.closed_by_proxy
        ),
        from: hostile_from,
        to: hostile_to,
    });
    if let Some(f) = &fleet_report {
        moments.extend(fleet::moments(f, progress.start_unix));
    }
    moments.push(view::Moment {
        part: "websockets".into(),
        what: format!(
            "{} WebSocket clients ({} connections opened, {} closed by the server, {} cut)",
            websockets_report.clients,
            websockets_report.opened,
            websockets_report.closed_by_server.values().sum::<u64>(),
            websockets_report.cut
        ),
        from: websockets_from,
        to: websockets_to,
    });
    if let Some(ready) = cache_report.copy.as_ref().and_then(|c| c.ready_at_s) {
        moments.push(view::Moment {
            part: "cache".into(),
            what: format!(
                "weather's Redis copied and followed until converged ({} keys copied)",
                cache_report.copy.as_ref().map_or(0, |c| c.keys_copied)
            ),
            from: record.started_at,
            to: record.started_at + ready,
        });
    }
    if let Some(counts) = rig.sites.as_ref().and_then(|(_, n)| n.tls_counts()) {
        tls_report.site_handshakes = counts;
    }
    moments.push(view::Moment {
        part: "tls".into(),
        what: format!(
            "new side over HTTPS ({} h2 + {} http/1.1 handshakes, {} resumed), its database \
             TLS-only ({} sessions over TLS at the end)",
            tls_report.site_handshakes.h2,
            tls_report.site_handshakes.http1,
            tls_report.site_handshakes.resumed,
            tls_report.database_sessions_tls
        ),
        from: websockets_from,
        to: tls_to,
    });
    let seen = view::seen(&moments, &seconds, &cpu.stolen_by_second());

    let (md_path, json_path) = cutover_controller::plan::report::write(&record, &args.out)?;
    let mut markdown = cutover_controller::plan::report::markdown(&record);
    markdown.push_str(&users::section(&load_report, &entries, plan_s));
    markdown.push_str(&view::section(&users_view, &seen, progress.start_unix));
    markdown.push_str(&hostile::section(&hostile_report));
    markdown.push_str(&workers::section(&past, &record));
    markdown.push_str(&cache::section(&cache_report));
    markdown.push_str(&sockets::section(&websockets_report));
    markdown.push_str(&tls::section(&tls_report));
    if let Some(f) = &fleet_report {
        markdown.push_str(&fleet::section(f));
    }
    let clean = rig.redact(&markdown);
    let leaked = clean != markdown;
    write_file(&md_path, &clean)?;
    let mut json =
        std::fs::read_to_string(&json_path).map_err(io(format!("read {}", json_path.display())))?;
    let mut parts = serde_json::Map::new();
    parts.insert("users".into(), to_json(&users_view)?);
    parts.insert("parts".into(), to_json(&seen)?);
    parts.insert("cpu".into(), to_json(&cpu.uses())?);
    parts.insert("machine".into(), to_json(&cpu.machine_use())?);
    parts.insert("hostile".into(), to_json(&hostile_report)?);
    parts.insert("cache".into(), to_json(&cache_report)?);
    parts.insert("websockets".into(), to_json(&websockets_report)?);
    parts.insert("tls".into(), to_json(&tls_report)?);
    if let Some(f) = &fleet_report {
        parts.insert("fleet".into(), to_json(f)?);
    }
    json = with_rehearsal(&json, parts)?;
    let clean_json = rig.redact(&json);
    let leaked = leaked || clean_json != json;
    write_file(&json_path, &clean_json)?;
    for (from, name) in [
        (&load_json, "load.json"),
        (&ledger, "ledger.jsonl"),
        (&timeline, "timeline.jsonl"),
    ] {
        std::fs::copy(from, args.out.join(name)).map_err(io(format!(
            "copy {} to {}",
            from.display(),
            args.out.display()
        )))?;
    }

    println!("{clean}");
    let v = cutover_controller::plan::report::verdict(&record);
    let fleet_problems = fleet_report.as_ref().map_or(&[][..], |f| &f.problems[..]);
    let ok = record.outcome == Outcome::Succeeded
        && v.failed_requests == 0
        && v.lost_writes == 0
        && fleet_problems.is_empty()
        && users_view.passed()
        && cache_report.passed()
        && websockets_report.problems().is_empty()
        && tls_report.problems().is_empty()
        && !leaked;
    progress.line(&format!(
        "{}: outcome {}, {} failed requests, {} lost writes, {:.0}s of downtime; report: {} and {}",
        if ok { "PASSED" } else { "FAILED" },
        record.outcome.label(),
        v.failed_requests,
        v.lost_writes,
        v.downtime_s,
        md_path.display(),
        json_path.display()
    ));
    for p in fleet_problems {
        progress.line(&format!("fleet: {p}"));
    }
    for p in websockets_report.problems() {
        progress.line(&format!("websockets: {p}"));
    }
    for p in tls_report.problems() {
        progress.line(&format!("tls: {p}"));
    }
    for p in &cache_report.problems {
        progress.line(&format!("cache: {p}"));
    }
    for p in &users_view.problems {
        progress.line(&format!("users: {p}"));
    }
    if let Some(what) = &users_view.saturated {
        progress.line(&format!("what ran out: {what}"));
    }
    if leaked {
        progress
            .line("a password appeared in the report and was replaced by ********; that is a bug");
    }
    Ok(if ok { 0 } else { 1 })
}

/// A client of `cluster` that trusts `other_ca` (written into `dir`) instead of
/// the run's CA must be refused: the reason, or an error when it was not.
async fn stranger_refused(
    cluster: &Cluster,
    dir: &Path,
    other_ca: &str,
) -> Result<String, RehearseError> {
    let path = dir.join("other-ca.pem");
    write_file(&path, other_ca)?;
    let raw = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname=postgres \
         sslmode=verify-full sslrootcert={} connect_timeout=5",
        cluster.port(),
        cluster.password(),
        path.display()
    );
    let dsn = cutover_controller::Dsn::parse(cutover_controller::Side::Target, &raw)?;
    let connector = cutover_controller::Connector::new(&dsn)?;
    match connector.client().await {
        Ok(_) => Err(RehearseError::Step(format!(
            "PostgreSQL {} was trusted by a client that trusts another CA: TLS is not verified",
            cluster.name()
        ))),
        Err(e) => {
            Ok(std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string))
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, RehearseError> {
    serde_json::to_value(value).map_err(|e| RehearseError::Step(format!("report.json: {e}")))
}

/// The plan runner's report.json with rehearse's own parts added under
/// `"rehearsal"`: the users' verdict, what they saw part by part, CPU per
/// component, and with a fleet its events and the balancer's figures.
fn with_rehearsal(
    json: &str,
    parts: serde_json::Map<String, serde_json::Value>,
) -> Result<String, RehearseError> {
    let bad = |e: serde_json::Error| RehearseError::Step(format!("report.json: {e}"));
    let mut value: serde_json::Value = serde_json::from_str(json).map_err(bad)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("rehearsal".into(), serde_json::Value::Object(parts));
    }
    let mut text = serde_json::to_string_pretty(&value).map_err(bad)?;
    text.push('\n');
    Ok(text)
}
