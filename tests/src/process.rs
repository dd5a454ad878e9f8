//! A harness backend in its own process, for tests that kill a backend the way a
//! node failure would (SIGKILL: the kernel closes every socket it held).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::binaries::binary;

/// A `cutover-test-backend` process; killed on drop.
pub struct BackendProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl BackendProcess {
    /// Starts a backend process that answers with `name` on a free loopback port.
    pub fn start(name: &str) -> BackendProcess {
        let mut child = Command::new(binary("cutover-test-backend"))
            .args(["--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cutover-test-backend");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the backend's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from cutover-test-backend: {line:?}"));
        BackendProcess { addr, child }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
