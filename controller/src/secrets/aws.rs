//! AWS Secrets Manager over its JSON API, signed with SigV4. An entry is one
//! secret named `{prefix}/{namespace}/{name}` whose SecretString is a JSON object
//! of every key. Credentials come from the environment; `AWS_ENDPOINT_URL`
//! (or `AWS_ENDPOINT_URL_SECRETS_MANAGER`) points it elsewhere, e.g. at an
//! emulator.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};

use super::Data;
use super::error::{Role, SecretsError};
use super::http::Http;
use super::sigv4::{self, Credentials, Signed};
use super::store::{Remote, data_from_json, data_to_json};

pub(crate) struct AwsSm {
    region: String,
    /// Base URL, no trailing slash.
    endpoint: String,
    /// Whether `endpoint` came from the environment rather than the region.
    custom_endpoint: bool,
    host: String,
    creds: Credentials,
    role: Role,
    http: Http,
}

/// An error answer: the exception's short name and its message.
struct Refusal {
    kind: String,
    message: String,
    status: u16,
}

impl AwsSm {
    pub fn new(region: &str, role: Role) -> Result<AwsSm, SecretsError> {
        let custom = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|e| !e.is_empty());
        let endpoint = custom
            .clone()
            .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let store = format!("aws-sm:{region}");
        let bad = |reason: String| SecretsError::Location {
            role,
            spec: endpoint.clone(),
            reason,
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| bad(format!("AWS endpoint URL: {e}")))?;
        let host = match uri.authority() {
            Some(a) if matches!(uri.scheme_str(), Some("http" | "https")) => a.to_string(),
            _ => return Err(bad("AWS endpoint URL: use http(s)://HOST[:PORT]".into())),
        };
        let creds = Credentials::from_env().ok_or(SecretsError::NoAwsCredentials {
            role,
            store: store.clone(),
        })?;
        let ca = std::env::var_os("AWS_CA_BUNDLE").map(std::path::PathBuf::from);
        let http = Http::new(ca.as_deref()).map_err(|detail| SecretsError::Store {
            role,
            store,
            what: "set up the HTTP client".into(),
            detail,
        })?;
        Ok(AwsSm {
            region: region.to_string(),
            endpoint,
            custom_endpoint: custom.is_some(),
            host,
            creds,
            role,
            http,
        })
    }

    pub fn name(&self) -> String {
        if self.custom_endpoint {
            format!("aws-sm:{} at {}", self.region, self.endpoint)
        } else {
            format!("aws-sm:{}", self.region)
        }
    }

    fn fail(&self, what: &str, detail: String) -> SecretsError {
        SecretsError::Store {
            role: self.role,
            store: self.name(),
            what: what.to_string(),
            detail,
        }
    }

    fn refused(&self, what: &str, r: &Refusal) -> SecretsError {
        let hint = match r.kind.as_str() {
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "AccessDeniedException"
            | "ExpiredTokenException" => "; check the AWS credentials and their policy",
            _ => "",
        };
        self.fail(
            what,
            format!("{}: {} (HTTP {}){hint}", r.kind, r.message, r.status),
        )
    }

    /// One signed call of `action`; `Ok(Err(_))` is the service's refusal.
    async fn call(
        &self,
        action: &str,
        body: &Value,
        what: &str,
    ) -> Result<Result<Value, Refusal>, SecretsError> {
        let payload = body.to_string();
        let mut headers = BTreeMap::new();
        headers.insert(
            "content-type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        );
        headers.insert("host".to_string(), self.host.clone());
        headers.insert("x-amz-date".to_string(), sigv4::amz_date(SystemTime::now()));
        headers.insert(
            "x-amz-target".to_string(),
            format!("secretsmanager.{action}"),
        );
        if let Some(t) = &self.creds.session_token {
            headers.insert("x-amz-security-token".to_string(), t.expose().to_string());
        }
        let auth = sigv4::authorization(
            &self.creds,
            &Signed {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                payload: payload.as_bytes(),
                region: &self.region,
                service: "secretsmanager",
            },
        );
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/", self.endpoint))
            .header("authorization", auth);
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| self.fail(what, e.to_string()))?;
        let reply = self
            .http
            .send(req)
            .await
            .map_err(|d| self.fail(what, format!("cannot reach the endpoint: {d}")))?;
        let value: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if reply.status.is_success() {
            return Ok(Ok(value));
        }
        let kind = value["__type"]
            .as_str()
            .or_else(|| value["code"].as_str())
            .unwrap_or("error");
        // `__type` may be namespaced: "com.amazonaws…#ResourceNotFoundException".
        let kind = kind.rsplit('#').next().unwrap_or(kind).to_string();
        let message = value["message"]
            .as_str()
            .or_else(|| value["Message"].as_str())
            .unwrap_or("no message")
            .to_string();
        Ok(Err(Refusal {
            kind,
            message,
            status: reply.status.as_u16(),
        }))
    }

    /// The credentials are accepted and the endpoint answers.
    pub async fn check(&self) -> Result<(), SecretsError> {
        let what = "check the credentials (ListSecrets)";
        match self
            .call("ListSecrets", &json!({ "MaxResults": 1 }), what)
            .await?
        {
            Ok(_) => Ok(()),
            Err(r) => Err(self.refused(what, &r)),
        }
    }

    /// Every secret name under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        let folder = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let what = format!("list {folder}");
        let mut names = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut body = json!({ "MaxResults": 100 });
            if !folder.is_empty() {
                body["Filters"] = json!([{ "Key": "name", "Values": [folder] }]);
            }
            if let Some(t) = &next {
                body["NextToken"] = json!(t);
            }
            let page = match self.call("ListSecrets", &body, &what).await? {
                Ok(v) => v,
                Err(r) => return Err(self.refused(&what, &r)),
            };
            for s in page["SecretList"].as_array().into_iter().flatten() {
                // The name filter matches case-insensitively: keep exact prefixes.
                if let Some(n) = s["Name"].as_str().filter(|n| n.starts_with(&folder)) {
                    names.push(n.to_string());
                }
            }
            next = page["NextToken"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub async fn read(&self, name: &str) -> Result<Remote, SecretsError> {
        let what = format!("read {name}");
        let value = match self
            .call("GetSecretValue", &json!({ "SecretId": name }), &what)
            .await?
        {
            Ok(v) => v,
            Err(r) if r.kind == "ResourceNotFoundException" => {
                return Ok(Remote {
                    data: None,
                    version: 0,
                });
            }
            Err(r) => return Err(self.refused(&what, &r)),
        };
        let Some(text) = value["SecretString"].as_str() else {
            return Err(self.fail(
                &what,
                "holds a binary secret; cutover stores a JSON object of keys".into(),
            ));
        };
        let data = data_from_json(text).map_err(|d| self.fail(&what, d))?;
        Ok(Remote {
            data: Some(data),
            version: 0,
        })
    }

    /// Creates the secret, or adds a version when it `exists`.
    pub async fn write(&self, name: &str, data: &Data, exists: bool) -> Result<(), SecretsError> {
        let what = format!("write {name}");
        // The raw API asks callers for an idempotency token; a fresh one per write,
        // never derived from the value (a hash of it would be visible to anyone
        // who may list versions).
        let token = format!("{:032x}", rand::random::<u128>());
        let (action, body) = if exists {
            (
                "PutSecretValue",
                json!({ "SecretId": name, "SecretString": data_to_json(data), "ClientRequestToken": token }),
            )
        } else {
            (
                "CreateSecret",
                json!({
                    "Name": name,
                    "SecretString": data_to_json(data),
                    "ClientRequestToken": token,
                    "Description": "Kubernetes Secret copied by cutover",
                }),
            )
        };
        match self.call(action, &body, &what).await? {
            Ok(_) => Ok(()),
            Err(r) => Err(self.refused(&what, &r)),
        }
    }
}
