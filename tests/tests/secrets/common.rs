//! What the secrets tests share: the fixtures and their decoded values, the
//! `cutover` binary run with a clean environment, and the check that no value
//! ever shows in its output.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
pub use cutover_tests::Run;
use cutover_tests::{OpenBao, binary};
use serde_json::{Value, json};

/// Values the tests themselves put into stores; they must not show either.
pub const TEST_VALUES: [&str; 4] = [
    "Tampered-pw-55Yz",
    "Bad64vAlue",
    "Rotated-graf-Hd82",
    "new-api-key-Jw61Rt",
];

/// The path of a fixture file.
pub fn fixture(name: &str) -> String {
    format!("{}/fixtures/secrets/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `--from` for the main fixture.
pub fn from_fixture() -> String {
    format!("k8s-json:{}", fixture("secrets.json"))
}

/// One Secret of the fixture, decoded.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub namespace: String,
    pub name: String,
    pub kind: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Fixed {
    pub fn path(&self, prefix: &str) -> String {
        format!("{prefix}/{}/{}", self.namespace, self.name)
    }

    pub fn managed(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "kubernetes.io/service-account-token" | "helm.sh/release.v1"
        )
    }

    /// The entry as a store should hold it: UTF-8 values as they are, other
    /// bytes base64-encoded.
    pub fn stored(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .data
            .iter()
            .map(|(k, v)| {
                let text = String::from_utf8(v.clone()).unwrap_or_else(|_| STANDARD.encode(v));
                (k.clone(), json!(text))
            })
            .collect();
        Value::Object(map)
    }
}

/// Every Secret in `secrets.json`, managed ones included.
pub fn fixture_secrets() -> Vec<Fixed> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("secrets.json")).unwrap()).unwrap();
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Fixed {
            namespace: s["metadata"]["namespace"].as_str().unwrap().into(),
            name: s["metadata"]["name"].as_str().unwrap().into(),
            kind: s["type"].as_str().unwrap().into(),
            data: s["data"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), STANDARD.decode(v.as_str().unwrap()).unwrap()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The Secrets sync copies by default.
pub fn copied() -> Vec<Fixed> {
    fixture_secrets()
        .into_iter()
        .filter(|s| !s.managed())
        .collect()
}

/// Every string that would reveal a fixture value: each value, its base64 form,
/// each distinctive line of a multi-line value, the credentials inside the
/// dockerconfigjson, and the values the tests write themselves.
pub fn sensitive() -> Vec<String> {
    let mut out: Vec<String> = TEST_VALUES.iter().map(|s| s.to_string()).collect();
    for s in fixture_secrets() {
        for v in s.data.values() {
            out.push(STANDARD.encode(v));
            match String::from_utf8(v.clone()) {
                Ok(text) => {
                    out.push(text.clone());
                    out.extend(
                        text.lines()
                            .filter(|l| l.len() >= 12 && !l.starts_with("-----"))
                            .map(str::to_string),
                    );
                }
                // The printable tail of a binary value.
                Err(_) => out.push(String::from_utf8_lossy(&v[4..]).into_owned()),
            }
        }
    }
    out.push("Reg-pw-93kfLqWx".into());
    // Short, generic values ("shop", the namespace file of a token) are not
    // secrets and do appear as names.
    out.retain(|v| v.len() >= 8);
    out.sort();
    out.dedup();
    out
}

/// No fixture or test value appears in `text`. On failure the text is shown
/// with the values masked, so the place shows and the value does not.
#[track_caller]
pub fn assert_no_values(text: &str) {
    let values = sensitive();
    let found: Vec<usize> = (0..values.len())
        .filter(|&i| text.contains(&values[i]))
        .collect();
    if !found.is_empty() {
        let mut masked = text.to_string();
        for i in &found {
            masked = masked.replace(&values[*i], &format!("<value #{i}>"));
        }
        panic!(
            "{} secret value(s) leaked into output:\n{masked}",
            found.len()
        );
    }
}

/// Runs `cutover ARGS` with only `env` added to a cleaned environment (no
/// inherited Vault or AWS settings), feeding `stdin`, and checks that nothing it
/// printed holds a value.
pub async fn cutover_with(args: &[&str], env: &[(&str, &str)], stdin: Option<Vec<u8>>) -> Run {
    let bin = binary("cutover");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(bin);
        cmd.args(&args);
        for var in [
            "VAULT_TOKEN",
            "VAULT_NAMESPACE",
            "VAULT_CACERT",
            "BAO_CACERT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_CA_BUNDLE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run cutover");
        if let Some(bytes) = stdin {
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
        }
        let out = child.wait_with_output().expect("wait for cutover");
        Run::from(out)
    })
    .await
    .unwrap();
    assert_no_values(&run.all());
    run
}

pub async fn cutover(args: &[&str]) -> Run {
    cutover_with(args, &[], None).await
}

/// Starts an OpenBao dev server off the async runtime.
pub async fn bao(token: &str) -> OpenBao {
    let token = token.to_string();
    tokio::task::spawn_blocking(move || OpenBao::start(&token))
        .await
        .unwrap()
}

/// `sync --from FIXTURE --to BAO --to-token-file … EXTRA`.
pub async fn sync_fixture(bao: &OpenBao, extra: &[&str]) -> Run {
    with_token(bao, "sync", &from_fixture(), extra).await
}

/// `cutover secrets CMD --from FROM --to BAO --to-token-file … EXTRA`.
pub async fn with_token(bao: &OpenBao, cmd: &str, from: &str, extra: &[&str]) -> Run {
    let to = bao.location();
    let token = bao.token_file();
    let mut args = vec![
        "secrets",
        cmd,
        "--from",
        from,
        "--to",
        &to,
        "--to-token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cutover(&args).await
}

/// The SHA-256 prefix `cutover` shows for `value`, computed independently.
pub fn sha8(value: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child.stdin.take().unwrap().write_all(value).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..8].to_string()
}

/// The actions of a `sync --json` report, by path.
pub fn actions(report: &Value) -> BTreeMap<String, String> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
