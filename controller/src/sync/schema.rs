//! The schema copy, in two parts so that a large table's rows are copied into a
//! table with nothing to maintain but its primary key:
//!
//! 1. before the initial copy ([`copy_tables`]): the source's `pg_dump
//!    --schema-only` archive restored up to its tables (types, functions,
//!    sequences, tables, check constraints), plus each table's primary key or
//!    replica identity index, which the subscription's apply needs to find the
//!    rows an UPDATE or DELETE names; one transaction. The controller's own copy
//!    (`--copy controller`, [`super::copy`]) applies nothing until its rows are in,
//!    so it leaves the keys to part 2 as well;
//! 2. after it ([`PostData`]): every other index, constraint, trigger,
//!    rule, policy and statistics object, built by `pg_restore -j N` in parallel.
//!    What the target already has is left out, so this part can run again after
//!    an interruption.
//!
//! Tables added to the source after the first sync get their whole schema at once
//! ([`copy`]): they are new, so small. Passwords travel in `PGPASSWORD`, never on a
//! command line.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::catalog::Name;
use crate::db::Db;
use crate::dsn::{Dsn, Side};
use crate::error::Error;
use crate::switchover::block;

/// The directory [`use_programs_from`] chose for this process.
static PROGRAMS: OnceLock<PathBuf> = OnceLock::new();

/// Makes this process run `pg_dump`, `pg_restore` and `psql` from `dir`, ahead of
/// `$CUTOVER_PG_BIN` and `PATH`: for a caller that knows which PostgreSQL it
/// talks to (the rehearsal starts its clusters from `dir`). Once per process;
/// false, and nothing changed, if it was already chosen.
pub fn use_programs_from(dir: PathBuf) -> bool {
    PROGRAMS.set(dir).is_ok()
}

/// Where `pg_dump`, `pg_restore` and `psql` are: the directory
/// [`use_programs_from`] chose, else `$CUTOVER_PG_BIN` if set, else `$PATH`.
pub(super) fn program(name: &str) -> PathBuf {
    if let Some(dir) = PROGRAMS.get() {
        return dir.join(name);
    }
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

pub(super) fn tool_error(dsn: &Dsn, program: &'static str, detail: String) -> Error {
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
    apply_blocked(dump, source, "pg_dump", target, None)
}

/// Applies the SQL that `producer` (`pg_dump`, or `pg_restore` writing a script)
/// prints to the target in one transaction (`psql --single-transaction`), and in
/// that same transaction puts the write block on every table it created
/// ([`block::block_unblocked_sql`]). The tables, with their grants and owners,
/// become visible to other sessions only with the block in place: a worker of the
/// new cluster that is already connected can never commit a row into a table
/// that is about to be a replica (such a row would also take an id that the
/// initial copy then finds taken). Blocking: run it off the async runtime.
fn apply_blocked(
    mut producer: Command,
    producer_dsn: &Dsn,
    producer_name: &'static str,
    target: &Dsn,
    pgoptions: Option<String>,
) -> Result<(), Error> {
    let mut produce = producer
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(producer_dsn, producer_name, format!("cannot start it: {e}")))?;
    let Some(mut produced) = produce.stdout.take() else {
        // Unreachable: stdout was configured as a pipe just above.
        return Err(tool_error(
            producer_dsn,
            producer_name,
            "no output pipe".into(),
        ));
    };
    let mut psql = command("psql", target);
    if let Some(o) = pgoptions {
        psql.env("PGOPTIONS", o);
    }
    let mut restore = psql
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(target, "psql", format!("cannot start it: {e}")))?;
    let Some(mut into) = restore.stdin.take() else {
        return Err(tool_error(target, "psql", "no input pipe".into()));
    };
    // The script, then the block, then end of input (psql commits).
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        std::io::copy(&mut produced, &mut into)?;
        std::io::Write::write_all(&mut into, b"\n")?;
        std::io::Write::write_all(&mut into, block::block_unblocked_sql().as_bytes())
    });
    let restored = restore
        .wait_with_output()
        .map_err(|e| tool_error(target, "psql", e.to_string()))?;
    let produced = produce
        .wait_with_output()
        .map_err(|e| tool_error(producer_dsn, producer_name, e.to_string()))?;
    // A feeder error is psql gone early (its own error says why) or the
    // producer's output failing (its status says why).
    let fed = feeder.join();
    if !produced.status.success() {
        return Err(tool_error(
            producer_dsn,
            producer_name,
            last_lines(&produced.stderr, produced.status),
        ));
    }
    if !restored.status.success() {
        return Err(tool_error(
            target,
            "psql (restoring the schema)",
            last_lines(&restored.stderr, restored.status),
        ));
    }
    match fed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(tool_error(
            target,
            "psql",
            format!("feeding the schema: {e}"),
        )),
        Err(_) => Err(tool_error(
            target,
            "psql",
            "the schema feeder panicked".into(),
        )),
    }
}

/// Runs `cmd` (`program`, acting on `dsn`'s side) to its end; its output, or an
/// error naming the program with the last lines it printed.
fn run(cmd: &mut Command, dsn: &Dsn, program: &'static str) -> Result<Vec<u8>, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool_error(dsn, program, format!("cannot start it: {e}")))?;
    if !out.status.success() {
        return Err(tool_error(
            dsn,
            program,
            last_lines(&out.stderr, out.status),
        ));
    }
    Ok(out.stdout)
}

pub(super) fn last_lines(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        format!("exited with {status}")
    } else {
        tail
    }
}

/// The source's schema as a `pg_dump` custom-format archive in a temp dir
/// (removed on drop).
pub struct Archive {
    dir: tempfile::TempDir,
}

impl Archive {
    fn path(&self) -> PathBuf {
        self.dir.path().join("schema.dump")
    }

    /// Dumps the source's schema. Blocking.
    pub fn dump(source: &Dsn) -> Result<Archive, Error> {
        let dir = tempfile::tempdir()
            .map_err(|e| tool_error(source, "pg_dump", format!("cannot make a temp dir: {e}")))?;
        let archive = Archive { dir };
        run(
            command("pg_dump", source)
                .args([
                    "--schema-only",
                    "--format=custom",
                    "--no-publications",
                    "--no-subscriptions",
                    "--exclude-schema=_cutover",
                    "--file",
                ])
                .arg(archive.path()),
            source,
            "pg_dump",
        )?;
        Ok(archive)
    }

    /// The archive's table of contents (`pg_restore -l`), limited to `section`.
    fn toc(&self, target: &Dsn, section: Option<&str>) -> Result<Vec<TocEntry>, Error> {
        let mut cmd = Command::new(program("pg_restore"));
        cmd.arg("--list");
        if let Some(s) = section {
            cmd.arg(format!("--section={s}"));
        }
        let out = run(cmd.arg(self.path()), target, "pg_restore --list")?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(TocEntry::parse)
            .collect())
    }

    /// Restores the entries of `list` (in archive order) into the target.
    fn restore(
        &self,
        target: &Dsn,
        list: &[&TocEntry],
        jobs: usize,
        maintenance_work_mem: Option<&str>,
    ) -> Result<(), Error> {
        if list.is_empty() {
            return Ok(());
        }
        let list_path = self.dir.path().join("restore.list");
        let text: String = list.iter().map(|e| format!("{}\n", e.line)).collect();
        std::fs::write(&list_path, text)
            .map_err(|e| tool_error(target, "pg_restore", format!("cannot write its list: {e}")))?;
        // Each session's sort memory for its index builds, as a session setting
        // (any role may set it); the server's default (64MB) sorts a large
        // table's index on disk.
        let pgoptions = maintenance_work_mem.map(|m| format!("-c maintenance_work_mem={m}"));
        if jobs <= 1 {
            // One transaction, which also blocks every table it creates: pg_restore
            // writes the script, psql applies it (see [`apply_blocked`]).
            let mut script = Command::new(program("pg_restore"));
            script
                .args(["--exit-on-error", "--file=-", "--use-list"])
                .arg(&list_path)
                .arg(self.path());
            return apply_blocked(script, target, "pg_restore", target, pgoptions);
        }
        let mut cmd = command("pg_restore", target);
        if let Some(o) = pgoptions {
            cmd.env("PGOPTIONS", o);
        }
        cmd.args(["--exit-on-error", "--use-list"]).arg(&list_path);
        cmd.arg(format!("--jobs={jobs}"));
        run(
            cmd.arg(self.path()),
            target,
            "pg_restore (restoring the schema)",
        )?;
        Ok(())
    }
}

/// One line of `pg_restore --list`: `ID; CATALOG OID DESC SCHEMA NAME OWNER`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TocEntry {
    line: String,
    id: u32,
    /// The system catalog the object lives in (e.g. 1259 `pg_class`), and its OID
    /// on the source; 0 for entries that are not catalog objects (comments).
    catalog: u32,
    oid: u32,
    desc: String,
}

impl TocEntry {
    fn parse(line: &str) -> Option<TocEntry> {
        let line = line.trim_end();
        if line.starts_with(';') || line.is_empty() {
            return None;
        }
        let (id, rest) = line.split_once(';')?;
        let mut words = rest.split_whitespace();
        let catalog = words.next()?.parse().ok()?;
        let oid = words.next()?.parse().ok()?;
        let rest: Vec<&str> = words.collect();
        // DESC is one or two words ("INDEX", "FK CONSTRAINT", "INDEX ATTACH").
        let desc = match rest.as_slice() {
            [a, b, ..]
                if matches!(
                    (*a, *b),
                    ("FK", "CONSTRAINT") | ("INDEX", "ATTACH") | ("DEFAULT", "ACL")
                ) =>
            {
                format!("{a} {b}")
            }
            [a, ..] => a.to_string(),
            [] => return None,
        };
        Some(TocEntry {
            line: line.to_string(),
            id: id.trim().parse().ok()?,
            catalog,
            oid,
            desc,
        })
    }
}

/// Grants: listed after the post-data entries, but about objects part 1 creates.
fn is_acl(e: &TocEntry) -> bool {
    matches!(e.desc.as_str(), "ACL" | "DEFAULT ACL")
}

/// System catalog OIDs of the post-data objects whose presence on the target is
/// checked by name.
const PG_CLASS: u32 = 1259;
const PG_CONSTRAINT: u32 = 2606;
const PG_REWRITE: u32 = 2618;
const PG_TRIGGER: u32 = 2620;
const PG_POLICY: u32 = 3256;
const PG_STATISTIC_EXT: u32 = 3381;

/// The source objects among `entries` (by catalog and OID) as (kind, schema,
/// table, name), in the order of `entries`; `None` for entries it cannot name.
async fn identify(src: &Db, entries: &[&TocEntry]) -> Result<Vec<Option<[String; 4]>>, Error> {
    let cats: Vec<i64> = entries.iter().map(|e| i64::from(e.catalog)).collect();
    let oids: Vec<i64> = entries.iter().map(|e| i64::from(e.oid)).collect();
    let rows = src
        .query(
            "name the schema's post-data objects",
            "SELECT k.i, CASE k.cat \
               WHEN 1259 THEN (SELECT ARRAY['index', n.nspname, t.relname, c.relname] FROM pg_class c \
                   JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = k.o::oid) \
               WHEN 2606 THEN (SELECT ARRAY[CASE co.contype WHEN 'f' THEN 'foreign key' \
                   ELSE 'constraint' END, n.nspname, c.relname, co.conname] \
                   FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE co.oid = k.o::oid) \
               WHEN 2618 THEN (SELECT ARRAY['rule', n.nspname, c.relname, r.rulename] \
                   FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.oid = k.o::oid) \
               WHEN 2620 THEN (SELECT ARRAY['trigger', n.nspname, c.relname, t.tgname] \
                   FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.oid = k.o::oid) \
               WHEN 3256 THEN (SELECT ARRAY['policy', n.nspname, c.relname, p.polname] \
                   FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.oid = k.o::oid) \
               WHEN 3381 THEN (SELECT ARRAY['statistics', n.nspname, '', s.stxname] \
                   FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace \
                   WHERE s.oid = k.o::oid) \
             END \
             FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS k(cat, o, i)",
            &[&cats, &oids],
        )
        .await?;
    let mut out = vec![None; entries.len()];
    for r in rows {
        let i: i64 = r.get(0);
        let names: Option<Vec<String>> = r.get(1);
        if let Some([kind, schema, table, name]) = names.as_deref() {
            out[(i - 1) as usize] =
                Some([kind.clone(), schema.clone(), table.clone(), name.clone()]);
        }
    }
    Ok(out)
}

/// Of `objects` (kind, schema, table, name), the indexes of those the target
/// lacks.
async fn absent(tgt: &Db, objects: &[[String; 4]]) -> Result<HashSet<usize>, Error> {
    let col = |k: usize| {
        objects
            .iter()
            .map(|o| o[k].clone())
            .collect::<Vec<String>>()
    };
    let (kinds, schemas, tables, names) = (col(0), col(1), col(2), col(3));
    let rows = tgt
        .query(
            "look for the schema's post-data objects",
            "SELECT k.i FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                 WITH ORDINALITY AS k(kind, nsp, rel, obj, i) \
             WHERE NOT CASE \
               WHEN k.kind = 'index' THEN to_regclass(format('%I.%I', k.nsp, k.obj)) IS NOT NULL \
               WHEN k.kind IN ('constraint', 'foreign key') THEN EXISTS (SELECT 1 FROM pg_constraint co \
                   WHERE co.conname = k.obj AND co.conrelid = to_regclass(format('%I.%I', k.nsp, k.rel))) \
               WHEN k.kind = 'rule' THEN EXISTS (SELECT 1 FROM pg_rewrite r \
                   WHERE r.rulename = k.obj AND r.ev_class = to_regclass(format('%I.%I', k.nsp, k.rel))) \
               WHEN k.kind = 'trigger' THEN EXISTS (SELECT 1 FROM pg_trigger t \
                   WHERE t.tgname = k.obj AND t.tgrelid = to_regclass(format('%I.%I', k.nsp, k.rel))) \
               WHEN k.kind = 'policy' THEN EXISTS (SELECT 1 FROM pg_policy p \
                   WHERE p.polname = k.obj AND p.polrelid = to_regclass(format('%I.%I', k.nsp, k.rel))) \
               WHEN k.kind = 'statistics' THEN EXISTS (SELECT 1 FROM pg_statistic_ext s \
                   JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE s.stxname = k.obj AND n.nspname = k.nsp) \
               ELSE false END",
            &[&kinds, &schemas, &tables, &names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i64>(0) - 1) as usize)
        .collect())
}

/// The OIDs (on the source) of every primary key constraint and replica identity
/// index: what the subscription's apply needs on the target before any change
/// arrives.
async fn identity_oids(src: &Db) -> Result<(HashSet<u32>, HashSet<u32>), Error> {
    let rows = src
        .query(
            "list primary keys and replica identity indexes",
            "SELECT i.indexrelid, i.indisprimary, \
                    (SELECT co.oid FROM pg_constraint co WHERE co.conindid = i.indexrelid \
                       AND co.conrelid = i.indrelid AND co.contype IN ('p', 'u') LIMIT 1) \
             FROM pg_index i WHERE i.indisprimary OR i.indisreplident",
            &[],
        )
        .await?;
    let (mut constraints, mut indexes) = (HashSet::new(), HashSet::new());
    for r in rows {
        let index: u32 = r.get(0);
        match r.get::<_, Option<u32>>(2) {
            Some(c) => constraints.insert(c),
            None => indexes.insert(index),
        };
    }
    Ok((constraints, indexes))
}

/// The post-data part of the schema the target lacks, as the entries to restore.
/// `other` entries (comments, index attachments) that cannot be checked by name
/// go with the rest when anything is missing.
fn missing_entries<'a>(
    entries: &'a [TocEntry],
    named: &[Option<[String; 4]>],
    absent: &HashSet<usize>,
    checked: &[usize],
) -> Vec<&'a TocEntry> {
    let checked_at: std::collections::HashMap<usize, usize> =
        checked.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let any_missing = !absent.is_empty();
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            // The target's own write block is never the source's to restore.
            if named[*i]
                .as_ref()
                .is_some_and(|n| n[0] == "trigger" && n[3] == block::TRIGGER)
            {
                return false;
            }
            match checked_at.get(i) {
                Some(k) => absent.contains(k),
                None => any_missing && e.catalog == 0 && !is_acl(e),
            }
        })
        .map(|(_, e)| e)
        .collect()
}

/// What part 2 would build, and the archive to build it from.
pub struct PostData {
    archive: Archive,
    entries: Vec<TocEntry>,
    /// What each entry is: (kind, schema, table, name).
    named: Vec<Option<[String; 4]>>,
    missing: Vec<usize>,
    /// "index public.orders_created_idx", …, for messages.
    pub names: Vec<String>,
}

impl PostData {
    /// Reads the source's post-data schema and finds what the target lacks.
    pub async fn find(src: &Db, tgt: &Db) -> Result<PostData, Error> {
        let s = src.dsn().clone();
        let archive = tokio::task::spawn_blocking(move || Archive::dump(&s))
            .await
            .map_err(|e| Error::Precondition(format!("the schema dump did not finish: {e}")))??;
        let t = tgt.dsn().clone();
        let (archive, entries) = tokio::task::spawn_blocking(move || {
            let entries = archive.toc(&t, Some("post-data"));
            (archive, entries)
        })
        .await
        .map_err(|e| Error::Precondition(format!("the schema listing did not finish: {e}")))?;
        let entries = entries?;
        let refs: Vec<&TocEntry> = entries.iter().collect();
        let named = identify(src, &refs).await?;
        let checked: Vec<usize> = (0..entries.len())
            .filter(|&i| {
                named[i].is_some()
                    && matches!(
                        entries[i].catalog,
                        PG_CLASS
                            | PG_CONSTRAINT
                            | PG_REWRITE
                            | PG_TRIGGER
                            | PG_POLICY
                            | PG_STATISTIC_EXT
                    )
            })
            .collect();
        let objects: Vec<[String; 4]> = checked.iter().filter_map(|&i| named[i].clone()).collect();
        let gone = absent(tgt, &objects).await?;
        let chosen = missing_entries(&entries, &named, &gone, &checked);
        let ids: HashSet<u32> = chosen.iter().map(|e| e.id).collect();
        let missing: Vec<usize> = (0..entries.len())
            .filter(|&i| ids.contains(&entries[i].id))
            .collect();
        let names = missing
            .iter()
            .filter_map(|&i| named[i].as_ref())
            .map(|[kind, schema, _, name]| format!("{kind} {schema}.{name}"))
            .collect();
        Ok(PostData {
            archive,
            entries,
            named,
            missing,
            names,
        })
    }

    /// Keeps only the indexes, constraints and triggers of tables in `ready`
    /// (schema, table): what can be built while other tables are still being
    /// copied. Foreign keys (which read a second table) and the rest wait for the
    /// final pass.
    pub fn restrict(&mut self, ready: &BTreeSet<Name>) {
        let named = &self.named;
        self.missing.retain(|&i| {
            named[i].as_ref().is_some_and(|[kind, schema, table, _]| {
                matches!(kind.as_str(), "index" | "constraint" | "trigger")
                    && ready.contains(&Name::new(schema, table))
            })
        });
        self.rename();
    }

    /// Keeps only the primary keys and replica identity indexes: what the
    /// subscription's apply needs before the first change arrives.
    pub async fn restrict_to_keys(&mut self, src: &Db) -> Result<(), Error> {
        let (constraints, indexes) = identity_oids(src).await?;
        let entries = &self.entries;
        self.missing.retain(|&i| {
            let e = &entries[i];
            (e.catalog == PG_CONSTRAINT && constraints.contains(&e.oid))
                || (e.catalog == PG_CLASS && indexes.contains(&e.oid))
        });
        self.rename();
        Ok(())
    }

    fn rename(&mut self) {
        let named = &self.named;
        self.names = self
            .missing
            .iter()
            .filter_map(|&i| named[i].as_ref())
            .map(|[kind, schema, _, name]| format!("{kind} {schema}.{name}"))
            .collect();
    }

    /// Whether the target has all of it.
    pub fn complete(&self) -> bool {
        self.names.is_empty()
    }

    /// Builds what is missing with `jobs` parallel sessions. Blocking.
    pub fn build(
        &self,
        target: &Dsn,
        jobs: usize,
        maintenance_work_mem: Option<&str>,
    ) -> Result<(), Error> {
        let list: Vec<&TocEntry> = self.missing.iter().map(|&i| &self.entries[i]).collect();
        self.archive
            .restore(target, &list, jobs, maintenance_work_mem)
    }
}

/// Part 1 on an empty target: everything up to the tables, plus (with `keys`)
/// every primary key and replica identity index, in one transaction. Without
/// `keys` the tables have nothing to maintain during the copy; the keys come with
/// the rest of part 2.
pub async fn copy_tables(src: &Db, tgt: &Db, keys: bool) -> Result<(), Error> {
    let (constraints, indexes) = identity_oids(src).await?;
    let s = src.dsn().clone();
    let t = tgt.dsn().clone();
    tokio::task::spawn_blocking(move || {
        let archive = Archive::dump(&s)?;
        let all = archive.toc(&t, None)?;
        let post: HashSet<u32> = archive
            .toc(&t, Some("post-data"))?
            .iter()
            .map(|e| e.id)
            .collect();
        let list: Vec<&TocEntry> = all
            .iter()
            .filter(|e| {
                !post.contains(&e.id)
                    || (keys && e.catalog == PG_CONSTRAINT && constraints.contains(&e.oid))
                    || (keys && e.catalog == PG_CLASS && indexes.contains(&e.oid))
                    || is_acl(e)
            })
            .collect();
        archive.restore(&t, &list, 1, None)
    })
    .await
    .map_err(|e| Error::Precondition(format!("the schema copy did not finish: {e}")))?
}
