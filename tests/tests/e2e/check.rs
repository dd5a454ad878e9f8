//! `cutover-proxy --check`.

use std::process::Command;

use cutover_tests::binary;

#[test]
fn check_lists_every_error_with_position_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[backends.old]\naddrs = [\"127.0.0.1:9001\"]\n\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 90, new = 10 }\nwrites = \"blue\"\n\n\
         [[routes]]\nhosts = [\"b.test:80\"]\nweights = { old = 100.001 }\n",
    )
    .unwrap();
    let out = Command::new(binary("cutover-proxy"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for want in [
        format!("{file}:6:29: routes[0].weights.new: unknown backend \"new\""),
        format!("{file}:7:10: routes[0].writes: unknown backend \"blue\""),
        format!("{file}:10:10: routes[1].hosts[0]: hosts are matched without the port"),
        format!("{file}:11:19: routes[1].weights.old: weight 100.001 is above 100"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("4 errors"), "{err}");
}

#[test]
fn check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        "[backends.old]\naddrs = [\"127.0.0.1:9001\"]\n[backends.new]\naddrs = [\"127.0.0.1:9002\"]\n\
         [[routes]]\nhosts = [\"a.test\"]\nweights = { old = 90, new = 10 }\n",
    )
    .unwrap();
    let out = Command::new(binary("cutover-proxy"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 backends, 1 routes)"));
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(binary("cutover-proxy"))
        .args(["--config", "/nonexistent/cutover.toml", "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cutover.toml"));
}
