//! Which write block holds against which writer. "A block that a session can lift
//! is no block": each candidate mechanism is applied by SQL to a fresh database on
//! a real cluster, then every bypass writer kind tries once, and the matrix of what
//! PostgreSQL did is printed (`--nocapture`) and asserted cell by cell.
//!
//! The candidates, and how they are applied, live in `blocks/candidates.rs`.

use std::time::Duration;

use cutover_tests::{
    APP_SCHEMA, Conn, Postgres, Prepared, SUPERUSER_PASSWORD, WRITER_PASSWORD, WriteError,
    WriterKind, create_roles,
};

#[path = "blocks/candidates.rs"]
mod candidates;

use candidates::{Candidate, TRIGGER_SQL, create_trigger};

/// The table's owner in the test databases: a login role that is not a superuser,
/// as an application's migration role usually is.
const OWNER: &str = "cutover_owner";

/// The matrix's columns: the writer kinds (`open-transaction` begun and written
/// before the block, committed after), then a transaction prepared before the
/// block and committed after, a read by `app`, and a superuser connection (the
/// controller's own).
const COLUMNS: [&str; 11] = [
    "app-role",
    "read-write-session",
    "member-role",
    "column-grant",
    "security-definer",
    "superuser",
    "open-transaction",
    "pooled",
    "prepared-txn",
    "app reads",
    "controller connects",
];

/// What PostgreSQL 15 did, as measured. `wrote`: the server acknowledged the write;
/// otherwise the SQLSTATE the client got. `yes`: the read or connection worked.
///
/// - The role setting: any session lifts it (`SET default_transaction_read_only =
///   off`), a superuser is never subject to it, and today's role query sees
///   table-level privileges only, so a column grantee and a definer function's
///   caller are never made read-only. `COMMIT PREPARED` passes a read-only session.
/// - Revoke: the owner keeps its privileges, so its SECURITY DEFINER function still
///   writes, as does the superuser; privileges are checked per statement, so a
///   transaction that wrote before commits (REVOKE does not wait for it), and so
///   does a prepared one.
/// - ALLOW_CONNECTIONS false refuses everyone, reads and the controller included.
///   Through PgBouncer the query does not fail: it waits in the pooler's queue.
/// - Triggers hold against every kind, the superuser and the pooler included, but
///   cannot be installed while a prepared transaction holds a lock on the table
///   (55P03 under a short `lock_timeout`): the switchover must refuse prepared
///   transactions. A transaction open across the hold ends with its session (57P01).
const EXPECTED: [(Candidate, [&str; 11]); 5] = [
    (
        Candidate::RoleToday,
        [
            "25006", "wrote", "25006", "wrote", "wrote", "wrote", "57P01", "25006", "wrote", "yes",
            "yes",
        ],
    ),
    (
        Candidate::RoleEveryLogin,
        [
            "25006", "wrote", "25006", "25006", "25006", "wrote", "57P01", "25006", "wrote", "yes",
            "yes",
        ],
    ),
    (
        Candidate::Revoke,
        [
            "42501", "42501", "42501", "42501", "wrote", "wrote", "wrote", "42501", "wrote", "yes",
            "yes",
        ],
    ),
    (
        Candidate::NoConnections,
        [
            "55000", "55000", "55000", "55000", "55000", "55000", "57P01", "waits", "55000",
            "55000", "55000",
        ],
    ),
    (
        Candidate::Triggers,
        [
            "25006",
            "25006",
            "25006",
            "25006",
            "25006",
            "25006",
            "57P01",
            "25006",
            "block waits: 55P03",
            "yes",
            "yes",
        ],
    ),
];

/// Bounds one step: nothing here may hang the suite.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

/// How long one attempt may take before it counts as waiting. On loopback a write
/// answers in milliseconds; a pooler keeps a query whose server login fails queued
/// until its `query_wait_timeout` (two minutes by default).
const PATIENCE: Duration = Duration::from_secs(8);

/// One cell: `wrote`, the SQLSTATE, or `waits`; what went wrong goes to `notes`.
async fn attempt<T>(
    what: String,
    notes: &mut Vec<String>,
    f: impl std::future::Future<Output = Result<T, WriteError>>,
) -> String {
    match tokio::time::timeout(PATIENCE, f).await {
        Err(_) => {
            notes.push(format!("{what}: no answer within {PATIENCE:?}"));
            "waits".into()
        }
        Ok(Ok(_)) => "wrote".into(),
        Ok(Err(e)) => {
            notes.push(format!("{what}: {e}"));
            e.code().into()
        }
    }
}

/// "wrote", or the SQLSTATE the client got. A session ended by the server shows
/// as 57P01 even when only the closed socket reached the client (the FATAL
/// message and the close race).
fn outcome<T>(r: Result<T, WriteError>) -> String {
    match r {
        Ok(_) => "wrote".into(),
        Err(e) if e.code() == "closed" => "57P01".into(),
        Err(e) => e.code().into(),
    }
}

/// A cluster with the writers' roles and the table owner.
async fn cluster() -> Postgres {
    let pg = tokio::task::spawn_blocking(|| Postgres::start("blocks"))
        .await
        .unwrap();
    create_roles(&pg).await;
    pg.sql(
        "postgres",
        &format!("CREATE ROLE {OWNER} LOGIN PASSWORD '{WRITER_PASSWORD}'"),
    )
    .await;
    pg
}

/// Database `db` with `items` owned by [`OWNER`], every writer kind prepared on it
/// and each shown to write before anything is blocked.
async fn fresh(pg: &Postgres, db: &str) -> Vec<Prepared> {
    pg.sql("postgres", &format!("CREATE DATABASE {db}")).await;
    pg.sql(
        db,
        &format!("{APP_SCHEMA}\nALTER TABLE items OWNER TO {OWNER};"),
    )
    .await;
    let mut kinds = Vec::new();
    for k in WriterKind::ALL {
        let p = k.prepare_on(pg, db, "items").await;
        bounded(
            "a write before the block",
            p.write_once(&format!("{db}-before-{}", k.name())),
        )
        .await
        .unwrap_or_else(|e| panic!("{} cannot write before any block: {e}", k.name()));
        kinds.push(p);
    }
    kinds
}

fn kind(kinds: &[Prepared], k: WriterKind) -> &Prepared {
    kinds.iter().find(|p| p.kind == k).unwrap()
}

/// Whether a row with `body` is in `db`.
async fn present(pg: &Postgres, db: &str, body: &str) -> bool {
    pg.connect(db)
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM items WHERE body = $1)",
            &[&body],
        )
        .await
        .unwrap()
        .get(0)
}

/// One row of the matrix: the outcome in every column, and notes.
async fn measure(pg: &Postgres, cand: Candidate, notes: &mut Vec<String>) -> Vec<String> {
    let db = cand.db();
    let kinds = fresh(pg, db).await;
    let body = |col: &str| format!("{db}-{col}");
    // A transaction that wrote before the block and commits after it; and one
    // prepared (two-phase) before the block and committed after it.
    let open = kind(&kinds, WriterKind::OpenTransaction)
        .connect()
        .await
        .unwrap();
    open.begin_insert(&body("open-transaction")).await.unwrap();
    let app = kind(&kinds, WriterKind::AppRole);
    let gid = format!("{db}-pending");
    app.connect()
        .await
        .unwrap()
        .prepare_pending(&gid, &body("prepared-txn"))
        .await
        .unwrap();

    let prepared_cell = bounded(
        cand.name(),
        candidates::apply(pg, cand, &kinds, &gid, notes),
    )
    .await;

    let mut cells = Vec::new();
    for k in WriterKind::ALL {
        let what = format!("{}, {}", cand.name(), k.name());
        let cell = if k == WriterKind::OpenTransaction {
            attempt(what, notes, open.commit()).await
        } else {
            let p = kind(&kinds, k);
            attempt(what, notes, p.write_once(&body(k.name()))).await
        };
        cells.push(cell);
    }
    let prepared = match prepared_cell {
        Some(cell) => cell,
        None => {
            let commit = async { app.connect().await?.commit_prepared(&gid).await };
            attempt(format!("{}, prepared-txn", cand.name()), notes, commit).await
        }
    };
    cells.push(prepared);
    let read = async {
        app.connect()
            .await?
            .simple("SELECT count(*) FROM items")
            .await
    };
    let read = attempt(format!("{}, app reads", cand.name()), notes, read).await;
    cells.push(if read == "wrote" { "yes".into() } else { read });
    let controller = pg.connect_as("postgres", SUPERUSER_PASSWORD, db).await;
    cells.push(match controller {
        Ok(_) => "yes".into(),
        Err(e) => e.code().map_or("closed", |c| c.code()).into(),
    });

    if cand == Candidate::NoConnections {
        pg.sql(
            "postgres",
            &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
        )
        .await;
    }
    // What the client was told is what happened: a write reported as done is
    // there, one reported as failed is not (a pending prepared one is neither). A
    // write still waiting in the pooler's queue may yet happen: not checked.
    for (col, cell) in COLUMNS[..9].iter().zip(&cells) {
        if cell == "waits" {
            continue;
        }
        let want = cell == "wrote" || cell.starts_with("block waits");
        assert_eq!(
            present(pg, db, &body(col)).await,
            want,
            "{}, {col}: the client was told {cell}",
            cand.name()
        );
    }
    cells
}

fn markdown(rows: &[(Candidate, Vec<String>)]) -> String {
    let mut t = format!("| block | {} |\n|---|", COLUMNS.join(" | "));
    t.push_str(&"---|".repeat(COLUMNS.len()));
    for (cand, cells) in rows {
        t.push_str(&format!("\n| {} | {} |", cand.name(), cells.join(" | ")));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_matrix_which_block_holds_against_which_writer() {
    let pg = cluster().await;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (cand, _) in EXPECTED {
        let cells = measure(&pg, cand, &mut notes).await;
        rows.push((cand, cells));
    }
    let table = markdown(&rows);
    println!("{table}\n\nwrote: acknowledged; otherwise the SQLSTATE the client got.\n");
    for n in &notes {
        println!("- {n}");
    }
    let wrong: Vec<String> = rows
        .iter()
        .zip(EXPECTED)
        .flat_map(|((cand, got), (_, want))| {
            COLUMNS
                .iter()
                .zip(got.iter().zip(want))
                .filter(|(_, (g, w))| g != w)
                .map(move |(col, (g, w))| {
                    format!("{}, {col}: measured {g}, expected {w}", cand.name())
                })
        })
        .collect();
    assert!(wrong.is_empty(), "{table}\n\n{}", wrong.join("\n"));

    // The one way around the triggers is a deliberate act, not a session setting
    // an application sends: a superuser's `session_replication_role = replica`
    // (triggers fire only in `origin` mode; logical replication's apply workers
    // run as replica, which is why the reverse subscription still applies), or the
    // table's owner disabling the trigger. The switchover's fence check must
    // catch both; nothing else gets through.
    candidates::assert_bypasses(&pg, Candidate::Triggers.db()).await;
}

/// CREATE TRIGGER takes SHARE ROW EXCLUSIVE on the table: it waits for any open
/// transaction that has written to it (ROW EXCLUSIVE), which is why the switchover
/// ends sessions first, but not for one that has only read (ACCESS SHARE). Such a
/// reader is refused at its first write after the trigger commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_waits_for_an_open_writer_not_for_a_reader() {
    let pg = cluster().await;
    let kinds = fresh(&pg, "blk_wait").await;
    let open = kind(&kinds, WriterKind::OpenTransaction);
    let writer: Conn = open.connect().await.unwrap();
    writer.begin_insert("wait-open-writer").await.unwrap();
    let reader: Conn = open.connect().await.unwrap();
    reader
        .simple("BEGIN; SELECT count(*) FROM items")
        .await
        .unwrap();
    let admin = pg.connect("blk_wait").await;
    let err = create_trigger(&admin, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55P03"), "{err:?}");

    // End the writer's session only; the reader's transaction stays open.
    let writer_pid: i32 = writer
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&writer_pid])
        .await
        .unwrap();
    bounded(
        "the trigger, with a reader open",
        create_trigger(&admin, Duration::from_secs(5)),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{TRIGGER_SQL}"));
    assert_eq!(outcome(writer.commit().await), "57P01");
    let e = reader
        .simple("INSERT INTO items (body) VALUES ('wait-reader')")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "25006", "{e}");
    assert!(!present(&pg, "blk_wait", "wait-open-writer").await);
}
