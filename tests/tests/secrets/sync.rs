//! `sync` and `verify` from the kubectl JSON fixture into a real OpenBao: what is
//! written, what is skipped, that a second sync adds no KV version, and that a
//! value changed behind cutover's back is named without being shown.

use http::Method;
use serde_json::json;

use crate::common::{
    Fixed, Run, actions, bao, copied, cutover, cutover_with, fixture, fixture_secrets,
    from_fixture, sha8, sync_fixture, with_token,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_copies_every_secret_and_a_second_sync_writes_nothing() {
    let bao = bao("root-sync-Zr81").await;
    let report = sync_fixture(&bao, &["--json"]).await.ok().json();
    let want = copied();
    assert_eq!(report["created"], want.len());
    assert!(actions(&report).values().all(|a| a == "create"), "{report}");

    // Every Secret is one KV v2 map at cutover/NAMESPACE/NAME, every key kept.
    for s in &want {
        let got = bao.kv_get(&s.path("cutover")).await;
        assert_eq!(got, Some(s.stored()), "{}", s.path("cutover"));
        assert_eq!(
            bao.kv_metadata(&s.path("cutover")).await["current_version"],
            1
        );
    }
    // Several namespaces, and the Kubernetes-managed ones left out.
    let namespaces: std::collections::BTreeSet<&str> =
        want.iter().map(|s| s.namespace.as_str()).collect();
    assert_eq!(namespaces.len(), 3, "{namespaces:?}");
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["secret"].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        ["shop/build-robot-token", "shop/sh.helm.release.v1.shop.v3"]
    );
    for s in fixture_secrets().iter().filter(|s| s.managed()) {
        assert_eq!(bao.kv_get(&s.path("cutover")).await, None);
    }
    // Types that matter to the new cluster are reported with each entry.
    let tls = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["secret"] == "shop/shop-tls")
        .unwrap();
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(tls["keys"], json!(["tls.crt", "tls.key"]));

    let verify = cutover_token(&bao, "verify", &["--json"]).await.ok().json();
    assert_eq!(verify["passed"], true);
    assert_eq!(verify["matched"], want.len());

    // Second sync: everything unchanged, and no new version anywhere.
    let before = bao.kv_metadata("cutover/shop/db-credentials").await;
    let again = sync_fixture(&bao, &["--json"]).await.ok().json();
    assert_eq!(again["unchanged"], want.len());
    assert!(
        actions(&again).values().all(|a| a == "unchanged"),
        "{again}"
    );
    for s in &want {
        assert_eq!(
            bao.kv_metadata(&s.path("cutover")).await["current_version"],
            1
        );
    }
    let after = bao.kv_metadata("cutover/shop/db-credentials").await;
    assert_eq!(before["updated_time"], after["updated_time"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_value_fails_verify_by_name_and_sync_repairs_it() {
    let bao = bao("root-change-Qp27").await;
    sync_fixture(&bao, &[]).await.ok();
    let db = copied()
        .into_iter()
        .find(|s| s.name == "db-credentials")
        .unwrap();
    let mut tampered = db.stored();
    tampered["password"] = json!("Tampered-pw-55Yz");
    bao.kv_put("cutover/shop/db-credentials", tampered).await;

    let text = cutover_token(&bao, "verify", &[]).await.fails();
    assert!(
        text.stdout
            .contains("changed       cutover/shop/db-credentials"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("key \"password\" differs"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("MISMATCH"), "{}", text.stdout);

    let report = cutover_token(&bao, "verify", &["--json"])
        .await
        .fails()
        .json();
    assert_eq!(report["passed"], false);
    let changed = &report["changed"][0];
    assert_eq!(changed["path"], "cutover/shop/db-credentials");
    let key = &changed["keys"][0];
    assert_eq!(key["key"], "password");
    assert_eq!(key["change"], "changed");
    assert_eq!(key["source"]["len"], db.data["password"].len());
    assert_eq!(key["source"]["sha256"], sha8(&db.data["password"]));
    assert_eq!(key["target"]["len"], "Tampered-pw-55Yz".len());
    assert_eq!(key["target"]["sha256"], sha8(b"Tampered-pw-55Yz"));
    assert_eq!(changed["keys"].as_array().unwrap().len(), 1);

    // Sync writes exactly that entry back, as one new version.
    let fixed = sync_fixture(&bao, &["--json"]).await.ok().json();
    assert_eq!(fixed["updated"], 1);
    assert_eq!(actions(&fixed)["cutover/shop/db-credentials"], "update");
    assert_eq!(fixed["unchanged"], copied().len() - 1);
    let meta = bao.kv_metadata("cutover/shop/db-credentials").await;
    assert_eq!(meta["current_version"], 3);
    assert_eq!(
        bao.kv_get("cutover/shop/db-credentials").await,
        Some(db.stored())
    );
    cutover_token(&bao, "verify", &[]).await.ok();

    // An entry nobody accounts for, and one deleted: extra and missing.
    bao.kv_put("cutover/old/leftover", json!({ "k": "v" }))
        .await;
    let (status, _) = bao
        .api(
            Method::DELETE,
            "secret/metadata/cutover/web/session-keys",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let report = cutover_token(&bao, "verify", &["--json"])
        .await
        .fails()
        .json();
    assert_eq!(report["missing"], json!(["cutover/web/session-keys"]));
    assert_eq!(report["extra"], json!(["cutover/old/leftover"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_create_update_unchanged_and_writes_nothing() {
    let bao = bao("root-dry-Hn51").await;
    let plan = sync_fixture(&bao, &["--dry-run", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(plan["dry_run"], true);
    assert!(actions(&plan).values().all(|a| a == "create"), "{plan}");
    let (status, _) = bao
        .api(Method::GET, "secret/metadata/cutover?list=true", None)
        .await;
    assert_eq!(status, 404, "a dry run wrote something");
    let text = sync_fixture(&bao, &["--dry-run"]).await.ok();
    assert!(
        text.stdout
            .contains("would create  cutover/shop/db-credentials"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("dry run: nothing was written"),
        "{}",
        text.stdout
    );

    sync_fixture(&bao, &[]).await.ok();
    // The source moves on: one value rotated, one Secret added.
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("secrets.json")).unwrap()).unwrap();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let items = doc["items"].as_array_mut().unwrap();
    let grafana = items
        .iter_mut()
        .find(|s| s["metadata"]["name"] == "grafana-admin")
        .unwrap();
    grafana["data"]["admin-password"] = json!(b64("Rotated-graf-Hd82"));
    items.push(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": "new-api", "namespace": "web" },
        "data": { "key": b64("new-api-key-Jw61Rt") }
    }));
    std::fs::write(&changed, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let from = format!("k8s-json:{}", changed.display());
    let plan = with_token(&bao, "sync", &from, &["--dry-run", "--json"])
        .await
        .ok()
        .json();
    let acts = actions(&plan);
    assert_eq!(acts["cutover/monitoring/grafana-admin"], "update");
    assert_eq!(acts["cutover/web/new-api"], "create");
    assert_eq!(acts["cutover/shop/db-credentials"], "unchanged");
    assert_eq!(plan["updated"], 1);
    assert_eq!(plan["created"], 1);
    let entry = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["secret"] == "monitoring/grafana-admin")
        .unwrap();
    assert_eq!(entry["changes"][0]["key"], "admin-password");
    assert_eq!(
        bao.kv_metadata("cutover/monitoring/grafana-admin").await["current_version"],
        1
    );
    assert_eq!(bao.kv_get("cutover/web/new-api").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_a_custom_prefix() {
    let bao = bao("root-stdin-Wm3p").await;
    let token = bao.token_file();
    let to = bao.location();
    let input = std::fs::read(fixture("secrets.json")).unwrap();
    let args = [
        "secrets",
        "sync",
        "--from",
        "k8s-json:-",
        "--to",
        &to,
        "--prefix",
        "/apps/old-cluster/",
        "--json",
    ];
    let report = cutover_with(&args, &[("VAULT_TOKEN", &bao.token)], Some(input))
        .await
        .ok()
        .json();
    assert_eq!(report["prefix"], "apps/old-cluster");
    assert_eq!(report["created"], copied().len());
    let s: &Fixed = &copied()[0];
    assert_eq!(
        bao.kv_get(&s.path("apps/old-cluster")).await,
        Some(s.stored())
    );
    // verify with the same prefix passes; with the default one, all is missing.
    let verify = |prefix: &'static str| {
        let (to, token) = (to.clone(), token.clone());
        async move {
            cutover(&[
                "secrets",
                "verify",
                "--from",
                &from_fixture(),
                "--to",
                &to,
                "--to-token-file",
                token.to_str().unwrap(),
                "--prefix",
                prefix,
                "--json",
            ])
            .await
        }
    };
    verify("apps/old-cluster").await.ok();
    let report = verify("cutover").await.fails().json();
    assert_eq!(report["missing"].as_array().unwrap().len(), copied().len());
}

/// `cutover secrets CMD --from FIXTURE --to BAO …`.
async fn cutover_token(bao: &cutover_tests::OpenBao, cmd: &str, extra: &[&str]) -> Run {
    with_token(bao, cmd, &from_fixture(), extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_gate_syncs_then_verifies() {
    use cutover_controller::secrets::{SecretsPlan, gate};
    let bao = bao("root-gate-Rq5").await;
    let plan = SecretsPlan {
        from: from_fixture(),
        to: bao.location(),
        prefix: Some("gate".into()),
        from_token_file: None,
        to_token_file: Some(bao.token_file()),
        include_managed: false,
    };
    let report = gate(&plan).await.unwrap();
    assert_eq!(report.sync.created, copied().len());
    assert!(report.verify.passed);
    assert_eq!(report.verify.matched, copied().len());
    let s = &copied()[0];
    assert_eq!(bao.kv_get(&s.path("gate")).await, Some(s.stored()));
    // Run again (a resumed plan): nothing written, the gate still passes.
    let again = gate(&plan).await.unwrap();
    assert_eq!(again.sync.unchanged, copied().len());
    assert_eq!(bao.kv_metadata(&s.path("gate")).await["current_version"], 1);

    let broken = SecretsPlan {
        to_token_file: Some("/nonexistent/token".into()),
        ..plan
    };
    let e = gate(&broken).await.unwrap_err().to_string();
    assert!(e.contains("target token file /nonexistent/token"), "{e}");
}
