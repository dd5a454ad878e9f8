//! The Kubernetes manifests, the Argo CD Application, the alert rules and the
//! Dockerfile, checked offline by `deploy/validate.py` (Kubernetes JSON schemas
//! from the PyPI package kubernetes-validate, small schemas for the custom
//! resources, and every port, path, name and label referenced across files), and
//! the ConfigMap's `cutover.toml` by `cutover-proxy --check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cutover_tests::binary;
use yaml_rust2::YamlLoader;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn validate(root: &Path) -> Output {
    let out = Command::new("python3")
        .arg(repo().join("deploy/validate.py"))
        .arg("--root")
        .arg(root)
        .output()
        .expect("run python3 (scripts/install-deps.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "{stderr}\nrun scripts/install-deps.sh (pip packages kubernetes-validate, PyYAML)"
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of what validate.py reads, to break on purpose.
fn copy_of_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo().join("deploy"))
        .arg(repo().join("Dockerfile"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let s = std::fs::read_to_string(&path).unwrap();
    assert!(s.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, s.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_manifests_pass_offline_validation() {
    let out = validate(&repo());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ExternalSecret",
        "Application",
        "PrometheusRule",
    ] {
        assert!(t.contains(kind), "{kind} not validated: {t}");
    }
}

#[test]
fn validation_catches_broken_manifests() {
    let dir = copy_of_repo();
    let root = dir.path();
    // One break per kind of check: a schema, a custom resource, cross-file references.
    edit(
        root,
        "deploy/kubernetes/deployment.yaml",
        "revisionHistoryLimit: 5",
        "revisionHistoryLimit: 5\n  replica: 3",
    );
    edit(
        root,
        "deploy/kubernetes/deployment.yaml",
        "terminationGracePeriodSeconds: 45",
        "terminationGracePeriodSeconds: 30",
    );
    edit(
        root,
        "deploy/kubernetes/deployment.yaml",
        "mountPath: /etc/cutover/config\n",
        "mountPath: /etc/cutover/config\n              subPath: cutover.toml\n",
    );
    edit(
        root,
        "deploy/kubernetes/externalsecret.yaml",
        "secretKey: token",
        "secretKey: admin-token",
    );
    edit(
        root,
        "deploy/argocd/application.yaml",
        "prune: true",
        "prune: false",
    );
    edit(
        root,
        "deploy/prometheus/alerts.yaml",
        "severity: warning",
        "severity: loud",
    );
    edit(
        root,
        "deploy/kubernetes/service.yaml",
        "app.kubernetes.io/component: admin",
        "app.kubernetes.io/component: admn",
    );
    edit(root, "Dockerfile", "EXPOSE 8080 9901", "EXPOSE 8080 9090");
    let out = validate(root);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for expected in [
        "'replica' was unexpected",
        "terminationGracePeriodSeconds 30 must exceed preStop 10 s + proxy.grace 25 s",
        "no subPath",
        "admin.token_file must be one of",
        "prune: True was expected",
        "'loud' is not one of",
        "must select the headless admin Service",
        "EXPOSE [8080, 9090]",
    ] {
        assert!(t.contains(expected), "{expected:?} not reported:\n{t}");
    }
}

/// The ConfigMap's `cutover.toml`.
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&yaml).unwrap();
    docs[0]["data"]["cutover.toml"]
        .as_str()
        .expect("data.cutover.toml")
        .to_string()
}

fn check(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(binary("cutover-proxy"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap()
}

#[test]
fn the_configmap_config_passes_cutover_proxy_check() {
    let toml = configmap_toml();
    let out = check(&toml);
    assert!(out.status.success(), "{}", text(&out));
    // The same check refuses a broken variant, so the pass above means something.
    let broken = toml.replace(
        "weights = { old = 100, new = 0 }",
        "weights = { old = 100, new = 10 }",
    );
    assert_ne!(broken, toml);
    let out = check(&broken);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("routes[0].weights"), "{}", text(&out));
}
