//! A small authoritative DNS server on loopback UDP for resolver tests: it answers
//! A queries from a table the test changes, with a fixed TTL, or SERVFAIL on demand.
//! (No real DNS server runs here without a network; this speaks the real protocol.)

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running DNS server; stops on drop.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    fail: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub queries: Arc<AtomicU64>,
}

impl DnsServer {
    /// Starts on `127.0.0.1:0`; answers carry `ttl` seconds.
    pub fn start(ttl: u32) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let fail = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let (r, f, s, q) = (records.clone(), fail.clone(), stop.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let table = r.lock().unwrap().clone();
                if let Some(reply) = answer(&buf[..n], &table, ttl, f.load(Ordering::Relaxed)) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        DnsServer {
            addr,
            records,
            fail,
            stop,
            queries,
        }
    }

    /// Sets the A records of `name` (no trailing dot).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// Answers SERVFAIL to everything while `on`.
    pub fn fail(&self, on: bool) {
        self.fail.store(on, Ordering::Relaxed);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Builds the reply to one query, or None for a packet that is not a query.
fn answer(
    q: &[u8],
    table: &HashMap<String, Vec<Ipv4Addr>>,
    ttl: u32,
    fail: bool,
) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let ips = if qtype == 1 {
        table.get(&name).cloned()
    } else {
        None
    };
    let rcode: u16 = if fail {
        2
    } else if qtype == 1 && ips.is_none() && !table.contains_key(&name) {
        3
    } else {
        0
    };
    let ips = ips.unwrap_or_default();
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&(0x8180u16 | 0x0400 | rcode).to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(
        &u16::try_from(if fail { 0 } else { ips.len() })
            .ok()?
            .to_be_bytes(),
    );
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    if !fail {
        for ip in ips {
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&4u16.to_be_bytes());
            r.extend_from_slice(&ip.octets());
        }
    }
    Some(r)
}
