//! `kubectl:CONTEXT`. No Kubernetes API server can run on this machine, so a
//! stand-in `kubectl` script first on `PATH` plays the real one: it answers the
//! exact command cutover must run with the fixture, and anything else the way
//! kubectl does for an unknown context. The OpenBao target is real.

use std::os::unix::fs::PermissionsExt;

use crate::common::{bao, copied, cutover_with, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_context_is_read_with_the_users_own_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kubectl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             if [ \"$*\" = \"get secrets -A -o json --context old-cluster\" ]; then\n\
             \x20 cat '{}'\n\
             \x20 exit 0\n\
             fi\n\
             echo \"error: context \\\"$7\\\" does not exist\" >&2\n\
             exit 1\n",
            fixture("secrets.json")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let bao = bao("root-kubectl-Yz4").await;
    let to = bao.location();
    let env = [("PATH", path.as_str()), ("VAULT_TOKEN", bao.token.as_str())];
    let report = cutover_with(
        &[
            "secrets",
            "sync",
            "--from",
            "kubectl:old-cluster",
            "--to",
            &to,
            "--json",
        ],
        &env,
        None,
    )
    .await
    .ok()
    .json();
    assert_eq!(report["source"], "kubectl:old-cluster");
    assert_eq!(report["created"], copied().len());
    for s in copied() {
        assert_eq!(bao.kv_get(&s.path("cutover")).await, Some(s.stored()));
    }
    cutover_with(
        &[
            "secrets",
            "verify",
            "--from",
            "kubectl:old-cluster",
            "--to",
            &to,
        ],
        &env,
        None,
    )
    .await
    .ok();

    let run = cutover_with(
        &["secrets", "verify", "--from", "kubectl:nope", "--to", &to],
        &env,
        None,
    )
    .await
    .fails();
    assert!(
        run.stderr.contains("source kubectl --context nope")
            && run.stderr.contains("context \"nope\" does not exist"),
        "{}",
        run.stderr
    );

    // No kubectl at all: the error says so.
    let run = cutover_with(
        &[
            "secrets",
            "verify",
            "--from",
            "kubectl:old-cluster",
            "--to",
            &to,
        ],
        &[
            ("PATH", "/nonexistent"),
            ("VAULT_TOKEN", bao.token.as_str()),
        ],
        None,
    )
    .await
    .fails();
    assert!(run.stderr.contains("cannot run kubectl"), "{}", run.stderr);
}
