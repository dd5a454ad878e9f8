//! A TCP relay to cut a link between processes on loopback: it forwards every
//! connection it accepts to a target until paused; paused, it closes the
//! connections it carries and closes new ones as soon as they are accepted, as a
//! partition would, until resumed. Also: listeners on one port across several
//! loopback addresses (127.0.0.0/8 is all loopback on Linux), for peers found by a
//! DNS name, which yields addresses and no ports.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

/// How many ports [`listeners_on_one_port`] tries before it gives up.
const PORT_ATTEMPTS: usize = 100;

/// A listener on each of `ips`, all on one port. Bound at once, so nothing else
/// takes the port meanwhile. Panics after a bounded number of tries.
pub fn listeners_on_one_port(ips: &[Ipv4Addr]) -> Vec<TcpListener> {
    let (first, rest) = ips.split_first().expect("at least one address");
    for _ in 0..PORT_ATTEMPTS {
        let lead = TcpListener::bind((*first, 0)).expect("bind a loopback port");
        let port = lead.local_addr().expect("local addr").port();
        let mut all = vec![lead];
        for ip in rest {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return all;
        }
    }
    panic!("no port free on all of {ips:?} in {PORT_ATTEMPTS} tries");
}

/// A port free on each of `ips` a moment ago, for a process that binds it itself.
/// (It could be taken between this call and that bind; on a test machine's
/// loopback aliases nothing else picks ports there.)
pub fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    let all = listeners_on_one_port(ips);
    all[0].local_addr().expect("local addr").port()
}

/// A running relay; stops on drop, closing every connection it carries.
pub struct Relay {
    pub addr: SocketAddr,
    pub target: SocketAddr,
    paused: watch::Sender<bool>,
    dropped: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays connections accepted on `listener` to `target`, on its own thread and
    /// runtime.
    pub fn start(listener: TcpListener, target: SocketAddr) -> Relay {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let (paused, paused_rx) = watch::channel(false);
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = oneshot::channel();
        let counted = dropped.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                rt.block_on(accept(listener, target, paused_rx, counted, stop_rx));
                // Dropping the runtime aborts every connection task: sockets close.
                rt.shutdown_background();
            })
            .expect("spawn relay thread");
        Relay {
            addr,
            target,
            paused,
            dropped,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Cuts the link: open connections close now, new ones right after accept.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Mends the link: new connections are relayed again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Connections closed unrelayed because the relay was paused.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    paused: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors, say: let the system catch up.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if *paused.borrow() {
            dropped.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        tokio::spawn(carry(stream, target, paused.clone()));
    }
}

/// Copies both ways until either side closes or the relay is paused.
async fn carry(mut client: TcpStream, target: SocketAddr, mut paused: watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = paused.wait_for(|p| *p) => {}
    }
}
