//! `[fleet]`: the replica's name, its state file and its peers.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use super::tls::base_dir;
use crate::model::{FleetSettings, Peers};
use crate::raw::RawFleet;

const DEFAULT_BOOTSTRAP: Duration = Duration::from_secs(10);
const DEFAULT_SYNC: Duration = Duration::from_secs(1);

impl Validator<'_> {
    pub(super) fn fleet(
        &mut self,
        raw: RawFleet,
        control_socket: &Path,
        file: &Path,
    ) -> FleetSettings {
        let state_file = match raw.state_file {
            None => Some(control_socket.with_extension("state.json")),
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => Some(base_dir(file).join(s.get_ref())),
        };
        let peers = match raw.peers {
            None => Peers::None,
            Some(v) => self.peers(v),
        };
        let sync_interval = self.duration(raw.sync_interval, DEFAULT_SYNC, "fleet.sync_interval");
        FleetSettings {
            name: raw
                .name
                .map(Spanned::into_inner)
                .filter(|n| !n.trim().is_empty()),
            state_file,
            peers,
            bootstrap_timeout: self.duration(
                raw.bootstrap_timeout,
                DEFAULT_BOOTSTRAP,
                "fleet.bootstrap_timeout",
            ),
            sync_interval: sync_interval.max(Duration::from_millis(100)),
        }
    }

    fn peers(&mut self, v: Spanned<toml::Value>) -> Peers {
        let fix = "use \"NAME:PORT\" (a DNS name for every replica's admin address, such as a \
                   headless Service) or a list [\"HOST:PORT\", …]";
        match v.get_ref() {
            toml::Value::String(s) if s.trim().is_empty() => Peers::None,
            toml::Value::String(s) => match host_port(s) {
                Ok((host, port)) => Peers::Dns { host, port },
                Err(e) => {
                    self.err(&v, "fleet.peers", format!("{e}; {fix}"));
                    Peers::None
                }
            },
            toml::Value::Array(list) => {
                let mut out = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    match item.as_str().map(host_port) {
                        Some(Ok((h, p))) if h.contains(':') => out.push(format!("[{h}]:{p}")),
                        Some(Ok((h, p))) => out.push(format!("{h}:{p}")),
                        Some(Err(e)) => self.err(&v, format!("fleet.peers[{i}]"), e),
                        None => self.err(
                            &v,
                            format!("fleet.peers[{i}]"),
                            format!("{item} is not a \"HOST:PORT\" string"),
                        ),
                    }
                }
                Peers::Static(out)
            }
            other => {
                let msg = format!("expected a string or a list, got {other}; {fix}");
                self.err(&v, "fleet.peers", msg);
                Peers::None
            }
        }
    }
}

/// `NAME:PORT`, `IP:PORT` or `[V6]:PORT`.
fn host_port(s: &str) -> Result<(String, u16), String> {
    let t = s.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: an IPv6 address goes in brackets, [ADDR]:PORT"))?;
        (ip, after.strip_prefix(':').unwrap_or(""))
    } else {
        t.rsplit_once(':').unwrap_or((t, ""))
    };
    if host.is_empty() || host.contains(['/', ' ']) || (host.contains(':') && !t.starts_with('[')) {
        return Err(format!("{s:?} is not HOST:PORT"));
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        format!("{s:?} needs the admin port after the name, e.g. \"{host}:9901\"")
    })?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn peers_are_host_and_port() {
        assert_eq!(
            host_port("cutover-proxy-admin.cutover.svc:9901"),
            Ok(("cutover-proxy-admin.cutover.svc".into(), 9901))
        );
        assert_eq!(host_port("[::1]:9901"), Ok(("::1".into(), 9901)));
        assert!(host_port("admin").unwrap_err().contains("admin:9901"));
        assert!(host_port("admin:0").is_err());
        assert!(host_port("::1:9901").is_err());
    }
}
