//! Putting things back: the undo of a switchover that failed before its point of
//! no return, and the recovery of one whose controller stopped mid-way.
//!
//! The point of no return is one transaction on the new writer, so its outcome is
//! read off the new writer alone: while the subscription exists, everything is
//! undone and writes stay on the old writer; once it is gone, the fence the same
//! transaction recorded proves the new writer had applied everything, and only
//! then are writes released there.

use std::time::Duration;

use tokio::time::Instant;

use super::fleet;
use super::run::{Plan, Undo};
use super::{Recovery, SwitchoverOptions, block, fence, sequences};
use crate::catalog::{ident, literal};
use crate::error::Error;
use crate::proxy::Proxies;

impl Plan<'_> {
    /// Puts back what was done, newest first, and says what happened. Database
    /// calls end by the callers' deadline; the proxies are retried until
    /// `hold_deadline`.
    pub(super) async fn undo(
        &self,
        proxies: &mut Proxies,
        undo: &Undo,
        hold_deadline: Instant,
    ) -> String {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let quick = Duration::from_secs(5);
        if undo.back_subscription {
            match self.back.drop_subscription(self.from).await {
                Ok(_) => done.push(format!("reverse subscription {} dropped", self.back.name)),
                Err(e) => failed.push(e.to_string()),
            }
        }
        if undo.back_slot
            && let Err(e) = self.back.drop_slot(self.to, quick).await
        {
            failed.push(e.to_string());
        }
        if undo.back_publication
            && let Err(e) = self.back.drop_publication(self.to).await
        {
            failed.push(e.to_string());
        }
        // Released with writes on a writer that still refuses them, every held
        // write would fail in the application; held, it waits (or gets 503 with
        // Retry-After past the hold's end) until write access is back.
        let mut writable = true;
        if undo.blocked {
            let until = hold_deadline.max(Instant::now() + quick);
            let unblocked = if crate::failpoint::fail_point("restore-write-access") {
                Err(Error::Precondition(
                    "restoring write access failed (CUTOVER_FAIL_AT=restore-write-access)".into(),
                ))
            } else {
                block::unblock(self.from, until).await
            };
            match unblocked {
                Ok(_) => done.push(format!("write access restored on the {}", self.from.side())),
                Err(e) => {
                    writable = false;
                    failed.push(format!(
                        "{e} (run the same command again: it restores write access first)"
                    ));
                }
            }
        }
        if !undo.held.is_empty() && !writable {
            failed.push(format!(
                "holds kept: the {} refuses writes, so they stay held until write access is \
                 restored; then release with POST /routes/{{host}}/release {{\"writes\":\"{}\"}}",
                self.from.side(),
                self.from_backend
            ));
        } else if !undo.held.is_empty() {
            match fleet::release_all(proxies, &undo.held, Some(self.from_backend), hold_deadline)
                .await
            {
                Ok(n) => done.push(format!(
                    "holds released with writes on {:?} ({n} held request(s) let go)",
                    self.from_backend
                )),
                Err(e) => failed.push(e.to_string()),
            }
        }
        let mut s = if done.is_empty() {
            "nothing to undo on the databases".to_string()
        } else {
            format!("undone: {}", done.join("; "))
        };
        if !failed.is_empty() {
            s.push_str(&format!("; NOT undone: {}", failed.join("; ")));
        }
        s
    }

    /// Finishes or undoes a switchover whose controller stopped mid-way. Every
    /// action is safe to repeat.
    pub async fn recover(
        &self,
        proxies: &Proxies,
        opts: &SwitchoverOptions,
    ) -> Result<Recovery, Error> {
        // Release is harmless where no hold is left, so every route of every
        // replica there is now is covered (a lookup that fails covers those known).
        let proxies = &mut proxies.clone();
        let _ = proxies.refresh().await;
        let held = fleet::every(proxies, &opts.routes);
        let deadline = Instant::now() + opts.max_pause.max(Duration::from_secs(5));
        match self.link.subscription(self.to).await? {
            Some(sub) => {
                if !sub.enabled {
                    // Disabled by a run of an earlier version, mid-way.
                    let n = ident(&self.link.name);
                    self.to
                        .batch(
                            "re-enable the subscription",
                            &format!(
                                "ALTER SUBSCRIPTION {n} SET (slot_name = {}); ALTER SUBSCRIPTION {n} ENABLE",
                                literal(&self.link.name)
                            ),
                        )
                        .await?;
                }
                let undo = Undo {
                    held,
                    blocked: true,
                    back_subscription: opts.reverse,
                    back_publication: opts.reverse,
                    back_slot: opts.reverse,
                    unknown: false,
                };
                let said = self.undo(proxies, &undo, deadline).await;
                if said.contains("NOT undone") {
                    return Err(Error::Precondition(said));
                }
                Ok(Recovery::Undone(said))
            }
            None => {
                let Some(f) = fence::applied(self.to, self.name, self.operation).await? else {
                    return Err(Error::Precondition(format!(
                        "the subscription {} is gone from the {}, but the {} holds no fence record: \
                         nothing proves it applied every write of the {}, so writes stay held; \
                         compare the two databases (`cutover db verify`), then release the routes \
                         by hand (POST /routes/{{host}}/release with the side that has the data)",
                        self.link.name,
                        self.to.side(),
                        self.to.side(),
                        self.from.side()
                    )));
                };
                // The same transaction that dropped the subscription opened the
                // tables; opening again is a no-op, but costs nothing to make sure.
                block::unblock(self.to, deadline).await?;
                // The run may have got as far as the release: `to` may have taken
                // writes since, so sequences only ever move forward.
                let (n, _) = sequences::bring_forward(self.from, self.to).await?;
                let released =
                    fleet::release_all(proxies, &held, Some(self.to_backend), deadline).await?;
                Ok(Recovery::Completed(format!(
                    "the subscription was already dropped after the {} applied through the fence {}: \
                     {n} sequence(s) behind on the {} brought forward, holds released with writes \
                     on {:?} ({released} held request(s) let go)",
                    self.to.side(),
                    f.lsn,
                    self.to.side(),
                    self.to_backend
                )))
            }
        }
    }
}
