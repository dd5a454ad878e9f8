//! The ledger of acknowledged writes: one JSON line per 2xx answer to a template with
//! `ledger = true`, e.g.
//!
//! ```json
//! {"request_id":"6f1c…","template":"order","status":201,"id":"1042"}
//! ```
//!
//! A write counts as acknowledged only when its whole response arrived with a 2xx status;
//! a timeout or a reset is not an acknowledgement, so the ledger never claims a write the
//! service did not confirm. Warmup writes are recorded too: they are real writes. Later
//! checks read the file back with [`read_ledger`] and look for every line in the database.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use http::header::HeaderName;

/// The ledger file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Writing failed; the run stops, since a ledger with gaps proves nothing.
    #[error("--ledger {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a ledger entry.
    #[error("ledger {}: line {line}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// The id the generator sent in the template's request-id header.
    pub request_id: String,
    /// The template's name.
    pub template: String,
    /// The 2xx status.
    pub status: u16,
    /// The id the service returned (the named header, or the JSON body's `id` field);
    /// `null` when it returned none.
    pub id: Option<String>,
}

/// An open ledger, shared by all connection tasks.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    // Held for one buffered line write: far shorter than the request that produced it, and
    // only ledger templates take it.
    out: Mutex<BufWriter<File>>,
    entries: AtomicU64,
}

impl Ledger {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<Self, LedgerError> {
        let file = File::create(path).map_err(|source| LedgerError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, file)),
            entries: AtomicU64::new(0),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines written so far.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Appends one line.
    pub fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(entry).map_err(|e| self.io(e.into()))?;
        line.push(b'\n');
        // A poisoned lock means another task panicked mid-write; the buffer itself is intact
        // (a Vec append either happened or not), so keep writing.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(&line).map_err(|e| self.io(e))?;
        self.entries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes and syncs the file, so the ledger survives a crash of the checker's host.
    pub fn finish(&self) -> Result<u64, LedgerError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.flush().map_err(|e| self.io(e))?;
        out.get_ref().sync_all().map_err(|e| self.io(e))?;
        Ok(self.entries())
    }

    fn io(&self, source: std::io::Error) -> LedgerError {
        LedgerError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The id a service returned for a write: the named header when one is configured,
/// otherwise the top-level `id` of a JSON body (a string, or a number as written).
pub fn response_id(
    headers: &HeaderMap,
    body: &[u8],
    id_header: Option<&HeaderName>,
) -> Option<String> {
    if let Some(name) = id_header {
        return headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    #[derive(serde::Deserialize)]
    struct WithId {
        id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<WithId>(body).ok()?.id? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Reads a ledger back, line by line.
pub fn read_ledger(path: &Path) -> Result<Vec<LedgerEntry>, LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut entries = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        entries.push(
            serde_json::from_str(&line).map_err(|source| LedgerError::Parse {
                path: path.to_owned(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn ids_come_from_the_body_or_a_named_header() {
        let mut headers = HeaderMap::new();
        headers.insert("location", HeaderValue::from_static("/orders/7"));
        let location = HeaderName::from_static("location");
        assert_eq!(
            response_id(&headers, b"", Some(&location)),
            Some("/orders/7".into())
        );
        assert_eq!(
            response_id(&headers, br#"{"id":"a-1","x":2}"#, None),
            Some("a-1".into())
        );
        assert_eq!(
            response_id(&headers, br#"{"id":42}"#, None),
            Some("42".into())
        );
        assert_eq!(response_id(&headers, br#"{"id":null}"#, None), None);
        assert_eq!(response_id(&headers, b"not json", None), None);
        assert_eq!(response_id(&HeaderMap::new(), b"", Some(&location)), None);
    }

    #[test]
    fn written_lines_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = Ledger::create(&path).unwrap();
        let entry = |n: u32| LedgerEntry {
            request_id: format!("req-{n}"),
            template: "order".into(),
            status: 201,
            id: n.is_multiple_of(2).then(|| n.to_string()),
        };
        for n in 0..3 {
            ledger.record(&entry(n)).unwrap();
        }
        assert_eq!(ledger.finish().unwrap(), 3);
        assert_eq!(
            read_ledger(&path).unwrap(),
            vec![entry(0), entry(1), entry(2)]
        );
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(
            first.starts_with(r#"{"request_id":"req-0","template":"order","status":201,"id":"0"}"#)
        );

        let err = Ledger::create(Path::new("/nonexistent/dir/l.jsonl")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--ledger /nonexistent/dir/l.jsonl"),
            "{err}"
        );
    }
}
