//! Store to store: OpenBao to OpenBao, two dev servers with different tokens,
//! one from a token file and the other from `VAULT_TOKEN`.

use serde_json::json;

use crate::common::{actions, bao, copied, cutover, cutover_with, from_fixture, with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_to_vault_copies_verifies_and_is_idempotent() {
    let (old, new) = tokio::join!(bao("root-old-Vn38"), bao("root-new-Lp0x"));
    let prefix = "apps/old";
    with_token(&old, "sync", &from_fixture(), &["--prefix", prefix])
        .await
        .ok();

    let old_token = old.token_file();
    let (from, to) = (old.location(), new.location());
    let args = |cmd: &'static str, extra: &[&'static str]| {
        let mut a: Vec<String> = [
            "secrets",
            cmd,
            "--from",
            &from,
            "--to",
            &to,
            "--from-token-file",
            old_token.to_str().unwrap(),
            "--prefix",
            prefix,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        let token = new.token.clone();
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            cutover_with(&a, &[("VAULT_TOKEN", &token)], None).await
        }
    };

    let report = run(args("sync", &["--json"])).await.ok().json();
    assert_eq!(report["created"], copied().len(), "{report}");
    assert_eq!(report["source"], from);
    for s in copied() {
        let path = s.path(prefix);
        assert_eq!(new.kv_get(&path).await, Some(s.stored()), "{path}");
        assert_eq!(new.kv_metadata(&path).await["current_version"], 1);
    }
    run(args("verify", &[])).await.ok();
    // The Kubernetes source agrees with the copy of the copy.
    with_token(&new, "verify", &from_fixture(), &["--prefix", prefix])
        .await
        .ok();

    let again = run(args("sync", &["--json"])).await.ok().json();
    assert!(
        actions(&again).values().all(|a| a == "unchanged"),
        "{again}"
    );
    for s in copied() {
        assert_eq!(new.kv_metadata(&s.path(prefix)).await["current_version"], 1);
    }

    // A change in the source store is found by verify and carried by sync.
    let path = format!("{prefix}/monitoring/grafana-admin");
    let mut data = old.kv_get(&path).await.unwrap();
    data["admin-password"] = json!("Rotated-graf-Hd82");
    old.kv_put(&path, data.clone()).await;
    let report = run(args("verify", &["--json"])).await.fails().json();
    assert_eq!(report["changed"][0]["path"], path);
    assert_eq!(report["changed"][0]["keys"][0]["key"], "admin-password");
    let report = run(args("sync", &["--json"])).await.ok().json();
    assert_eq!(report["updated"], 1);
    assert_eq!(new.kv_get(&path).await, Some(data));

    // Entries not at PREFIX/NAMESPACE/NAME are not Secrets: listed, not copied.
    old.kv_put(&format!("{prefix}/stray"), json!({ "k": "v" }))
        .await;
    let report = run(args("sync", &["--json"])).await.ok().json();
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["secret"], format!("{prefix}/stray"));
    assert_eq!(new.kv_get(&format!("{prefix}/stray")).await, None);

    // A store cannot be its own target.
    let same = cutover(&[
        "secrets", "verify", "--from", &from, "--to", &from, "--prefix", prefix,
    ])
    .await
    .fails();
    assert!(same.stderr.contains("same store"), "{}", same.stderr);
}
