//! The acknowledged-writes check: every write the load generator saw acknowledged
//! (a line of its ledger: template, request id, and the id the app returned) must
//! be in that app's database where its writes now go (new once its switchover is
//! done, old otherwise, as after a failed gate), in the row with that id, whose
//! body carries that request id. A row with the id but another body counts as
//! missing: it would mean an id was handed out twice and one write overwritten or
//! lost. Ids are looked up in batches, one query per thousand.

use std::collections::BTreeMap;

use cutover_load::LedgerEntry;

use super::cluster::{Cluster, ClusterError};
use super::platform::app_of_template;
use cutover_controller::plan::record::LedgerCheck;

const BATCH: usize = 1000;
const EXAMPLES: usize = 10;

/// Checks `entries` against each app's database on `new` when the app is in
/// `switched`, else on `old`.
pub async fn check(
    old: &Cluster,
    new: &Cluster,
    switched: &[String],
    entries: &[LedgerEntry],
) -> Result<LedgerCheck, ClusterError> {
    let mut result = LedgerCheck {
        acknowledged: entries.len() as u64,
        ..LedgerCheck::default()
    };
    // App → (id → request id). An entry without a usable id cannot be found.
    let mut by_app: BTreeMap<&'static str, Vec<(i32, &str)>> = BTreeMap::new();
    let mut tables: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    for e in entries {
        let app = app_of_template(&e.template);
        let id = e.id.as_deref().and_then(|i| i.trim().parse::<i32>().ok());
        match (app, app.and_then(|a| a.table), id) {
            (Some(app), Some(table), Some(id)) => {
                tables.insert(app.name, table);
                by_app
                    .entry(app.name)
                    .or_default()
                    .push((id, e.request_id.as_str()));
            }
            _ => miss(
                &mut result,
                format!(
                    "{} {} (no usable id in the ledger)",
                    e.template,
                    e.id.as_deref().unwrap_or("null")
                ),
            ),
        }
    }
    for (app, wanted) in by_app {
        let table = tables.get(app).copied().unwrap_or("items");
        let side = if switched.iter().any(|s| s == app) {
            new
        } else {
            old
        };
        let client = side.connect(app).await?;
        let sql = format!("SELECT id, body FROM {table} WHERE id = ANY($1)");
        for chunk in wanted.chunks(BATCH) {
            let ids: Vec<i32> = chunk.iter().map(|(id, _)| *id).collect();
            let rows = client
                .query(&sql, &[&ids])
                .await
                .map_err(|e| side.sql_error(app, "look up acknowledged writes", &e))?;
            let found: BTreeMap<i32, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for (id, request_id) in chunk {
                match found.get(id) {
                    Some(body) if body.contains(request_id) => result.found += 1,
                    Some(_) => miss(&mut result, format!("{app} {id} (another write's body)")),
                    None => miss(&mut result, format!("{app} {id}")),
                }
            }
        }
    }
    Ok(result)
}

fn miss(result: &mut LedgerCheck, example: String) {
    result.missing += 1;
    if result.missing_examples.len() < EXAMPLES {
        result.missing_examples.push(example);
    }
}
