//! Lag in seconds, measured end to end: a row written on the publisher and read on
//! the subscriber. Both timestamps come from the controller's own clock, so clock
//! skew between the two servers cannot distort it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::db::Db;
use crate::error::Error;

/// The replication lag in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LagSeconds {
    pub seconds: f64,
    /// The beat had not arrived when the measurement gave up: the lag is at least
    /// `seconds`.
    pub at_least: bool,
}

impl std::fmt::Display for LagSeconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at_least {
            write!(f, "≥ {:.1} s", self.seconds)
        } else if self.seconds < 1.0 {
            write!(f, "{:.1} ms", self.seconds * 1000.0)
        } else {
            write!(f, "{:.3} s", self.seconds)
        }
    }
}

/// The heartbeat of one migration: row `name` of `_cutover.heartbeat`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: String,
}

impl Heartbeat {
    pub fn new(name: &str) -> Heartbeat {
        Heartbeat {
            name: name.to_string(),
        }
    }

    /// Writes the next beat on the publisher; returns its sequence number.
    pub async fn beat(&self, publisher: &Db) -> Result<i64, Error> {
        let row = publisher
            .query_one(
                "write the heartbeat",
                "INSERT INTO _cutover.heartbeat (name, seq, at) VALUES ($1, 1, clock_timestamp()) \
                 ON CONFLICT (name) DO UPDATE SET seq = _cutover.heartbeat.seq + 1, at = clock_timestamp() \
                 RETURNING seq",
                &[&self.name],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Ensures the row exists without moving it (used before the initial copy).
    pub async fn plant(&self, publisher: &Db) -> Result<(), Error> {
        publisher
            .execute(
                "create the heartbeat row",
                "INSERT INTO _cutover.heartbeat (name, seq, at) VALUES ($1, 0, clock_timestamp()) \
                 ON CONFLICT (name) DO NOTHING",
                &[&self.name],
            )
            .await?;
        Ok(())
    }

    /// The newest beat the subscriber has applied.
    pub async fn seen(&self, subscriber: &Db) -> Result<Option<i64>, Error> {
        Ok(subscriber
            .query_opt(
                "read the heartbeat",
                "SELECT seq FROM _cutover.heartbeat WHERE name = $1",
                &[&self.name],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Writes a beat and waits up to `within` for the subscriber to apply it. The
    /// lag is how long that took; if it does not arrive, the lag is at least
    /// `within`. A server that does not answer in time (a lock, a stalled
    /// session) reads the same way: the reading never waits past `within`.
    pub async fn measure(
        &self,
        publisher: &Db,
        subscriber: &Db,
        within: Duration,
    ) -> Result<LagSeconds, Error> {
        // Timed from before the write: the lag includes the commit on the source.
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + within);
        let gave_up = || LagSeconds {
            seconds: start.elapsed().as_secs_f64(),
            at_least: true,
        };
        let Ok(seq) = tokio::time::timeout_at(deadline, self.beat(publisher)).await else {
            return Ok(gave_up());
        };
        let seq = seq?;
        loop {
            match tokio::time::timeout_at(deadline, self.seen(subscriber)).await {
                Err(_) => return Ok(gave_up()),
                Ok(seen) => {
                    if seen?.is_some_and(|s| s >= seq) {
                        return Ok(LagSeconds {
                            seconds: start.elapsed().as_secs_f64(),
                            at_least: false,
                        });
                    }
                }
            }
            if start.elapsed() >= within {
                return Ok(gave_up());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
