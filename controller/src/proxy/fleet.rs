//! The replicas as one fleet: finding them again through the [`ProxySource`],
//! bringing one that appeared up to the newest replica's state, and the epoch each
//! change carries.
//!
//! One change (one route's weights, hold or release) goes to every replica with
//! the same epoch, and each change takes the next number. A replica that joins is
//! given the state of the newest replica (`PUT /state`); a replica refuses a state
//! older than its own, so a late or repeated catch-up never sets one back. The
//! replicas also sync among themselves, but nothing here waits for that.

use cutover_api::State;
use futures_util::future::join_all;

use super::{Proxies, StatePut, unix_now};
use crate::error::Error;

/// What [`Proxies::catch_up`] did for one replica.
#[derive(Debug)]
pub struct CatchUp {
    pub url: String,
    pub caught: Caught,
}

#[derive(Debug)]
pub enum Caught {
    /// It took the state of replica `from`, at `epoch`.
    Adopted { epoch: u64, from: String },
    /// It was as new as any already.
    Current { epoch: u64 },
    /// It has no `/state` (an older cutover-proxy): the next change reaches it.
    NoState,
    /// Listed, but nothing listens on its admin port yet: a process starting (its
    /// admin API listens before it serves, and it then takes its peers' state),
    /// so it serves nothing. It is not enrolled; the next look tries again.
    NotListening(String),
    /// Why not.
    Failed(String),
}

impl CatchUp {
    pub fn ok(&self) -> bool {
        !matches!(self.caught, Caught::Failed(_))
    }

    /// Whether it is enrolled: everything but a replica that is not listening yet.
    pub fn enrolled(&self) -> bool {
        !matches!(self.caught, Caught::NotListening(_))
    }

    /// For the timeline: "replica http://… (proxy-2) joined: brought to epoch 7
    /// (the state of http://…)".
    pub fn describe(&self, name: &str) -> String {
        let who = if name.is_empty() {
            format!("replica {}", self.url)
        } else {
            format!("replica {} ({name})", self.url)
        };
        match &self.caught {
            Caught::Adopted { epoch, from } => {
                format!("{who} joined: brought to epoch {epoch} (the state of {from})")
            }
            Caught::Current { epoch } => format!("{who} joined, already at epoch {epoch}"),
            Caught::NoState => format!(
                "{who} joined; it has no /state (an older cutover-proxy), so it has its config \
                 file's weights until the next change"
            ),
            Caught::Failed(e) => format!("{who} joined and could not be brought up to date: {e}"),
            Caught::NotListening(e) => format!(
                "{who} is listed but not listening yet ({e}); it is enrolled once it answers"
            ),
        }
    }
}

impl Proxies {
    /// Finds the replicas again through the source (nothing to do without one).
    /// Those that appeared are brought up to the newest replica's state before
    /// this returns; they are returned. Arrivals and departures are noted once for
    /// the timeline, however many clones see them.
    pub async fn refresh(&mut self) -> Result<Vec<String>, Error> {
        let Some(src) = &self.source else {
            return Ok(Vec::new());
        };
        let source = src.to_string();
        let urls = super::clean_urls(&src.urls().await?)?;
        let added: Vec<String> = urls
            .iter()
            .filter(|u| !self.urls.contains(u))
            .cloned()
            .collect();
        self.urls = urls;
        let caught = if added.is_empty() {
            Vec::new()
        } else {
            self.catch_up(&added).await
        };
        // A replica not listening yet serves nothing: it is left out (not a
        // member) until it answers; the next refresh offers it again.
        let waiting: Vec<&String> = caught
            .iter()
            .filter(|c| !c.enrolled())
            .map(|c| &c.url)
            .collect();
        let urls: Vec<String> = self
            .urls
            .iter()
            .filter(|u| !waiting.contains(u))
            .cloned()
            .collect();
        self.urls = urls;
        let (joined, left) = self.book().resolved(&self.urls);
        let now = unix_now();
        for url in left {
            self.book().note(
                now,
                format!("replica {url} left (no longer among {source})"),
                true,
            );
        }
        for c in caught.iter().filter(|c| joined.contains(&c.url)) {
            let text = c.describe(&self.name_of(&c.url));
            self.book().note(unix_now(), text, c.ok());
        }
        Ok(added
            .into_iter()
            .filter(|u| self.urls.contains(u))
            .collect())
    }

    /// The name replica `url` last gave, if any.
    fn name_of(&self, url: &str) -> String {
        self.book()
            .seen()
            .iter()
            .rev()
            .find(|s| s.url == url)
            .map(|s| s.replica.clone())
            .unwrap_or_default()
    }

    /// Brings each of `targets` up to the newest state among all the replicas:
    /// reads `GET /state` from every one and offers the newest (`PUT /state`) to
    /// each target that is behind it.
    pub async fn catch_up(&self, targets: &[String]) -> Vec<CatchUp> {
        let states: Vec<(String, Result<Option<State>, Error>)> = join_all(
            self.urls
                .iter()
                .map(|u| async move { (u.clone(), self.state(u).await) }),
        )
        .await;
        let newest = states
            .iter()
            .filter_map(|(u, s)| Some((u, s.as_ref().ok()?.as_ref()?)))
            .fold(None, |best: Option<(&String, &State)>, (u, s)| match best {
                Some((_, b)) if !s.newer_than(b) => best,
                _ => Some((u, s)),
            });
        let mut out = Vec::new();
        for url in targets {
            let own = states.iter().find(|(u, _)| u == url).map(|(_, s)| s);
            let caught = match (own, newest) {
                (Some(Err(e @ Error::ProxyNotListening { .. })), _) => {
                    Caught::NotListening(e.to_string())
                }
                (Some(Err(e)), _) => Caught::Failed(e.to_string()),
                (Some(Ok(None)), _) => Caught::NoState,
                (Some(Ok(Some(s))), Some((_, n))) if !n.newer_than(s) => {
                    Caught::Current { epoch: s.epoch }
                }
                (_, Some((from, n))) => match self.put_state(url, n).await {
                    Ok(StatePut::Adopted(s)) => Caught::Adopted {
                        epoch: s.epoch,
                        from: from.clone(),
                    },
                    Ok(StatePut::Newer(epoch)) => Caught::Current { epoch },
                    Err(e) => Caught::Failed(e.to_string()),
                },
                // No replica serves /state, or the target is not among them.
                (_, None) => Caught::NoState,
            };
            out.push(CatchUp {
                url: url.clone(),
                caught,
            });
        }
        out
    }

    /// Asks every replica for its state, to keep what each showed (its name, its
    /// epoch) for the record. A replica that does not answer is skipped.
    pub async fn observe(&self) {
        join_all(self.urls.iter().map(|u| self.state(u))).await;
    }

    /// Reads `GET /state` from every replica and starts the epoch counter from the
    /// highest (0 where no replica has `/state`). Only the first read sets the
    /// counter; returns where it stands.
    pub async fn read_epoch(&self) -> Result<u64, Error> {
        let states = join_all(self.urls.iter().map(|u| self.state(u))).await;
        let mut highest = 0;
        for s in states {
            if let Some(s) = s? {
                highest = highest.max(s.epoch);
            }
        }
        let mut book = self.book();
        book.start(highest);
        Ok(book.current().unwrap_or(highest))
    }

    /// The epoch of a new change: one more than the last this controller read or
    /// sent. The first one reads every replica's state first; each later one
    /// checks that no replica moved past the last change (see
    /// [`Proxies::check_unmoved`]).
    pub async fn next_epoch(&self) -> Result<u64, Error> {
        let started = self.book().started();
        if started {
            self.check_unmoved().await?;
        } else {
            self.read_epoch().await?;
        }
        self.book().next().ok_or_else(|| Error::Proxy {
            url: self.urls.join(", "),
            what: "count epochs".into(),
            detail: "the epoch counter is exhausted".into(),
        })
    }

    /// No replica may be past the epoch of this controller's last change. A
    /// replica refuses a change older than its epoch but takes one equal to it,
    /// so an operator's change that raised a replica to exactly the next epoch
    /// would be overwritten unseen, and the replicas' own sync could then prefer
    /// theirs on some replicas and this one on others. A replica that does not
    /// answer, or has no `/state`, is left to the change itself.
    pub async fn check_unmoved(&self) -> Result<(), Error> {
        let Some(ours) = self.book().current() else {
            return Ok(());
        };
        let states = join_all(self.urls.iter().map(|u| self.state(u))).await;
        for (url, s) in self.urls.iter().zip(states) {
            if let Ok(Some(s)) = s
                && s.epoch > ours
            {
                return Err(Error::FleetMoved {
                    url: url.clone(),
                    replica_epoch: s.epoch,
                    ours,
                });
            }
        }
        Ok(())
    }

    /// The epoch of the last change sent (or read before the first): what a
    /// replica that joins in the middle of a change is sent with it.
    pub async fn current_epoch(&self) -> Result<u64, Error> {
        let current = self.book().current();
        match current {
            Some(e) => Ok(e),
            None => self.read_epoch().await,
        }
    }

    /// Every replica this controller has heard from, as it saw them.
    pub fn seen(&self) -> Vec<super::Seen> {
        self.book().seen()
    }

    /// The fleet's news since the last call: replicas that joined or left.
    pub fn take_notes(&self) -> Vec<super::Note> {
        self.book().take_notes()
    }
}
