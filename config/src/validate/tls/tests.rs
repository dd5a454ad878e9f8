//! `[[certificates]]`, `listen.https` and `proxy.control_socket`, with certificate
//! files made for each test in a temp dir.

use std::path::{Path, PathBuf};

use crate::diag::{ConfigError, Diagnostic};
use crate::model::Config;

const BASE: &str = r#"
[listen]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"

[backends.old]
addrs = ["127.0.0.1:9001"]

[[routes]]
hosts = ["*"]
weights = { old = 100 }
"#;

/// Writes a self-signed certificate for `names` and its key as `{stem}.crt` and
/// `{stem}.key` in `dir`.
fn issue(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (crt, key)
}

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.join("cutover.toml"))
}

fn errors_in(dir: &Path, text: &str) -> Vec<Diagnostic> {
    match parse_in(dir, text) {
        Err(ConfigError::Invalid(d)) => d,
        other => panic!("expected errors, got {other:?}"),
    }
}

fn entry(hosts: &str, cert: &str, key: &str) -> String {
    format!("\n[[certificates]]\nhosts = {hosts}\ncert = {cert:?}\nkey = {key:?}\n")
}

#[test]
fn certificates_load_with_relative_paths_and_lower_case_hosts() {
    let dir = tempfile::tempdir().unwrap();
    issue(
        dir.path(),
        "shop",
        &["shop.example.com", "*.shop.example.com"],
    );
    issue(dir.path(), "fallback", &["fallback.example.net"]);
    let text = format!(
        "{BASE}{}{}",
        entry(
            r#"["Shop.Example.com", "*.shop.example.com"]"#,
            "shop.crt",
            "shop.key"
        ),
        entry(r#"["*"]"#, "fallback.crt", "fallback.key"),
    );
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.listen.https, Some("127.0.0.1:8443".parse().unwrap()));
    assert_eq!(c.certificates.len(), 2);
    assert_eq!(
        c.certificates[0].hosts,
        ["shop.example.com", "*.shop.example.com"]
    );
    assert_eq!(c.certificates[0].cert, dir.path().join("shop.crt"));
    assert_eq!(c.certificates[1].hosts, ["*"]);
    assert_eq!(c.certificates[0].certified.cert.len(), 1);
    // The key never shows up in a debug dump of the config.
    let dump = format!("{c:?}");
    assert!(dump.contains("shop.crt"), "{dump}");
    assert!(!dump.contains("PRIVATE KEY"), "{dump}");
}

#[test]
fn unreadable_and_malformed_files_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = issue(dir.path(), "shop", &["shop.example.com"]);
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate\n").unwrap();
    let secret = std::fs::read_to_string(&key).unwrap();
    std::fs::write(
        dir.path().join("bad.key"),
        secret.replace("\n-----END", "@@\n-----END"),
    )
    .unwrap();
    let text = format!(
        "{BASE}{}{}",
        entry(r#"["shop.example.com"]"#, "missing.crt", "shop.key"),
        entry(r#"["b.example.com"]"#, "garbage.crt", "bad.key"),
    );
    let errs = errors_in(dir.path(), &text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 3, "{shown:#?}");
    assert_eq!(errs[0].path, "certificates[0].cert");
    assert!(errs[0].message.contains("missing.crt"), "{}", errs[0]);
    assert!(errs[0].message.starts_with("cannot read"), "{}", errs[0]);
    assert_eq!(errs[1].path, "certificates[1].cert");
    assert!(errs[1].message.contains("garbage.crt"), "{}", errs[1]);
    assert_eq!(errs[2].path, "certificates[1].key");
    assert!(errs[2].message.contains("bad.key"), "{}", errs[2]);
    // file:line:col points at the value.
    assert_eq!(
        errs[0].file,
        dir.path().join("cutover.toml").display().to_string()
    );
    assert!(errs[0].line > 0 && errs[0].col > 0);
    // Nothing of the key's content is quoted.
    let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    for s in &shown {
        assert!(!s.contains(&body[..16]), "{s}");
    }
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), "a", &["a.example.com"]);
    issue(dir.path(), "b", &["a.example.com"]);
    let text = format!("{BASE}{}", entry(r#"["a.example.com"]"#, "a.crt", "b.key"));
    let errs = errors_in(dir.path(), &text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "certificates[0].key");
    assert!(errs[0].message.contains("a.crt"), "{}", errs[0]);
}

#[test]
fn hosts_must_be_names_the_certificate_covers_and_appear_once() {
    let dir = tempfile::tempdir().unwrap();
    issue(
        dir.path(),
        "shop",
        &["shop.example.com", "*.shop.example.com"],
    );
    issue(dir.path(), "other", &["other.example.com"]);
    let text = format!(
        "{BASE}{}{}",
        entry(
            r#"["shop.example.com", "*.shop.example.com", "api.example.com", "10.0.0.1", "a*.b.com"]"#,
            "shop.crt",
            "shop.key"
        ),
        entry(
            r#"["shop.example.com", "other.example.com"]"#,
            "other.crt",
            "other.key"
        ),
    );
    let errs = errors_in(dir.path(), &text);
    let paths: Vec<&str> = errs.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "certificates[0].hosts[2]",
            "certificates[0].hosts[3]",
            "certificates[0].hosts[4]",
            "certificates[1].hosts[0]",
        ],
        "{errs:#?}"
    );
    assert!(
        errs[0]
            .message
            .contains("not valid for \"api.example.com\""),
        "{}",
        errs[0]
    );
    assert!(
        errs[3]
            .message
            .contains("already served by certificates[0]"),
        "{}",
        errs[3]
    );
}

#[test]
fn https_without_certificates_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let errs = errors_in(dir.path(), BASE);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "listen.https");
    assert_eq!((errs[0].line, errs[0].col), (4, 9));
}

#[test]
fn the_control_socket_defaults_to_beside_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = BASE.replace("https = \"127.0.0.1:8443\"\n", "");
    let c = parse_in(dir.path(), &plain).unwrap();
    assert_eq!(c.listen.https, None);
    assert_eq!(c.proxy.control_socket, dir.path().join("cutover.toml.sock"));

    let set = format!("{plain}\n[proxy]\ncontrol_socket = \"run/ctl.sock\"\n");
    let c = parse_in(dir.path(), &set).unwrap();
    assert_eq!(c.proxy.control_socket, dir.path().join("run/ctl.sock"));

    let long = format!(
        "{plain}\n[proxy]\ncontrol_socket = \"/{}\"\n",
        "x".repeat(120)
    );
    let errs = errors_in(dir.path(), &long);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "proxy.control_socket");
}
