//! `render`: the YAML is parsed back with an independent YAML reader and every
//! document's fields are checked against the fixture.

use yaml_rust2::{Yaml, YamlLoader};

use crate::common::{assert_no_values, bao, copied, cutover, from_fixture, with_token};

fn load(path: &std::path::Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_no_values(&text);
    let mut docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}\n{text}", path.display()));
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs.remove(0)
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_writes_one_external_secret_per_secret_and_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gitops");
    let run = cutover(&[
        "secrets",
        "render",
        "--from",
        &from_fixture(),
        "--store",
        "vault-backend",
        "--out",
        out.to_str().unwrap(),
        "--to",
        "vault:https://vault.new.internal:8200#secret",
        "--json",
    ])
    .await
    .ok();
    let report = run.json();
    let want = copied();
    assert_eq!(report["files"].as_array().unwrap().len(), want.len() + 1);

    for s in &want {
        let doc = load(&out.join(&s.namespace).join(format!("{}.yaml", s.name)));
        let what = s.path("cutover");
        assert_eq!(
            str_of(&doc["apiVersion"], "apiVersion"),
            "external-secrets.io/v1"
        );
        assert_eq!(str_of(&doc["kind"], "kind"), "ExternalSecret");
        assert_eq!(str_of(&doc["metadata"]["name"], "name"), s.name);
        assert_eq!(
            str_of(&doc["metadata"]["namespace"], "namespace"),
            s.namespace
        );
        let spec = &doc["spec"];
        assert_eq!(str_of(&spec["refreshInterval"], "refreshInterval"), "1h");
        assert_eq!(
            str_of(&spec["secretStoreRef"]["kind"], "store kind"),
            "ClusterSecretStore"
        );
        assert_eq!(
            str_of(&spec["secretStoreRef"]["name"], "store name"),
            "vault-backend"
        );
        assert_eq!(str_of(&spec["target"]["name"], "target name"), s.name);
        assert_eq!(
            str_of(&spec["target"]["creationPolicy"], "creationPolicy"),
            "Owner"
        );
        let template_type = spec["target"]["template"]["type"].as_str();
        if s.kind == "Opaque" {
            assert!(
                spec["target"]["template"].is_badvalue(),
                "{what}: no template for Opaque"
            );
        } else {
            assert_eq!(template_type, Some(s.kind.as_str()), "{what}: type kept");
        }
        if s.data.is_empty() {
            // The operator wants data or dataFrom: an empty Secret extracts its entry.
            assert!(spec["data"].is_badvalue(), "{what}");
            let extract = &spec["dataFrom"][0]["extract"]["key"];
            assert_eq!(str_of(extract, "dataFrom.extract.key"), what);
        }
        let data = spec["data"].as_vec().map(Vec::as_slice).unwrap_or_default();
        let keys: Vec<&str> = data
            .iter()
            .map(|d| str_of(&d["secretKey"], "secretKey"))
            .collect();
        let want_keys: Vec<&str> = s.data.keys().map(String::as_str).collect();
        assert_eq!(keys, want_keys, "{what}");
        for d in data {
            let key = str_of(&d["secretKey"], "secretKey");
            assert_eq!(str_of(&d["remoteRef"]["key"], "remoteRef.key"), what);
            assert_eq!(str_of(&d["remoteRef"]["property"], "property"), key);
            let binary = String::from_utf8(s.data[key].clone()).is_err();
            let decoding = d["remoteRef"]["decodingStrategy"].as_str();
            assert_eq!(decoding, binary.then_some("Base64"), "{what} {key}");
        }
    }
    // Types the new cluster depends on are all there.
    let kinds: std::collections::BTreeSet<&str> = want.iter().map(|s| s.kind.as_str()).collect();
    assert!(
        kinds.contains("kubernetes.io/tls") && kinds.contains("kubernetes.io/dockerconfigjson")
    );
    assert!(
        want.iter().any(|s| s.data.is_empty()),
        "the fixture has a Secret without keys"
    );
    // Nothing for the Secrets Kubernetes manages.
    assert!(!out.join("shop/build-robot-token.yaml").exists());
    assert!(!out.join("shop/sh.helm.release.v1.shop.v3.yaml").exists());

    let store = load(&out.join("cluster-secret-store.yaml"));
    assert_eq!(
        str_of(&store["apiVersion"], "apiVersion"),
        "external-secrets.io/v1"
    );
    assert_eq!(str_of(&store["kind"], "kind"), "ClusterSecretStore");
    assert_eq!(str_of(&store["metadata"]["name"], "name"), "vault-backend");
    let vault = &store["spec"]["provider"]["vault"];
    assert_eq!(
        str_of(&vault["server"], "server"),
        "https://vault.new.internal:8200"
    );
    assert_eq!(str_of(&vault["path"], "path"), "secret");
    assert_eq!(str_of(&vault["version"], "version"), "v2");
    assert!(!vault["auth"]["kubernetes"].is_badvalue());

    // Rendering again gives the same bytes (stable for a GitOps diff).
    let first = std::fs::read(out.join("shop/shop-tls.yaml")).unwrap();
    cutover(&[
        "secrets",
        "render",
        "--from",
        &from_fixture(),
        "--store",
        "vault-backend",
        "--out",
        out.to_str().unwrap(),
        "--to",
        "vault:https://vault.new.internal:8200#secret",
    ])
    .await
    .ok();
    assert_eq!(
        std::fs::read(out.join("shop/shop-tls.yaml")).unwrap(),
        first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_for_aws_and_from_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let aws = dir.path().join("aws");
    cutover(&[
        "secrets",
        "render",
        "--from",
        &from_fixture(),
        "--store",
        "aws-sm",
        "--out",
        aws.to_str().unwrap(),
        "--to",
        "aws-sm:eu-west-1",
        "--prefix",
        "prod",
    ])
    .await
    .ok();
    let store = load(&aws.join("cluster-secret-store.yaml"));
    let provider = &store["spec"]["provider"]["aws"];
    assert_eq!(str_of(&provider["service"], "service"), "SecretsManager");
    assert_eq!(str_of(&provider["region"], "region"), "eu-west-1");
    let doc = load(&aws.join("shop/db-credentials.yaml"));
    assert_eq!(
        str_of(&doc["spec"]["data"][0]["remoteRef"]["key"], "key"),
        "prod/shop/db-credentials"
    );

    // From a store: the ExternalSecrets point at the entries it holds.
    let bao = bao("root-render-Tz8q").await;
    with_token(&bao, "sync", &from_fixture(), &[]).await.ok();
    let out = dir.path().join("from-store");
    let token = bao.token_file();
    cutover(&[
        "secrets",
        "render",
        "--from",
        &bao.location(),
        "--from-token-file",
        token.to_str().unwrap(),
        "--store",
        "bao",
        "--out",
        out.to_str().unwrap(),
    ])
    .await
    .ok();
    for s in copied() {
        let doc = load(&out.join(&s.namespace).join(format!("{}.yaml", s.name)));
        assert_eq!(str_of(&doc["metadata"]["name"], "name"), s.name);
    }
    let store = load(&out.join("cluster-secret-store.yaml"));
    assert_eq!(
        str_of(&store["spec"]["provider"]["vault"]["server"], "server"),
        bao.url
    );
}
