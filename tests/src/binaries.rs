//! Locates the workspace's binaries for tests, building them once per test process
//! so a test never runs a stale `cutover-proxy`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    }
}

/// The workspace package that builds binary `name`; naming it keeps the build to
/// that package, so one crate's unfinished change cannot break another's tests.
fn package_of(name: &str) -> &str {
    match name {
        "cutover" => "cutover-cli",
        "cutover-test-backend" | "cutover-demo" => "cutover-tests",
        other => other,
    }
}

/// The path of binary `name` (e.g. `cutover-proxy`) from the workspace, built in the
/// debug profile if needed. Cargo's own lock serializes concurrent test processes.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package_of(name), "--bin", name])
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
    assert!(status.success(), "cargo build --bin {name} failed");
    let path = target_dir().join("debug").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    built.insert(name.to_string(), path.clone());
    path
}
