//! Runs one parsed command: connects, calls the library, prints, picks the exit
//! code (0 done, 1 blockers / mismatches / failure; clap uses 2 for bad usage).

use std::time::Duration;

use serde::Serialize;

use super::term::Term;
use super::{CheckArgs, Command, DbArgs, DbCommand, StatusArgs, SwitchArgs, SyncArgs};
use crate::check::{CheckOptions, check};
use crate::cleanup::cleanup;
use crate::db::Db;
use crate::dsn::{Dsn, Side};
use crate::error::Error;
use crate::lock;
use crate::proxy::Proxies;
use crate::status::status;
use crate::switchover::{SwitchoverOptions, rollback, switchover};
use crate::sync::{SyncOptions, sync};
use crate::verify::verify;

/// Runs the command and returns the process exit code.
pub async fn run(command: Command) -> u8 {
    crate::db::set_command(label(&command));
    let cmd = match command {
        Command::Db(cmd) => cmd,
        Command::Secrets(cmd) => return crate::secrets::cli::run(cmd).await,
        Command::Cache(cmd) => return crate::cache::cli::run(cmd).await,
        Command::Run(a) => return super::plan::run(a).await,
        Command::Status(a) => return super::plan::status(a),
        Command::Abort(a) => return super::plan::abort(a).await,
    };
    let json = match &cmd {
        DbCommand::Check(a) => a.db.json,
        DbCommand::Sync(a) => a.db.json,
        DbCommand::Status(a) => a.db.json,
        DbCommand::Switchover(a) | DbCommand::Rollback(a) => a.db.json,
        DbCommand::Verify(a) | DbCommand::Cleanup(a) => a.json,
    };
    match execute(cmd).await {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "side": e.side() })
                );
            }
            eprintln!("cutover: {e}");
            1
        }
    }
}

/// The command as typed, for the `application_name` of the sessions it opens.
fn label(cmd: &Command) -> &'static str {
    match cmd {
        Command::Db(c) => match c {
            DbCommand::Check(_) => "db check",
            DbCommand::Sync(_) => "db sync",
            DbCommand::Status(_) => "db status",
            DbCommand::Switchover(_) => "db switchover",
            DbCommand::Verify(_) => "db verify",
            DbCommand::Cleanup(_) => "db cleanup",
            DbCommand::Rollback(_) => "db rollback",
        },
        Command::Secrets(_) => "secrets",
        Command::Cache(_) => "cache",
        Command::Run(_) => "run",
        Command::Status(_) => "status",
        Command::Abort(_) => "abort",
    }
}

async fn execute(cmd: DbCommand) -> Result<u8, Error> {
    match cmd {
        DbCommand::Check(a) => run_check(a).await,
        DbCommand::Sync(a) => run_sync(a).await,
        DbCommand::Status(a) => run_status(a).await,
        DbCommand::Switchover(a) => run_switch(a, false).await,
        DbCommand::Rollback(a) => run_switch(a, true).await,
        DbCommand::Verify(a) => {
            let (src, tgt) = connect(&a).await?;
            let report = verify(&src, &tgt).await?;
            print(&a, &report, &report);
            Ok(if report.passed { 0 } else { 1 })
        }
        DbCommand::Cleanup(a) => {
            let (src, tgt) = connect(&a).await?;
            let report = cleanup(&src, &tgt, &a.name).await?;
            print(&a, &report, &report);
            Ok(0)
        }
    }
}

async fn connect(a: &DbArgs) -> Result<(Db, Db), Error> {
    let source = Dsn::parse(Side::Source, &a.source)?;
    let target = Dsn::parse(Side::Target, &a.target)?;
    Db::connect_pair(&source, &target).await
}

fn print<T: Serialize + std::fmt::Display>(a: &DbArgs, json: &T, human: &T) {
    if a.json {
        match serde_json::to_string_pretty(json) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cutover: cannot encode the result as JSON: {e}"),
        }
    } else {
        println!("{human}");
    }
}

async fn run_check(a: CheckArgs) -> Result<u8, Error> {
    let (src, tgt) = connect(&a.db).await?;
    let opts = CheckOptions {
        fix_replica_identity: a.fix_replica_identity,
        fix_extensions: a.fix_extensions,
        allow_large_objects: a.allow_large_objects,
    };
    let report = check(&src, &tgt, &a.db.name, opts).await?;
    print(&a.db, &report, &report);
    Ok(if report.passed() { 0 } else { 1 })
}

async fn run_sync(a: SyncArgs) -> Result<u8, Error> {
    let (src, tgt) = connect(&a.db).await?;
    // Before anything changes, source first; held until the process exits, which
    // releases it with the sessions.
    lock::acquire(&src).await?;
    lock::acquire(&tgt).await?;
    let opts = SyncOptions {
        wait: !a.no_wait,
        timeout: a.timeout,
        source_for_target: a
            .source_for_target
            .as_deref()
            .map(|s| Dsn::parse(Side::Source, s))
            .transpose()?,
        jobs: usize::from(a.jobs),
        maintenance_work_mem: Some(a.maintenance_work_mem.clone()),
        copy: a.copy,
        part_bytes: a.part_size,
    };
    let term = Term::new();
    let report = sync(&src, &tgt, &a.db.name, &opts, &term).await?;
    print(&a.db, &report, &report);
    Ok(0)
}

async fn run_status(a: StatusArgs) -> Result<u8, Error> {
    let (src, tgt) = connect(&a.db).await?;
    if !a.watch {
        let s = status(&src, &tgt, &a.db.name, a.lag_within).await?;
        print(&a.db, &s, &s);
        return Ok(0);
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            _ = tick.tick() => {}
        }
        let s = status(&src, &tgt, &a.db.name, a.lag_within).await?;
        if a.db.json {
            match serde_json::to_string(&s) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("cutover: cannot encode the status as JSON: {e}"),
            }
        } else if tty {
            // Redraw in place: clear the screen, cursor home.
            println!("\x1b[2J\x1b[H{s}");
        } else {
            println!("{s}\n--");
        }
    }
}

async fn run_switch(a: SwitchArgs, back: bool) -> Result<u8, Error> {
    let token = match &a.proxy_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::TokenFile {
                    path: path.display().to_string(),
                    source: e,
                })?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CUTOVER_ADMIN_TOKEN").ok(),
    };
    let proxies = Proxies::new(&a.proxies, token)?;
    let (src, tgt) = connect(&a.db).await?;
    let parse = |side, s: &Option<String>| s.as_deref().map(|s| Dsn::parse(side, s)).transpose();
    let opts = SwitchoverOptions {
        routes: a.routes.clone(),
        old_backend: a.old_backend.clone(),
        new_backend: a.new_backend.clone(),
        max_lag: a.max_lag,
        max_pause: a.max_pause,
        reverse: a.reverse,
        target_for_source: parse(Side::Target, &a.target_for_source)?,
        source_for_target: parse(Side::Source, &a.source_for_target)?,
        verify: !a.no_verify,
    };
    let term = Term::new();
    let report = if back {
        rollback(&src, &tgt, &proxies, &a.db.name, &opts, &term).await?
    } else {
        switchover(&src, &tgt, &proxies, &a.db.name, &opts, &term).await?
    };
    print(&a.db, &report, &report);
    // Writes have moved either way; a difference at the fence is a lost write
    // and must not pass for success.
    Ok(match &report.verify {
        Some(v) if !v.passed => 1,
        _ => 0,
    })
}
