//! A tiny authoritative DNS responder on loopback UDP for `rehearse --replicas`:
//! A records for one name, answered from a table the rehearsal changes as replicas
//! come and go, with a TTL of one second.
//!
//! It stands in for the cluster DNS of a Kubernetes headless Service with
//! `publishNotReadyAddresses: true`: the name resolves to every running replica's
//! admin address, ready or not, so a starting replica finds its peers and the
//! controller sees it at once. Readiness decides only who gets traffic, which is the
//! balancer's business ([`super::balancer`]).
//!
//! It speaks just enough of RFC 1035 for a stub resolver: one question per query;
//! the name's A records (AAAA and other types: no data); any other name: NXDOMAIN.
//! Queries with EDNS are answered without it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The TTL of every answer: resolvers may cache a list for a second at most.
pub const TTL: u32 = 1;

/// How often the serving thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// A running responder; stops on drop.
pub struct Dns {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    /// The one name it knows, lower case, without the trailing dot.
    pub name: String,
    ips: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("ips", &self.ips())
            .finish()
    }
}

impl Dns {
    /// Starts answering for `name` on `127.0.0.1:0`, with no address yet (an
    /// empty answer, as a Service with no endpoints).
    pub fn start(name: &str) -> std::io::Result<Dns> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(POLL))?;
        let addr = socket.local_addr()?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let ips: Arc<Mutex<BTreeSet<Ipv4Addr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (table, flag, zone) = (ips.clone(), stop.clone(), name.clone());
        let thread = std::thread::Builder::new()
            .name("rehearse-dns".into())
            .spawn(move || {
                let mut buf = [0u8; 1500];
                while !flag.load(Ordering::Relaxed) {
                    // A timeout (or any error) just goes round to the stop flag.
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let now: Vec<Ipv4Addr> = table
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .copied()
                        .collect();
                    if let Some(reply) = answer(&buf[..n], &zone, &now) {
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })?;
        Ok(Dns {
            addr,
            name,
            ips,
            stop,
            thread: Some(thread),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeSet<Ipv4Addr>> {
        self.ips.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `ip` from the next query on.
    pub fn add(&self, ip: Ipv4Addr) {
        self.table().insert(ip);
    }

    /// Stops listing `ip`.
    pub fn remove(&self, ip: Ipv4Addr) {
        self.table().remove(&ip);
    }

    /// The addresses listed now.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.table().iter().copied().collect()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;

/// The reply to one datagram, or `None` for one that is not a query (answering a
/// response could start a loop).
fn answer(q: &[u8], zone: &str, ips: &[Ipv4Addr]) -> Option<Vec<u8>> {
    let header = q.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 != 0 {
        return None;
    }
    // QR, AA, RA; RD copied from the query; the opcode copied too, as RFC 1035 asks.
    let reply_flags = 0x8000 | 0x0400 | 0x0080 | (flags & 0x0100) | (flags & 0x7800);
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let bare = |rcode: u16| {
        let mut r = Vec::with_capacity(12);
        r.extend_from_slice(&header[..2]);
        r.extend_from_slice(&(reply_flags | rcode).to_be_bytes());
        r.extend_from_slice(&[0; 8]);
        r
    };
    if opcode != 0 {
        return Some(bare(RCODE_NOTIMP));
    }
    if qdcount != 1 {
        return Some(bare(RCODE_FORMERR));
    }
    let Some((name, end)) = question_name(q) else {
        return Some(bare(RCODE_FORMERR));
    };
    let (Some(qtype), Some(qclass)) = (be16(q, end), be16(q, end + 2)) else {
        return Some(bare(RCODE_FORMERR));
    };
    let question = &q[12..end + 4];
    let ours = name == zone;
    let listed: &[Ipv4Addr] =
        if ours && qclass == CLASS_IN && (qtype == TYPE_A || qtype == TYPE_ANY) {
            ips
        } else {
            &[]
        };
    let rcode = if ours { 0 } else { RCODE_NXDOMAIN };
    let mut r = Vec::with_capacity(12 + question.len() + 16 * listed.len());
    r.extend_from_slice(&header[..2]);
    r.extend_from_slice(&(reply_flags | rcode).to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::try_from(listed.len()).ok()?.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in listed {
        // The name as a pointer to the question's (offset 12).
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// The question's name (lower case, dotted) and the offset just past it. Queries
/// do not compress their one name; a pointer is refused.
fn question_name(q: &[u8]) -> Option<(String, usize)> {
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = q.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    Some((labels.join("."), i))
}

fn be16(q: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    /// (rcode, answer count, addresses, TTLs) of a reply.
    fn read(r: &[u8], qlen: usize) -> (u16, u16, Vec<Ipv4Addr>, Vec<u32>) {
        let flags = u16::from_be_bytes([r[2], r[3]]);
        assert_ne!(flags & 0x8000, 0, "a response");
        assert_ne!(flags & 0x0400, 0, "authoritative");
        let ancount = u16::from_be_bytes([r[6], r[7]]);
        let mut i = qlen;
        let (mut ips, mut ttls) = (Vec::new(), Vec::new());
        for _ in 0..ancount {
            assert_eq!(&r[i..i + 2], &[0xc0, 0x0c]);
            ttls.push(u32::from_be_bytes([r[i + 6], r[i + 7], r[i + 8], r[i + 9]]));
            ips.push(Ipv4Addr::new(r[i + 12], r[i + 13], r[i + 14], r[i + 15]));
            i += 16;
        }
        assert_eq!(i, r.len());
        (flags & 0xf, ancount, ips, ttls)
    }

    #[test]
    fn the_name_gets_every_listed_address_with_a_one_second_ttl() {
        let ips = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
        let q = query(7, "Proxies.Rehearse", TYPE_A);
        let r = answer(&q, "proxies.rehearse", &ips).unwrap();
        assert_eq!(&r[..2], &7u16.to_be_bytes(), "same id");
        assert_eq!(read(&r, q.len()), (0, 2, ips.to_vec(), vec![1, 1]));
    }

    #[test]
    fn other_types_have_no_data_and_other_names_do_not_exist() {
        let ips = [Ipv4Addr::new(127, 0, 0, 2)];
        let q = query(1, "proxies.rehearse", 28); // AAAA
        let r = answer(&q, "proxies.rehearse", &ips).unwrap();
        assert_eq!(read(&r, q.len()), (0, 0, vec![], vec![]));
        let q = query(2, "other.rehearse", TYPE_A);
        let r = answer(&q, "proxies.rehearse", &ips).unwrap();
        assert_eq!(read(&r, q.len()).0, RCODE_NXDOMAIN);
        // No replica yet: the name exists with no address.
        let q = query(3, "proxies.rehearse", TYPE_A);
        let r = answer(&q, "proxies.rehearse", &[]).unwrap();
        assert_eq!(read(&r, q.len()), (0, 0, vec![], vec![]));
    }

    #[test]
    fn responses_and_garbage_are_not_answered_as_queries() {
        let mut q = query(1, "proxies.rehearse", TYPE_A);
        q[2] |= 0x80;
        assert!(answer(&q, "proxies.rehearse", &[]).is_none());
        assert!(answer(&[0; 5], "proxies.rehearse", &[]).is_none());
        let truncated = &query(1, "proxies.rehearse", TYPE_A)[..20];
        let r = answer(truncated, "proxies.rehearse", &[]).unwrap();
        assert_eq!(u16::from_be_bytes([r[2], r[3]]) & 0xf, RCODE_FORMERR);
    }

    #[test]
    fn a_real_resolver_sees_changes_within_the_ttl() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dns = Dns::start("proxies.rehearse").unwrap();
        dns.add(Ipv4Addr::new(127, 0, 0, 3));
        dns.add(Ipv4Addr::new(127, 0, 0, 2));
        let source = cutover_controller::plan::discover::parse_discover(
            "proxies.rehearse:9901",
            vec![dns.addr],
        )
        .unwrap();
        let urls = rt.block_on(source.urls()).unwrap();
        assert_eq!(urls, ["http://127.0.0.2:9901", "http://127.0.0.3:9901"]);
        dns.remove(Ipv4Addr::new(127, 0, 0, 2));
        let urls = rt.block_on(source.urls()).unwrap();
        assert_eq!(urls, ["http://127.0.0.3:9901"]);
    }
}
