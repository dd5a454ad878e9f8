//! No value is ever printed: every command, in text and JSON, passing and
//! failing, plus every rendered file, is searched for every fixture value.
//! (Each run in the other tests is checked the same way as it happens.)

use serde_json::json;

use crate::common::{Run, bao, copied, cutover, fixture, from_fixture, sensitive, with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_a_value() {
    let (a, b) = tokio::join!(bao("root-novalue-A9"), bao("root-novalue-B7"));
    let from = from_fixture();
    let mut runs: Vec<Run> = Vec::new();
    for extra in [&[][..], &["--json"][..]] {
        for dry in [true, false] {
            let mut args = extra.to_vec();
            if dry {
                args.push("--dry-run");
            }
            runs.push(with_token(&a, "sync", &from, &args).await.ok());
        }
        runs.push(with_token(&a, "verify", &from, extra).await.ok());
    }
    // A failing verify, with every kind of difference.
    let mut data = copied()[0].stored();
    let path = copied()[0].path("cutover");
    data.as_object_mut()
        .unwrap()
        .insert("added".into(), json!("Rotated-graf-Hd82"));
    for (_, v) in data.as_object_mut().unwrap().iter_mut() {
        if v != "Rotated-graf-Hd82" {
            *v = json!("Tampered-pw-55Yz");
        }
    }
    a.kv_put(&path, data).await;
    a.kv_put("cutover/extra/thing", json!({ "k": "new-api-key-Jw61Rt" }))
        .await;
    for extra in [&[][..], &["--json"][..]] {
        runs.push(with_token(&a, "verify", &from, extra).await.fails());
        runs.push(
            with_token(&a, "sync", &from, &[extra, &["--dry-run"][..]].concat())
                .await
                .ok(),
        );
    }
    runs.push(
        with_token(&a, "sync", &from, &["--include-managed"])
            .await
            .ok(),
    );

    // Store to store, both ways of giving tokens.
    let (ta, tb) = (a.token_file(), b.token_file());
    let (la, lb) = (a.location(), b.location());
    for cmd in ["sync", "verify"] {
        for extra in [&[][..], &["--json"][..]] {
            let mut args = vec![
                "secrets",
                cmd,
                "--from",
                &la,
                "--from-token-file",
                ta.to_str().unwrap(),
                "--to",
                &lb,
                "--to-token-file",
                tb.to_str().unwrap(),
                "--include-managed",
            ];
            args.extend_from_slice(extra);
            runs.push(cutover(&args).await);
        }
    }

    // Render, and what it wrote.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for source in [from.clone(), a.location()] {
        let mut args = vec![
            "secrets",
            "render",
            "--from",
            &source,
            "--store",
            "s",
            "--out",
            out,
            "--json",
            "--include-managed",
            "--from-token-file",
            ta.to_str().unwrap(),
        ];
        runs.push(cutover(&args).await.ok());
        args.retain(|a| *a != "--json");
        runs.push(cutover(&args).await.ok());
    }
    let mut files = String::new();
    for entry in walk(dir.path()) {
        files.push_str(&std::fs::read_to_string(entry).unwrap());
    }

    // Errors, in text and JSON.
    let bad = format!("k8s-json:{}", fixture("bad-base64.json"));
    for extra in [&[][..], &["--json"][..]] {
        runs.push(with_token(&a, "sync", &bad, extra).await.fails());
    }

    let all: String = runs.iter().map(Run::all).collect::<String>() + &files;
    // The search is not vacuous: the values exist, and the store holds them.
    let values = sensitive();
    assert!(values.len() > 20, "{}", values.len());
    let stored = a.kv_get("cutover/shop/shop-tls").await.unwrap().to_string();
    assert!(values.iter().any(|v| stored.contains(v.as_str())));
    assert!(
        all.contains("cutover/shop/db-credentials"),
        "the output names entries"
    );
    for v in &values {
        assert!(
            !all.contains(v.as_str()),
            "a value ({} bytes) was printed",
            v.len()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
