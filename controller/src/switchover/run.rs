//! The switchover's steps in order, with the undo for every failure before the
//! point of no return (the subscription dropped).

use std::time::Duration;

use tokio::time::Instant;

use super::fleet::{self, Held};
use super::{
    Blocked, PhaseTiming, Recovery, SwitchoverOptions, SwitchoverReport, roles, sequences,
};
use crate::catalog;
use crate::db::Db;
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::link::Link;
use crate::observe::{Observer, Phase};
use crate::proxy::Proxies;
use crate::status::bytes;

/// One direction of the protocol: writes move `from` → `to`; `link` replicates
/// `from` → `to` and is retired; `back` is the reverse link `--reverse` starts.
pub(super) struct Plan<'a> {
    pub operation: &'static str,
    pub from: &'a Db,
    pub to: &'a Db,
    pub link: Link,
    pub back: Link,
    pub name: &'a str,
    pub from_backend: &'a str,
    pub to_backend: &'a str,
    /// How the `from` server reaches `to`, for the reverse subscription.
    pub back_conninfo: &'a str,
}

/// What has been done and must be undone on failure.
#[derive(Default)]
struct Undo {
    held: Vec<Held>,
    blocked: bool,
    opened_to: Vec<String>,
    back_subscription: bool,
    back_publication: bool,
    subscription_disabled: bool,
}

/// Phase timings as they happen, echoed to the observer.
struct Timeline<'o> {
    obs: &'o dyn Observer,
    phases: Vec<PhaseTiming>,
    current: Option<(Phase, Instant)>,
}

impl Timeline<'_> {
    fn begin(&mut self, phase: Phase) {
        self.obs.phase_started(phase);
        self.current = Some((phase, Instant::now()));
    }

    fn end(&mut self, detail: String) {
        if let Some((phase, t)) = self.current.take() {
            let took = t.elapsed();
            self.obs.phase_done(phase, took, &detail);
            self.phases.push(PhaseTiming {
                phase,
                step: phase.number(),
                took_ms: took.as_secs_f64() * 1000.0,
                detail,
            });
        }
    }

    /// The phase a failure happened in.
    fn failed_in(&self) -> String {
        self.current
            .map(|(p, _)| format!("step {} ({})", p.number(), p.describe()))
            .unwrap_or_else(|| "preparation".into())
    }
}

/// The part of the pause budget kept for undoing the work.
fn reserve(max_pause: Duration) -> Duration {
    (max_pause / 4).min(Duration::from_secs(1))
}

fn budget_left(deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Precondition(
            "the pause budget (--max-pause) ran out".into(),
        ));
    }
    Ok(left)
}

impl Plan<'_> {
    pub async fn run(
        &self,
        proxies: &Proxies,
        opts: &SwitchoverOptions,
        obs: &dyn Observer,
    ) -> Result<SwitchoverReport, Error> {
        let start = Instant::now();
        let mut warnings = self.preconditions(proxies, opts, obs).await?;
        let mut tl = Timeline {
            obs,
            phases: Vec::new(),
            current: None,
        };

        // 1. The lag must be under --max-lag before anything is held.
        tl.begin(Phase::Lag);
        let lag = Heartbeat::new(self.name)
            .measure(self.from, self.to, opts.max_lag)
            .await?;
        if lag.at_least {
            return Err(Error::Precondition(format!(
                "replication lag is {lag}, over --max-lag {}; nothing was held; \
                 wait until `cutover db status` shows less",
                humantime::format_duration(opts.max_lag)
            )));
        }
        let unflushed = self
            .link
            .slot(self.from)
            .await?
            .and_then(|s| s.lag_bytes)
            .map(bytes)
            .unwrap_or_else(|| "?".into());
        tl.end(format!("{lag} by heartbeat, {unflushed} unflushed"));

        // 2. Hold writes on every proxy; each must acknowledge.
        tl.begin(Phase::Hold);
        let hold_start = Instant::now();
        let deadline = hold_start + opts.max_pause - reserve(opts.max_pause);
        let held = match fleet::hold_all(proxies, &opts.routes, opts.max_pause).await {
            Ok(h) => h,
            Err(e) => {
                return Err(Error::Aborted {
                    operation: self.operation,
                    phase: tl.failed_in(),
                    cause: Box::new(e),
                    undo: "the holds taken were released; writes did not move".into(),
                });
            }
        };
        tl.end(format!(
            "{} hold(s) on {} proxy(ies)",
            held.len(),
            proxies.urls().len()
        ));
        let mut undo = Undo {
            held,
            ..Undo::default()
        };

        let critical = self
            .before_no_return(proxies, opts, deadline, &mut tl, &mut undo)
            .await;
        let (lsn, sequences, blocked) = match critical {
            Ok(v) => v,
            Err(e) => {
                let phase = tl.failed_in();
                let undone = self.undo(proxies, &undo, hold_start + opts.max_pause).await;
                return Err(Error::Aborted {
                    operation: self.operation,
                    phase,
                    cause: Box::new(e),
                    undo: undone,
                });
            }
        };

        // 7. Past here there is no going back: the new side is the primary.
        let left = budget_left(deadline).unwrap_or(Duration::from_millis(500));
        match self
            .link
            .drop_slot(self.from, left.min(Duration::from_secs(5)))
            .await
        {
            Ok(_) => tl.end(format!(
                "subscription {} and its slot dropped",
                self.link.name
            )),
            Err(e) => {
                warnings.push(format!(
                    "slot {} on the {} was not dropped ({e}); it retains WAL until `cutover db cleanup` drops it",
                    self.link.name, self.link.publisher
                ));
                tl.end(format!("subscription {} dropped", self.link.name));
            }
        }

        // 8. Release with writes on the new side.
        tl.begin(Phase::Release);
        let released = fleet::release_all(
            proxies,
            &undo.held,
            Some(self.to_backend),
            hold_start + opts.max_pause,
        )
        .await
        .map_err(|e| {
            Error::Precondition(format!(
                "{e}; the data is on the {} now and its subscription is gone: release the remaining \
                 proxies with POST /routes/{{host}}/release {{\"writes\":\"{}\"}}",
                self.to.side(),
                self.to_backend
            ))
        })?;
        let pause = hold_start.elapsed();
        tl.end(format!(
            "writes on {:?}; {released} held request(s) released",
            self.to_backend
        ));

        Ok(SwitchoverReport {
            operation: self.operation,
            from: self.from.side(),
            to: self.to.side(),
            writes: self.to_backend.to_string(),
            phases: tl.phases,
            write_pause_ms: pause.as_secs_f64() * 1000.0,
            hold_started_ms: (hold_start - start).as_secs_f64() * 1000.0,
            released_ms: start.elapsed().as_secs_f64() * 1000.0,
            released_requests: released,
            lsn,
            sequences,
            blocked,
            reopened: undo.opened_to.clone(),
            reverse: opts.reverse.then(|| self.back.clone()),
            warnings,
        })
    }

    /// Steps 3 to 7's drop of the subscription: every failure here is undone.
    async fn before_no_return(
        &self,
        proxies: &Proxies,
        opts: &SwitchoverOptions,
        deadline: Instant,
        tl: &mut Timeline<'_>,
        undo: &mut Undo,
    ) -> Result<(String, usize, Blocked), Error> {
        // 3. No write may still be on its way to the old side.
        tl.begin(Phase::Drain);
        fleet::drain(proxies, &opts.routes, self.from_backend, deadline).await?;
        tl.end(format!("no write in flight to {:?}", self.from_backend));

        // 4. Block writes on the old side for every application role.
        tl.begin(Phase::Block);
        undo.blocked = true;
        let blocked = roles::block(self.from, self.name, budget_left(deadline)?).await?;
        let mut detail = format!(
            "{} role(s) read-only ({}), {} session(s) ended",
            blocked.roles.len(),
            blocked.roles.join(", "),
            blocked.sessions_ended
        );
        if !blocked.superusers.is_empty() {
            detail.push_str(&format!(
                "; superusers not blocked: {}",
                blocked.superusers.join(", ")
            ));
        }
        tl.end(detail);

        // 5. Catch up to the old side's current position. The beat written after
        // reading it puts a commit past that position, so the subscriber's flush
        // report must cross it.
        tl.begin(Phase::Flush);
        let lsn: String = self
            .from
            .query_one(
                "read the current WAL position",
                "SELECT pg_current_wal_lsn()::text",
                &[],
            )
            .await?
            .get(0);
        Heartbeat::new(self.name).beat(self.from).await?;
        self.link
            .wait_flushed(self.from, &lsn, budget_left(deadline)?)
            .await?;
        tl.end(format!("flushed past {lsn}"));

        // 6. Sequences.
        tl.begin(Phase::Sequences);
        let sequences = sequences::copy(self.from, self.to).await?;
        tl.end(format!("{sequences} sequence(s)"));

        // The new side may carry blocks from an earlier rollback: lift them while
        // writes are still held.
        undo.opened_to = roles::unblock(self.to, self.name, budget_left(deadline)?).await?;
        if !undo.opened_to.is_empty() {
            tl.obs.note(&format!(
                "write access restored on the {} for {} (blocked by an earlier switchover)",
                self.to.side(),
                undo.opened_to.join(", ")
            ));
        }

        // 6b. Reverse replication, before any write reaches the new side.
        if opts.reverse {
            tl.begin(Phase::Reverse);
            let tables = catalog::published_tables(self.to).await?;
            undo.back_publication = !self.back.publication_exists(self.to).await?;
            self.back.ensure_publication(self.to, &tables).await?;
            undo.back_subscription = true;
            self.back
                .create_subscription(self.from, self.back_conninfo, false)
                .await?;
            tl.end(format!(
                "subscription {} on the {} from the {} (copy_data = false)",
                self.back.name, self.back.subscriber, self.back.publisher
            ));
        }

        // 7. Drop the subscription; its success is the point of no return.
        tl.begin(Phase::Drop);
        budget_left(deadline)?;
        undo.subscription_disabled = true;
        self.link.drop_subscription(self.to).await?;
        Ok((lsn, sequences, blocked))
    }

    /// Puts back what was done, newest first, and says what happened.
    async fn undo(&self, proxies: &Proxies, undo: &Undo, hold_deadline: Instant) -> String {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let quick = Duration::from_secs(5);
        if undo.subscription_disabled {
            let n = catalog::ident(&self.link.name);
            let restore = format!(
                "ALTER SUBSCRIPTION {n} SET (slot_name = {}); ALTER SUBSCRIPTION {n} ENABLE",
                catalog::literal(&self.link.name)
            );
            if let Ok(Some(_)) = self.link.subscription(self.to).await {
                match self.to.batch("re-enable the subscription", &restore).await {
                    Ok(()) => done.push(format!("subscription {} re-enabled", self.link.name)),
                    Err(e) => failed.push(e.to_string()),
                }
            }
        }
        if undo.back_subscription {
            match self.back.drop_subscription(self.from).await {
                Ok(_) => done.push(format!("reverse subscription {} dropped", self.back.name)),
                Err(e) => failed.push(e.to_string()),
            }
            if let Err(e) = self.back.drop_slot(self.to, quick).await {
                failed.push(e.to_string());
            }
        }
        if undo.back_publication
            && let Err(e) = self.back.drop_publication(self.to).await
        {
            failed.push(e.to_string());
        }
        if !undo.opened_to.is_empty() {
            match roles::block(self.to, self.name, quick).await {
                Ok(_) => done.push(format!("the {} is read-only again", self.to.side())),
                Err(e) => failed.push(e.to_string()),
            }
        }
        if undo.blocked {
            match roles::unblock(self.from, self.name, quick).await {
                Ok(_) => done.push(format!("write access restored on the {}", self.from.side())),
                Err(e) => failed.push(format!(
                    "{e} (run the same command again: it restores write access first)"
                )),
            }
        }
        match fleet::release_all(proxies, &undo.held, Some(self.from_backend), hold_deadline).await
        {
            Ok(n) => done.push(format!(
                "holds released with writes on {:?} ({n} held request(s) let go)",
                self.from_backend
            )),
            Err(e) => failed.push(e.to_string()),
        }
        let mut s = format!("undone: {}", done.join("; "));
        if !failed.is_empty() {
            s.push_str(&format!("; NOT undone: {}", failed.join("; ")));
        }
        s
    }
}

impl Plan<'_> {
    /// Finishes or undoes a switchover whose controller stopped mid-way, judged by
    /// the point of no return: while the subscription exists, everything is undone
    /// (writes stay on `from`); once it is gone, the sequences are copied again and
    /// the holds are released with writes on `to`. Every action is safe to repeat.
    pub async fn recover(
        &self,
        proxies: &Proxies,
        opts: &SwitchoverOptions,
    ) -> Result<Recovery, Error> {
        // Release is harmless where no hold is left, so every route is covered.
        let held = fleet::every(proxies, &opts.routes);
        let deadline = Instant::now() + opts.max_pause.max(Duration::from_secs(5));
        match self.link.subscription(self.to).await? {
            Some(sub) => {
                let undo = Undo {
                    held,
                    blocked: true,
                    back_subscription: opts.reverse,
                    back_publication: opts.reverse,
                    subscription_disabled: !sub.enabled,
                    opened_to: Vec::new(),
                };
                let said = self.undo(proxies, &undo, deadline).await;
                if said.contains("NOT undone") {
                    return Err(Error::Precondition(said));
                }
                Ok(Recovery::Undone(said))
            }
            None => {
                // Step 6 copied the sequences before the subscription was dropped,
                // but the run may have got as far as the release: then `to` has
                // been taking writes, and copying the frozen values again would
                // set its sequences back onto ids already used. Only a sequence
                // still behind on `to` is moved.
                let n = copy_sequences_behind(self.from, self.to).await?;
                let released =
                    fleet::release_all(proxies, &held, Some(self.to_backend), deadline).await?;
                Ok(Recovery::Completed(format!(
                    "the subscription was already dropped: {n} sequence(s) behind on the {} \
                     brought forward, holds released with writes on {:?} ({released} held \
                     request(s) let go)",
                    self.to.side(),
                    self.to_backend
                )))
            }
        }
    }
}

/// Sets every sequence of `to` that is behind the same sequence on `from` to
/// `from`'s value; one already past it (it has handed out values since) is left
/// alone. Returns how many were set.
async fn copy_sequences_behind(from: &Db, to: &Db) -> Result<usize, Error> {
    let mut set = 0;
    for seq in catalog::sequences(from).await? {
        let exists: bool = to
            .query_one(
                &format!("look for sequence {seq}"),
                "SELECT to_regclass($1::text) IS NOT NULL",
                &[&seq.sql()],
            )
            .await?
            .get(0);
        if !exists {
            // Dropped on `to` since: nothing to move.
            continue;
        }
        let (last, called, step, src_next) = sequence_state(from, &seq).await?;
        let (_, _, _, tgt_next) = sequence_state(to, &seq).await?;
        let behind = if step >= 0 {
            tgt_next < src_next
        } else {
            tgt_next > src_next
        };
        if behind {
            let qualified = seq.sql();
            to.execute(
                &format!("set sequence {seq}"),
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&qualified, &last, &called],
            )
            .await?;
            set += 1;
        }
    }
    Ok(set)
}

/// A sequence's `last_value`, `is_called`, increment, and the value the next
/// `nextval()` returns.
async fn sequence_state(db: &Db, seq: &catalog::Name) -> Result<(i64, bool, i64, i64), Error> {
    let qualified = seq.sql();
    let row = db
        .query_one(
            &format!("read sequence {seq}"),
            &format!(
                "SELECT s.last_value, s.is_called, p.seqincrement \
                 FROM {qualified} s, pg_catalog.pg_sequence p \
                 WHERE p.seqrelid = $1::text::regclass"
            ),
            &[&qualified],
        )
        .await?;
    let (last, called, step): (i64, bool, i64) = (row.get(0), row.get(1), row.get(2));
    let next = if called {
        last.saturating_add(step)
    } else {
        last
    };
    Ok((last, called, step, next))
}
