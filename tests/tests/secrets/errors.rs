//! Bad input gets a clear error that names the store or input and the entry:
//! a bad or missing token, an unreachable store, a missing or KV v1 mount,
//! malformed JSON, data that is not base64. None shows a value.

use http::Method;
use serde_json::json;

use crate::common::{bao, cutover, cutover_with, fixture, from_fixture, with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_name_the_side_the_store_and_the_cause() {
    let bao = bao("root-errors-Kd93").await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let to = bao.location();
    let from = from_fixture();

    let run = cutover(&[
        "secrets",
        "sync",
        "--from",
        &from,
        "--to",
        &to,
        "--to-token-file",
        wrong.to_str().unwrap(),
    ])
    .await
    .fails();
    assert!(
        run.stderr.contains(&format!("target {to}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("refused the token"), "{}", run.stderr);
    assert!(
        !run.all().contains("not-the-token"),
        "the token is not shown"
    );

    let run = cutover(&["secrets", "verify", "--from", &from, "--to", &to])
        .await
        .fails();
    assert!(
        run.stderr.contains("no token") && run.stderr.contains("--to-token-file"),
        "{}",
        run.stderr
    );

    let missing = dir.path().join("absent-token");
    let run = cutover(&[
        "secrets",
        "sync",
        "--from",
        &from,
        "--to",
        &to,
        "--to-token-file",
        missing.to_str().unwrap(),
    ])
    .await
    .fails();
    assert!(
        run.stderr.contains("target token file") && run.stderr.contains("absent-token"),
        "{}",
        run.stderr
    );

    // Nothing listens on a fresh port once its listener is closed.
    let closed = cutover_tests::free_port();
    let nowhere = format!("vault:http://127.0.0.1:{closed}#secret");
    let run = cutover_with(
        &[
            "secrets", "sync", "--from", &from, "--to", &nowhere, "--json",
        ],
        &[("VAULT_TOKEN", "root-errors-Kd93")],
        None,
    )
    .await
    .fails();
    let err = run.json();
    assert_eq!(err["side"], "target");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains(&nowhere) && msg.contains("cannot reach"),
        "{msg}"
    );

    let run = with_token(&bao, "sync", &from, &[]).await;
    run.ok();
    let no_mount = format!("vault:{}#nope", bao.url);
    let token = bao.token_file();
    let run = cutover(&[
        "secrets",
        "verify",
        "--from",
        &from,
        "--to",
        &no_mount,
        "--to-token-file",
        token.to_str().unwrap(),
    ])
    .await
    .fails();
    assert!(
        run.stderr.contains("mount nope") && run.stderr.contains("-version=2"),
        "{}",
        run.stderr
    );

    let (status, body) = bao
        .api(
            Method::POST,
            "sys/mounts/kv1",
            Some(json!({ "type": "kv", "options": { "version": "1" } })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let v1 = format!("vault:{}#kv1", bao.url);
    let run = cutover(&[
        "secrets",
        "sync",
        "--from",
        &from,
        "--to",
        &v1,
        "--to-token-file",
        token.to_str().unwrap(),
    ])
    .await
    .fails();
    assert!(run.stderr.contains("KV version 2"), "{}", run.stderr);

    // A wrong source token names the source.
    let run = cutover(&[
        "secrets",
        "sync",
        "--from",
        &bao.location(),
        "--from-token-file",
        wrong.to_str().unwrap(),
        "--to",
        &v1,
        "--to-token-file",
        token.to_str().unwrap(),
    ])
    .await
    .fails();
    assert!(
        run.stderr.contains(&format!("source {}", bao.location())),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_errors_name_the_input_the_secret_and_the_key() {
    // These fail before any store is contacted.
    let to = "vault:http://127.0.0.1:9#secret";
    let env = [("VAULT_TOKEN", "unused")];
    let run = |from: String| async move {
        cutover_with(
            &["secrets", "sync", "--from", &from, "--to", to],
            &env,
            None,
        )
        .await
    };

    let bad = fixture("bad-base64.json");
    let r = run(format!("k8s-json:{bad}")).await.fails();
    assert!(
        r.stderr.contains(&format!("source k8s-json:{bad}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("secret shop/broken"), "{}", r.stderr);
    assert!(
        r.stderr.contains("\"api-key\"") && r.stderr.contains("not valid base64"),
        "{}",
        r.stderr
    );

    let truncated = fixture("truncated.json");
    let r = run(format!("k8s-json:{truncated}")).await.fails();
    assert!(
        r.stderr.contains("truncated.json") && r.stderr.contains("not valid JSON (line"),
        "{}",
        r.stderr
    );

    let r = run("k8s-json:/nonexistent/secrets.json".into())
        .await
        .fails();
    assert!(
        r.stderr.contains("/nonexistent/secrets.json") && r.stderr.contains("cannot read"),
        "{}",
        r.stderr
    );

    let r = cutover_with(
        &["secrets", "sync", "--from", "k8s-json:-", "--to", to],
        &env,
        Some(br#"{"kind":"ConfigMap","data":{}}"#.to_vec()),
    )
    .await
    .fails();
    assert!(
        r.stderr.contains("stdin") && r.stderr.contains("ConfigMap"),
        "{}",
        r.stderr
    );

    // Bad usage is clap's exit 2 and names the flag.
    let r = cutover(&["secrets", "sync", "--from", "s3:bucket", "--to", to]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--from"), "{}", r.stderr);

    // AWS without credentials says which variables to set.
    let r = cutover(&[
        "secrets",
        "sync",
        "--from",
        &from_fixture(),
        "--to",
        "aws-sm:eu-west-1",
    ])
    .await
    .fails();
    assert!(
        r.stderr.contains("target aws-sm:eu-west-1") && r.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        r.stderr
    );
}
