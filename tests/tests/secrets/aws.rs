//! The AWS Secrets Manager target against moto in server mode. moto is an
//! emulator, not AWS: no real AWS endpoint can be reached here. It checks the
//! API calls, the JSON layout and that a second sync adds no version; it does
//! not check signatures (the SigV4 code is unit-tested against AWS's published
//! example instead).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use crate::common::{actions, copied, cutover_with, from_fixture};
use cutover_tests::{eventually, find_on_path, free_port, http_json};

const REGION: &str = "eu-west-1";

/// A `moto_server` process on a free loopback port; killed on drop.
struct Moto {
    url: String,
    child: Child,
}

impl Moto {
    async fn start() -> Moto {
        let bin = find_on_path("moto_server").unwrap_or_else(|| {
            panic!(
                "moto's `moto_server` is not on PATH; install it with \
                 `pip install \"moto[server]\"` (see controller/README-secrets.md)"
            )
        });
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run moto_server");
        let moto = Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "moto_server to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
        })
        .await;
        moto
    }

    /// One Secrets Manager call, unsigned apart from the credential scope moto
    /// reads the region from.
    async fn call(&self, action: &str, body: Value) -> (u16, Value) {
        let target = format!("secretsmanager.{action}");
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/20240101/{REGION}/secretsmanager/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        http_json(
            Method::POST,
            &format!("{}/", self.url),
            &[
                ("x-amz-target", target.as_str()),
                ("content-type", "application/x-amz-json-1.1"),
                ("authorization", auth.as_str()),
            ],
            Some(body),
        )
        .await
    }

    async fn value(&self, name: &str) -> Option<Value> {
        let (status, body) = self
            .call("GetSecretValue", json!({ "SecretId": name }))
            .await;
        (status == 200)
            .then(|| serde_json::from_str(body["SecretString"].as_str().unwrap()).unwrap())
    }

    async fn versions(&self, name: &str) -> usize {
        let (status, body) = self
            .call(
                "ListSecretVersionIds",
                json!({ "SecretId": name, "IncludeDeprecated": true }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["Versions"].as_array().unwrap().len()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_secrets_manager_through_the_moto_emulator() {
    let moto = Moto::start().await;
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDCUTOVERTEST"),
        ("AWS_SECRET_ACCESS_KEY", "moto-does-not-check-this"),
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
    ];
    let target = format!("aws-sm:{REGION}");
    let from = from_fixture();
    let run = |cmd: &'static str, extra: &'static [&'static str]| {
        let mut args = vec![
            "secrets",
            cmd,
            "--from",
            from.as_str(),
            "--to",
            target.as_str(),
        ];
        args.extend_from_slice(extra);
        async move { cutover_with(&args, &env, None).await }
    };

    let report = run("sync", &["--json"]).await.ok().json();
    assert_eq!(report["created"], copied().len(), "{report}");
    assert!(report["target"].as_str().unwrap().contains(&moto.url));
    // One secret per Kubernetes Secret, holding every key as one JSON object.
    for s in copied() {
        let name = s.path("cutover");
        assert_eq!(moto.value(&name).await, Some(s.stored()), "{name}");
        assert_eq!(moto.versions(&name).await, 1);
    }
    assert_eq!(moto.value("cutover/shop/build-robot-token").await, None);
    run("verify", &[]).await.ok();

    // The second sync writes nothing: still one version each.
    let again = run("sync", &["--json"]).await.ok().json();
    assert!(
        actions(&again).values().all(|a| a == "unchanged"),
        "{again}"
    );
    for s in copied() {
        assert_eq!(moto.versions(&s.path("cutover")).await, 1);
    }

    // Changed behind cutover's back: verify names the key, sync puts it back.
    let name = "cutover/shop/db-credentials";
    let mut tampered = moto.value(name).await.unwrap();
    tampered["password"] = json!("Tampered-pw-55Yz");
    let (status, body) = moto
        .call(
            "PutSecretValue",
            json!({ "SecretId": name, "SecretString": tampered.to_string() }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let report = run("verify", &["--json"]).await.fails().json();
    assert_eq!(report["changed"][0]["path"], name);
    assert_eq!(report["changed"][0]["keys"][0]["key"], "password");
    let report = run("sync", &["--json"]).await.ok().json();
    assert_eq!(report["updated"], 1);
    assert_eq!(moto.versions(name).await, 3);
    run("verify", &[]).await.ok();

    // A dry run after that writes nothing either.
    let plan = run("sync", &["--dry-run", "--json"]).await.ok().json();
    assert_eq!(plan["unchanged"], copied().len());
    assert_eq!(moto.versions(name).await, 3);
}
