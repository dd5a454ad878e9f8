//! An `https://` store: OpenBao's dev server with the certificate its dev CA
//! signs, trusted through `VAULT_CACERT`, and refused without it.

use cutover_tests::OpenBao;

use crate::common::{copied, cutover_with, from_fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_stores_are_verified_against_the_given_ca() {
    let bao = tokio::task::spawn_blocking(|| OpenBao::start_tls("root-tls-Xq4"))
        .await
        .unwrap();
    assert!(bao.url.starts_with("https://"), "{}", bao.url);
    let ca = bao.ca_file.clone().unwrap();
    let to = bao.location();
    let from = from_fixture();
    let args = ["secrets", "sync", "--from", &from, "--to", &to, "--json"];

    let run = cutover_with(&args, &[("VAULT_TOKEN", &bao.token)], None)
        .await
        .fails();
    assert!(
        run.stderr.contains(&format!("target {to}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("certificate"), "{}", run.stderr);

    let env = [
        ("VAULT_TOKEN", bao.token.as_str()),
        ("VAULT_CACERT", ca.to_str().unwrap()),
    ];
    let report = cutover_with(&args, &env, None).await.ok().json();
    assert_eq!(report["created"], copied().len());
    let verify = ["secrets", "verify", "--from", &from, "--to", &to];
    cutover_with(&verify, &env, None).await.ok();
}
