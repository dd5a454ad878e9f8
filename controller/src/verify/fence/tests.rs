//! The fence comparison's statements and findings, without a database (the
//! database cases are in the tests crate's `db/fence.rs`).

use super::diff::{ChunkDiff, Findings, Kind};
use super::shape::{KeyColumn, Range, Shape};
use super::shape_problem;
use crate::catalog::Name;

fn pairs() -> Shape {
    Shape {
        table: Name::new("public", "pairs"),
        columns: vec!["a".into(), "b".into(), "v".into()],
        key: vec![
            KeyColumn {
                name: "a".into(),
                ty: "integer".into(),
            },
            KeyColumn {
                name: "b".into(),
                ty: "character varying(20)".into(),
            },
        ],
    }
}

fn bounds(lower: Option<[&str; 2]>, upper: Option<[&str; 2]>) -> Range {
    let v = |b: [&str; 2]| b.iter().map(|s| s.to_string()).collect();
    Range {
        lower: lower.map(v),
        upper: upper.map(v),
    }
}

#[test]
fn a_composite_key_compares_as_a_row_of_typed_bounds() {
    let s = pairs();
    let both = bounds(Some(["1", "x"]), Some(["9", "y"]));
    assert_eq!(
        s.aggregate_sql(&both),
        "SELECT count(*), coalesce(sum(hashtextextended(ROW(t.\"a\", t.\"b\", t.\"v\")::text, 0)), 0)::text \
         FROM ONLY \"public\".\"pairs\" t \
         WHERE (t.\"a\", t.\"b\") > ($1::text::integer, $2::text::character varying(20)) \
         AND (t.\"a\", t.\"b\") <= ($3::text::integer, $4::text::character varying(20))"
    );
    assert_eq!(both.params().len(), 4);
    // Only an upper bound: its parameters start at $1.
    let first = bounds(None, Some(["9", "y"]));
    assert!(s.aggregate_sql(&first).ends_with(
        "WHERE (t.\"a\", t.\"b\") <= ($1::text::integer, $2::text::character varying(20))"
    ));
    assert_eq!(first.params().len(), 2);
    assert!(
        s.aggregate_sql(&Range::default())
            .ends_with("FROM ONLY \"public\".\"pairs\" t")
    );
}

#[test]
fn the_next_bound_is_the_last_row_of_the_next_chunk() {
    let s = pairs();
    assert_eq!(
        s.next_bound_sql(&bounds(Some(["1", "x"]), None), 1000),
        "SELECT t.\"a\"::text, t.\"b\"::text FROM ONLY \"public\".\"pairs\" t \
         WHERE (t.\"a\", t.\"b\") > ($1::text::integer, $2::text::character varying(20)) \
         ORDER BY t.\"a\", t.\"b\" OFFSET 999 LIMIT 1"
    );
    assert!(
        s.next_bound_sql(&Range::default(), 1)
            .contains("t ORDER BY")
    );
}

#[test]
fn digests_name_a_composite_key_as_its_row() {
    let s = pairs();
    let sql = s.digests_sql(&bounds(Some(["1", "x"]), None), Some(50));
    assert!(
        sql.starts_with("SELECT ROW(t.\"a\", t.\"b\")::text, hashtextextended("),
        "{sql}"
    );
    assert!(sql.ends_with("ORDER BY t.\"a\", t.\"b\" LIMIT 50"), "{sql}");
    let mut one = pairs();
    one.key.truncate(1);
    assert!(
        one.digests_sql(&Range::default(), None)
            .starts_with("SELECT t.\"a\"::text, hashtextextended(")
    );
}

#[test]
fn quoted_names_stay_quoted() {
    let s = Shape {
        table: Name::new("app", "Order \"x\""),
        columns: vec!["Id".into(), "sel ect".into()],
        key: vec![KeyColumn {
            name: "Id".into(),
            ty: "bigint".into(),
        }],
    };
    let sql = s.aggregate_sql(&Range::default());
    assert!(sql.contains("ROW(t.\"Id\", t.\"sel ect\")::text"), "{sql}");
    assert!(
        sql.contains("FROM ONLY \"app\".\"Order \"\"x\"\"\" t"),
        "{sql}"
    );
}

#[test]
fn a_chunk_names_missing_changed_and_extra_rows() {
    let mut found = Findings::new(10);
    let mut diff = ChunkDiff::new([("1".to_string(), 10), ("2".into(), 20), ("3".into(), 30)]);
    diff.target("1", 10, &mut found);
    diff.target("3", 31, &mut found);
    diff.target("4", 40, &mut found);
    diff.finish(&mut found);
    assert_eq!((found.missing, found.changed, found.extra), (1, 1, 1));
    assert!(!found.passed());
    assert_eq!(
        found.problem().as_deref(),
        Some(
            "1 source row missing on the target (lost writes), 1 changed, 1 only on the target: \
             keys 3 changed, 4 extra, 2 missing"
        )
    );
}

#[test]
fn missing_rows_are_named_in_key_order_up_to_the_limit() {
    let mut found = Findings::new(3);
    let diff = ChunkDiff::new((1..=5).map(|i| (i.to_string(), i)));
    diff.finish(&mut found);
    assert_eq!(found.missing, 5);
    assert_eq!(
        found.problem().as_deref(),
        Some(
            "5 source rows missing on the target (lost writes): keys 1 missing, 2 missing, 3 missing and 2 more"
        )
    );
}

#[test]
fn notes_speak_for_tables_whose_rows_cannot_be_named() {
    let clean = Findings::new(10);
    assert!(clean.passed());
    assert_eq!(clean.problem(), None);

    let mut absent = Findings::new(10);
    absent.missing = 50;
    absent.note("missing on the target".into());
    assert_eq!(absent.problem().as_deref(), Some("missing on the target"));

    // A note alone fails the table.
    let mut odd = Findings::new(10);
    odd.note("aggregates differ".into());
    assert!(!odd.passed());

    // Without examples, the counts still show.
    let mut none = Findings::new(0);
    none.add(Kind::Extra, "9");
    assert_eq!(none.problem().as_deref(), Some("1 only on the target"));
}

#[test]
fn a_table_is_compared_only_with_the_source_s_columns_and_key() {
    let src = pairs();
    let mut wider = pairs();
    wider.columns.push("added".into());
    assert_eq!(shape_problem(&src, &wider), None);
    let mut narrower = pairs();
    narrower.columns.retain(|c| c != "v");
    assert_eq!(
        shape_problem(&src, &narrower).as_deref(),
        Some("columns missing on the target: v")
    );
    let mut rekeyed = pairs();
    rekeyed.key.truncate(1);
    assert_eq!(
        shape_problem(&src, &rekeyed).as_deref(),
        Some("primary key (a, b) on the source, (a) on the target")
    );
}
