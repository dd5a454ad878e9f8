//! What must hold before writes are touched. Nothing here changes the proxies;
//! the only change to the databases is finishing an interrupted run's undo.

use std::time::Duration;

use tokio::time::Instant;

use super::run::Plan;
use super::{SwitchoverOptions, block, fence, fleet, roles};
use crate::catalog::{self, Name};
use crate::dsn::Side;
use crate::error::Error;
use crate::observe::Observer;
use crate::proxy::Proxies;
use crate::sync::schema::PostData;

impl Plan<'_> {
    /// Returns warnings worth showing in the report.
    pub(super) async fn preconditions(
        &self,
        proxies: &Proxies,
        opts: &SwitchoverOptions,
        obs: &dyn Observer,
    ) -> Result<Vec<String>, Error> {
        let mut warnings = Vec::new();
        if opts.routes.is_empty() {
            return Err(Error::Precondition(
                "name at least one route (--route HOST) whose writes move".into(),
            ));
        }
        if opts.max_pause < Duration::from_secs(2) {
            return Err(Error::Precondition(
                "--max-pause must be at least 2s: the steps and their undo need time".into(),
            ));
        }
        catalog::ensure_own_schema(self.from).await?;
        catalog::ensure_own_schema(self.to).await?;

        let Some(sub) = self.link.subscription(self.to).await? else {
            return Err(Error::Precondition(match self.link.publisher {
                Side::Source => format!(
                    "no subscription {} on the target: run `cutover db sync` first \
                     (if the switchover already happened, `cutover db status` shows the reverse link)",
                    self.link.name
                ),
                Side::Target => format!(
                    "no reverse replication ({} on the source): a lossless rollback needs a switchover \
                     made with --reverse",
                    self.link.name
                ),
            }));
        };
        if !sub.enabled {
            return Err(Error::Precondition(format!(
                "subscription {} on the {} is disabled; enable it and let it catch up first",
                self.link.name, self.link.subscriber
            )));
        }
        let states = self.link.table_states(self.to).await?;
        let pending: Vec<String> = states
            .iter()
            .filter(|t| t.state != 'r')
            .map(|t| t.name.to_string())
            .collect();
        if states.is_empty() || !pending.is_empty() {
            return Err(Error::Precondition(format!(
                "the initial copy is not finished (not ready: {}); wait for `cutover db sync` or `status`",
                if pending.is_empty() {
                    "no tables".into()
                } else {
                    pending.join(", ")
                }
            )));
        }
        if self.from.side() == Side::Source {
            // The target must be able to serve as the source did: its indexes,
            // constraints and triggers are built by sync after the initial copy.
            let post = PostData::find(self.from, self.to).await?;
            if !post.complete() {
                let mut list = post
                    .names
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if post.names.len() > 5 {
                    list.push_str(&format!(" and {} more", post.names.len() - 5));
                }
                return Err(Error::Precondition(format!(
                    "the target lacks {} index(es), constraint(s) or trigger(s) of the source ({list}); \
                     run `cutover db sync`, which builds them once the initial copy is done",
                    post.names.len()
                )));
            }
        }
        if self.link.slot(self.from).await?.is_none() {
            return Err(Error::Precondition(format!(
                "replication slot {} is missing on the {}",
                self.link.name, self.link.publisher
            )));
        }
        if opts.reverse {
            self.reverse_preconditions().await?;
        }

        self.refuse_unreplicated().await?;
        block::refuse_prepared(self.from).await?;

        // An interrupted run may have left the old side blocked (the subscription
        // still exists, so it never passed its point of no return): undo that
        // first, so that this run starts from a known state. A block made by an
        // earlier version (a role setting) is undone too.
        let reopened = block::unblock(self.from, Instant::now() + Duration::from_secs(10)).await?;
        let restored = roles::unblock(self.from, self.name, Duration::from_secs(10)).await?;
        if reopened > 0 || !restored.is_empty() {
            let msg = format!(
                "an interrupted run had left the {} refusing writes ({}); write access was restored first",
                self.from.side(),
                if restored.is_empty() {
                    format!("{reopened} table(s)")
                } else {
                    format!("roles {}", restored.join(", "))
                }
            );
            obs.note(&msg);
            warnings.push(msg);
        }
        for db in [self.from, self.to] {
            fence::forget(db, self.name, self.operation).await?;
        }
        fleet::preflight(proxies, &opts.routes, self.from_backend).await?;
        Ok(warnings)
    }

    /// Refuses when a table of the old writer would not reach the new one: created
    /// after `sync`, so missing from the publication or from the subscription.
    pub(super) async fn refuse_unreplicated(&self) -> Result<(), Error> {
        let published = self.link.published(self.from).await?;
        let subscribed: Vec<Name> = self
            .link
            .table_states(self.to)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        let missing: Vec<String> = catalog::tables(self.from)
            .await?
            .into_iter()
            .filter(|t| !t.unlogged)
            .filter(|t| !published.contains(&t.name) || !subscribed.contains(&t.name))
            .map(|t| t.name.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let fix = match self.link.publisher {
            Side::Source => {
                "run `cutover db sync` again: it copies their schema, adds them to the \
                             publication and refreshes the subscription; then switch over"
            }
            Side::Target => {
                "add them to the reverse publication and refresh the reverse \
                             subscription (ALTER SUBSCRIPTION ... REFRESH PUBLICATION), then roll back"
            }
        };
        Err(Error::Precondition(format!(
            "{} table(s) on the {} are not replicated to the {} (created after the sync?): {}; \
             their rows would be left behind; {fix}",
            missing.len(),
            self.from.side(),
            self.to.side(),
            missing.join(", ")
        )))
    }

    async fn reverse_preconditions(&self) -> Result<(), Error> {
        if self.back.subscription(self.from).await?.is_some() {
            return Err(Error::Precondition(format!(
                "subscription {} already exists on the {}; drop it (`cutover db cleanup` drops all) before --reverse",
                self.back.name, self.back.subscriber
            )));
        }
        if self.back.slot(self.to).await?.is_some() {
            return Err(Error::Precondition(format!(
                "replication slot {} already exists on the {}; drop it before --reverse",
                self.back.name, self.back.publisher
            )));
        }
        let wal_level = self.to.setting("wal_level").await?;
        if wal_level != "logical" {
            return Err(Error::Precondition(format!(
                "--reverse needs wal_level = logical on the {} (it is {wal_level})",
                self.to.side()
            )));
        }
        let superuser: bool = self
            .from
            .query_one(
                "read the user's privileges",
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        if !superuser && self.from.version() < 160000 {
            return Err(Error::Precondition(format!(
                "--reverse creates a subscription on the {}, which needs a superuser before PostgreSQL 16",
                self.from.side()
            )));
        }
        Ok(())
    }
}
