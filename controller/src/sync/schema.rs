//! The schema copy: `pg_dump --schema-only` of the source piped into `psql` on the
//! target, in one transaction. Passwords travel in `PGPASSWORD`, never on a command
//! line.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::catalog::Name;
use crate::dsn::{Dsn, Side};
use crate::error::Error;

/// Where `pg_dump` and `psql` are: `$CUTOVER_PG_BIN` if set, else `$PATH`.
fn program(name: &str) -> PathBuf {
    match std::env::var_os("CUTOVER_PG_BIN") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(name),
    }
}

fn command(name: &str, dsn: &Dsn) -> Command {
    let (conninfo, password) = dsn.tool_conninfo();
    let mut cmd = Command::new(program(name));
    cmd.arg("--dbname").arg(conninfo);
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd
}

fn tool_error(dsn: &Dsn, program: &'static str, detail: String) -> Error {
    Error::Tool {
        side: dsn.side(),
        dsn: dsn.redacted(),
        program,
        detail,
    }
}

/// Copies the schema (without publications, subscriptions or the controller's own
/// schema), or only `tables` (with their indexes, constraints and owned sequences)
/// when given. Blocking: run it off the async runtime.
pub fn copy(source: &Dsn, target: &Dsn, tables: &[Name]) -> Result<(), Error> {
    debug_assert_eq!(source.side(), Side::Source);
    let mut dump = command("pg_dump", source);
    dump.args([
        "--schema-only",
        "--no-publications",
        "--no-subscriptions",
        "--exclude-schema=_cutover",
    ]);
    for t in tables {
        // pg_dump's patterns take double-quoted names literally.
        dump.arg(format!("--table={}", t.sql()));
    }
    let mut dump = dump
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(source, "pg_dump", format!("cannot start it: {e}")))?;
    let Some(dump_out) = dump.stdout.take() else {
        // Unreachable: stdout was configured as a pipe just above.
        return Err(tool_error(source, "pg_dump", "no output pipe".into()));
    };
    let restore = command("psql", target)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-f",
            "-",
        ])
        .stdin(Stdio::from(dump_out))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(target, "psql", format!("cannot start it: {e}")))?;
    let restored = restore
        .wait_with_output()
        .map_err(|e| tool_error(target, "psql", e.to_string()))?;
    let dumped = dump
        .wait_with_output()
        .map_err(|e| tool_error(source, "pg_dump", e.to_string()))?;
    if !dumped.status.success() {
        return Err(tool_error(
            source,
            "pg_dump",
            last_lines(&dumped.stderr, dumped.status),
        ));
    }
    if !restored.status.success() {
        return Err(tool_error(
            target,
            "psql (restoring the schema)",
            last_lines(&restored.stderr, restored.status),
        ));
    }
    Ok(())
}

fn last_lines(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        format!("exited with {status}")
    } else {
        tail
    }
}
