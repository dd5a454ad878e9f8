//! The threads that drive the connections: each runs its own current-thread runtime
//! with its share of the connections, as wrk runs one event loop per thread.
//!
//! Nothing moves between threads once a run has started: a connection, its task and its
//! timers live on one thread, so a response wakes the task on the thread that reads it,
//! and a thread the OS has descheduled delays only its own connections. The caller's
//! runtime keeps the coordination and the aggregator.
//!
//! The start is in two steps so that handshakes stay out of the measurements: every
//! thread opens its connections and reports ready; only then is the schedule's clock
//! started and the run handed to the threads.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::connect::{Conn, Connector};
use super::request::Maker;
use super::worker::{Marks, Shared, Worker};
use crate::stats::{Batch, Recorder};

/// What each thread needs to start its tasks.
#[derive(Clone)]
pub struct Start {
    /// The run's shared state, with the schedule.
    pub shared: Arc<Shared>,
    /// Where recorders ship their batches.
    pub tx: UnboundedSender<Batch>,
    /// The seed for the tasks' randomness.
    pub seed: u64,
}

/// Running load threads.
pub struct LoadThreads {
    ready: Vec<oneshot::Receiver<Result<(), String>>>,
    start: Vec<oneshot::Sender<Start>>,
    done: Vec<oneshot::Receiver<Marks>>,
    handles: Vec<JoinHandle<()>>,
}

impl LoadThreads {
    /// Starts `threads` threads that open `connections` connections between them.
    pub fn spawn(
        threads: usize,
        connections: usize,
        connector: &Arc<Connector>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let threads = threads.clamp(1, connections.max(1));
        let mut this = Self {
            ready: Vec::with_capacity(threads),
            start: Vec::with_capacity(threads),
            done: Vec::with_capacity(threads),
            handles: Vec::with_capacity(threads),
        };
        for thread in 0..threads {
            // Connection i goes to thread i mod threads: the global index seeds the task,
            // so a seeded run renders the same requests whatever the thread count.
            let indices: Vec<usize> = (thread..connections).step_by(threads).collect();
            let (ready_tx, ready_rx) = oneshot::channel();
            let (start_tx, start_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let connector = connector.clone();
            let handle = std::thread::Builder::new()
                .name(format!("cutover-load-{thread}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let task = drive(indices, connector, timeout, ready_tx, start_rx);
                    let marks = runtime.block_on(task);
                    let _ = done_tx.send(marks);
                })
                .map_err(|e| e.to_string())?;
            this.ready.push(ready_rx);
            this.start.push(start_tx);
            this.done.push(done_rx);
            this.handles.push(handle);
        }
        Ok(this)
    }

    /// Waits until every thread has opened its connections.
    pub async fn ready(&mut self) -> Result<(), String> {
        for ready in self.ready.drain(..) {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(reason),
                Err(_) => return Err("a load thread ended before it was ready".into()),
            }
        }
        Ok(())
    }

    /// Hands the run to every thread.
    pub fn start(&mut self, start: &Start) {
        for sender in self.start.drain(..) {
            // A thread that is gone reports through its `done` channel.
            let _ = sender.send(start.clone());
        }
    }

    /// Waits for every thread to finish. When `shutdown` completes first, `stop` is called
    /// once (and the threads then finish their in-flight requests). Returns the run's
    /// marks and when the stop came, if it did.
    pub async fn join(
        self,
        shutdown: impl Future<Output = ()>,
        stop: impl Fn(),
    ) -> (Marks, Option<Instant>) {
        let mut shutdown = pin!(shutdown);
        let mut stopped_at = None;
        let mut marks = Marks::default();
        for mut done in self.done {
            loop {
                tokio::select! {
                    result = &mut done => {
                        // An error means the thread panicked; the join below re-raises it.
                        if let Ok(thread_marks) = result {
                            marks = marks.merge(thread_marks);
                        }
                        break;
                    }
                    () = &mut shutdown, if stopped_at.is_none() => {
                        stopped_at = Some(Instant::now());
                        stop();
                    }
                }
            }
        }
        // Every thread has sent its result (or died); joining only waits for its runtime
        // to be dropped, which closes its connections before the report is returned.
        let handles = self.handles;
        let joined = tokio::task::spawn_blocking(move || {
            handles
                .into_iter()
                .map(JoinHandle::join)
                .find_map(Result::err)
        })
        .await;
        if let Ok(Some(panic)) = joined {
            std::panic::resume_unwind(panic);
        }
        (marks, stopped_at)
    }
}

/// One thread's work: open its connections, report ready, then run its tasks.
async fn drive(
    indices: Vec<usize>,
    connector: Arc<Connector>,
    timeout: Duration,
    ready: oneshot::Sender<Result<(), String>>,
    start: oneshot::Receiver<Start>,
) -> Marks {
    let conns = preconnect(&connector, indices.len(), timeout).await;
    let _ = ready.send(Ok(()));
    let Ok(start) = start.await else {
        return Marks::default();
    };
    let mut tasks = JoinSet::new();
    for (index, conn) in indices.into_iter().zip(conns) {
        let worker = Worker::new(
            start.shared.clone(),
            conn,
            Recorder::new(start.tx.clone()),
            Maker::new(start.seed, index),
        );
        tasks.spawn(worker.run());
    }
    // The aggregator ends when the last recorder is gone; this copy must not outlive them.
    drop(start);
    let mut marks = Marks::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(task_marks) => marks = marks.merge(task_marks),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    marks
}

/// Opens `n` connections concurrently, each within `timeout`. One that fails is left
/// for its task, which retries when its first request is due and counts the failure.
async fn preconnect(connector: &Arc<Connector>, n: usize, timeout: Duration) -> Vec<Option<Conn>> {
    let mut set = JoinSet::new();
    for index in 0..n {
        let connector = connector.clone();
        set.spawn(async move {
            let conn = tokio::time::timeout(timeout, connector.connect()).await;
            (index, conn.ok().and_then(Result::ok))
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((index, conn)) = joined {
            conns[index] = conn;
        }
    }
    conns
}
