//! Vault and OpenBao KV v2 over the HTTP API: check the token and the mount,
//! list, read, and write with check-and-set, so a concurrent writer is noticed
//! instead of overwritten. Only the servers' error messages reach our errors;
//! request bodies, which hold values, never do.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::error::{Role, SecretsError};
use super::http::Http;
use super::location::VaultAddr;
use super::store::Remote;
use super::{Data, SecretText};

pub(crate) struct Vault {
    addr: VaultAddr,
    token: String,
    /// Vault Enterprise / OpenBao namespace (`VAULT_NAMESPACE`).
    namespace: Option<String>,
    role: Role,
    http: Http,
}

impl Vault {
    pub fn new(addr: &VaultAddr, token: String, role: Role) -> Result<Vault, SecretsError> {
        let ca = std::env::var_os("VAULT_CACERT")
            .or_else(|| std::env::var_os("BAO_CACERT"))
            .map(PathBuf::from);
        let http = Http::new(ca.as_deref()).map_err(|detail| SecretsError::Store {
            role,
            store: addr.to_string(),
            what: "set up the HTTP client".into(),
            detail,
        })?;
        Ok(Vault {
            addr: addr.clone(),
            token,
            namespace: std::env::var("VAULT_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty()),
            role,
            http,
        })
    }

    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    fn fail(&self, what: &str, detail: String) -> SecretsError {
        SecretsError::Store {
            role: self.role,
            store: self.name(),
            what: what.to_string(),
            detail,
        }
    }

    /// One API call; `Ok` carries every status so callers can treat 404 as
    /// "absent". The body is parsed as JSON when it is JSON.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(StatusCode, Value), SecretsError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/v1/{path}", self.addr.url))
            .header("x-vault-token", &self.token)
            .header("x-vault-request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("x-vault-namespace", ns);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| self.fail(what, e.to_string()))?;
        let reply = self
            .http
            .send(req)
            .await
            .map_err(|d| self.fail(what, format!("cannot reach the server: {d}")))?;
        let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        Ok((reply.status, value))
    }

    /// The error for an unexpected status, with the server's messages.
    fn refused(&self, what: &str, status: StatusCode, body: &Value) -> SecretsError {
        let messages: Vec<&str> = body
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut detail = format!("HTTP {}", status.as_u16());
        if !messages.is_empty() {
            detail = format!("{} ({detail})", messages.join("; "));
        }
        if status == StatusCode::FORBIDDEN {
            detail.push_str("; check the token and its policy for this path");
        }
        self.fail(what, detail)
    }

    /// The token is accepted and the mount is KV version 2.
    pub async fn check(&self) -> Result<(), SecretsError> {
        let what = "check the token";
        let (status, body) = self
            .call(Method::GET, "auth/token/lookup-self", None, what)
            .await?;
        if status == StatusCode::FORBIDDEN {
            return Err(self.fail(what, "the server refused the token (HTTP 403)".into()));
        }
        if !status.is_success() {
            return Err(self.refused(what, status, &body));
        }
        let what = format!("check mount {}", self.addr.mount);
        let (status, body) = self
            .call(
                Method::GET,
                &format!("sys/internal/ui/mounts/{}", self.addr.mount),
                None,
                &what,
            )
            .await?;
        if !status.is_success() {
            let mut e = self.refused(&what, status, &body);
            if let SecretsError::Store { detail, .. } = &mut e {
                detail.push_str(&format!(
                    "; is a KV v2 engine mounted at {0}? (bao secrets enable -path={0} -version=2 kv)",
                    self.addr.mount
                ));
            }
            return Err(e);
        }
        let data = &body["data"];
        let kind = data["type"].as_str().unwrap_or("?");
        let version = data["options"]["version"].as_str().unwrap_or("1");
        if kind != "kv" || version != "2" {
            return Err(self.fail(
                &what,
                format!(
                    "the mount is {kind} (version {version}); cutover needs a KV version 2 mount"
                ),
            ));
        }
        Ok(())
    }

    /// Every entry under `prefix` (recursively), as paths relative to the mount.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        let mut found = Vec::new();
        let mut folders = vec![if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        }];
        while let Some(folder) = folders.pop() {
            let what = format!("list {folder}");
            let (status, body) = self
                .call(
                    Method::GET,
                    &format!("{}/metadata/{folder}?list=true", self.addr.mount),
                    None,
                    &what,
                )
                .await?;
            if status == StatusCode::NOT_FOUND {
                continue;
            }
            if !status.is_success() {
                return Err(self.refused(&what, status, &body));
            }
            for key in body["data"]["keys"].as_array().into_iter().flatten() {
                let Some(key) = key.as_str() else { continue };
                if key.ends_with('/') {
                    folders.push(format!("{folder}{key}"));
                } else {
                    found.push(format!("{folder}{key}"));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// The entry's current version, or its absence (never written, or the
    /// latest version deleted or destroyed).
    pub async fn read(&self, path: &str) -> Result<Remote, SecretsError> {
        let what = format!("read {path}");
        let (status, body) = self
            .call(
                Method::GET,
                &format!("{}/data/{path}", self.addr.mount),
                None,
                &what,
            )
            .await?;
        // A deleted latest version answers 404 but still reports its number,
        // which the next write's check-and-set must name.
        let version = body["data"]["metadata"]["version"].as_u64().unwrap_or(0);
        if status == StatusCode::NOT_FOUND {
            return Ok(Remote {
                data: None,
                version,
            });
        }
        if !status.is_success() {
            return Err(self.refused(&what, status, &body));
        }
        let Some(map) = body["data"]["data"].as_object() else {
            return Ok(Remote {
                data: None,
                version,
            });
        };
        let mut data = BTreeMap::new();
        for (k, v) in map {
            let Some(s) = v.as_str() else {
                return Err(self.fail(
                    &what,
                    format!(
                        "key {k:?} holds a non-string value; cutover copies string values only"
                    ),
                ));
            };
            data.insert(k.clone(), SecretText::new(s.to_string()));
        }
        Ok(Remote {
            data: Some(data),
            version,
        })
    }

    /// Writes `data` as a new version, provided the current version is still
    /// `cas` (0: the entry must not exist).
    pub async fn write(&self, path: &str, data: &Data, cas: u64) -> Result<(), SecretsError> {
        let what = format!("write {path}");
        let map: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.expose().to_string())))
            .collect();
        let body = json!({ "options": { "cas": cas }, "data": map });
        let (status, reply) = self
            .call(
                Method::POST,
                &format!("{}/data/{path}", self.addr.mount),
                Some(&body),
                &what,
            )
            .await?;
        if status.is_success() {
            return Ok(());
        }
        let mut e = self.refused(&what, status, &reply);
        if let SecretsError::Store { detail, .. } = &mut e
            && detail.contains("check-and-set")
        {
            detail.push_str("; the entry changed while cutover was writing it: run again");
        }
        Err(e)
    }
}
