//! TLS to PostgreSQL: a source whose server has `ssl = on` with a certificate for
//! `localhost` signed by a CA made here, and refuses plain TCP. Each `sslmode`
//! behaves as libpq's, a certificate that does not verify fails naming the host
//! and why, and the subscription's replication stream is encrypted too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_controller::{Db, Dsn, Side};
use cutover_tests::{Postgres, SUPERUSER_PASSWORD, eventually};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::common::{Pair, cutover};

/// The files a test's DSNs name: the server's CA and an unrelated one.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Starts a pair whose `old` requires TLS with a certificate for `localhost` only.
async fn tls_pair() -> (Pair, Certs) {
    let pair = Pair::start().await;
    let issuer = ca("cutover test CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The subscriber's server (another OS user when the tests run as root) reads
    // the CA file named in the subscription's CONNECTION.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let certs = Certs { dir };
    std::fs::write(certs.ca(), issuer.pem()).unwrap();
    std::fs::write(certs.other_ca(), ca("someone else's CA").pem()).unwrap();
    // A client certificate for role certuser, which may log in only with it.
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "certuser");
    let client = client.signed_by(&client_key, &issuer).unwrap();
    std::fs::write(certs.client_cert(), client.pem()).unwrap();
    std::fs::write(certs.client_key(), client_key.serialize_pem()).unwrap();
    std::fs::set_permissions(certs.client_key(), std::fs::Permissions::from_mode(0o600)).unwrap();
    pair.old
        .sql("postgres", "CREATE ROLE certuser LOGIN SUPERUSER")
        .await;
    pair.old
        .enable_tls(&cert.pem(), &key.serialize_pem(), &issuer.pem())
        .await;
    (pair, certs)
}

/// The superuser's DSN for `old` on database `app` via `host`, with `tls` added.
fn dsn(pg: &Postgres, host: &str, tls: &str) -> String {
    format!(
        "host={host} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=app {tls}",
        pg.port
    )
}

fn root(p: &Path) -> String {
    format!("sslrootcert={}", p.display())
}

/// `cutover db check` with `source` as the source and the plain `new` as target.
async fn check(pair: &Pair, source: String) -> cutover_tests::Run {
    cutover(
        &["db", "check"],
        &[
            ("CUTOVER_SOURCE".into(), source),
            ("CUTOVER_TARGET".into(), pair.new.dsn("app")),
        ],
    )
    .await
}

#[tokio::test]
async fn each_sslmode_connects_or_fails_as_libpq_would() {
    let (pair, certs) = tls_pair().await;
    let ca = root(&certs.ca());
    let ok = [
        ("localhost", format!("sslmode=verify-full {ca}")),
        // SCRAM bound to the TLS session, or no connection.
        (
            "localhost",
            format!("sslmode=verify-full {ca} channel_binding=require"),
        ),
        ("localhost", "sslmode=require".to_string()),
        ("127.0.0.1", "sslmode=require".to_string()),
        // The default (prefer) tries TLS first.
        ("127.0.0.1", String::new()),
        // verify-ca checks the chain, not the name.
        ("127.0.0.1", format!("sslmode=verify-ca {ca}")),
    ];
    for (host, tls) in ok {
        let run = check(&pair, dsn(&pair.old, host, &tls)).await;
        assert!(
            run.code == 0 && run.stdout.contains("ready: no blockers"),
            "host={host} {tls}: {}",
            run.all()
        );
    }

    // A client certificate instead of a password.
    let cert_login = format!(
        "host=localhost port={} user=certuser dbname=app sslmode=verify-full {ca} \
         sslcert={} sslkey={}",
        pair.old.port,
        certs.client_cert().display(),
        certs.client_key().display()
    );
    let run = check(&pair, cert_login).await;
    assert!(
        run.code == 0 && run.stdout.contains("ready: no blockers"),
        "client certificate: {}",
        run.all()
    );

    let refused = |run: &cutover_tests::Run| {
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(
            run.stderr.contains("source database (host="),
            "{}",
            run.stderr
        );
    };
    // The server refuses plain TCP.
    let run = check(&pair, dsn(&pair.old, "127.0.0.1", "sslmode=disable")).await;
    refused(&run);
    assert!(
        run.stderr.contains("sslmode=disable): cannot connect")
            && run.stderr.contains("no encryption"),
        "{}",
        run.stderr
    );
    // A CA that did not sign the server's certificate.
    let other = root(&certs.other_ca());
    let run = check(
        &pair,
        dsn(
            &pair.old,
            "localhost",
            &format!("sslmode=verify-full {other}"),
        ),
    )
    .await;
    refused(&run);
    assert!(
        run.stderr
            .contains("server localhost: certificate has an unknown issuer")
            && run.stderr.contains("other-ca.pem"),
        "{}",
        run.stderr
    );
    // The certificate names localhost, not 127.0.0.1.
    let run = check(
        &pair,
        dsn(&pair.old, "127.0.0.1", &format!("sslmode=verify-full {ca}")),
    )
    .await;
    refused(&run);
    assert!(
        run.stderr
            .contains("server 127.0.0.1: certificate is not valid for host 127.0.0.1"),
        "{}",
        run.stderr
    );
    // A root file that is not there.
    let run = check(
        &pair,
        dsn(
            &pair.old,
            "localhost",
            "sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
        ),
    )
    .await;
    refused(&run);
    assert!(
        run.stderr
            .contains("cannot set up TLS: sslrootcert /nonexistent/ca.pem"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn sync_from_a_tls_source_encrypts_the_replication_stream() {
    let (pair, certs) = tls_pair().await;
    let source = dsn(
        &pair.old,
        "127.0.0.1",
        &format!("sslmode=verify-ca {}", root(&certs.ca())),
    );
    let run = cutover(
        &["db", "sync"],
        &[
            ("CUTOVER_SOURCE".into(), source.clone()),
            ("CUTOVER_TARGET".into(), pair.new.dsn("app")),
        ],
    )
    .await
    .ok();
    assert!(run.stdout.contains("ready"), "{}", run.all());

    // The subscription's walsender on the source, as the source sees it.
    let db = Db::connect(&Dsn::parse(Side::Source, &source).unwrap())
        .await
        .unwrap();
    let ssl: Vec<bool> = eventually(Duration::from_secs(30), "a walsender", || async {
        let rows = db
            .client()
            .query(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
                &[],
            )
            .await
            .unwrap();
        let ssl: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
        (!ssl.is_empty()).then_some(ssl)
    })
    .await;
    assert!(ssl.iter().all(|s| *s), "{ssl:?}");
    // And the controller's own session.
    let own: bool = db
        .client()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(own);
}

/// The controller's copy opens its replication session (`psql`) and its copy
/// sessions with the same TLS settings: against a source that takes TLS only,
/// it copies instead of falling back to the subscription's copy.
#[tokio::test]
async fn the_controllers_copy_keeps_to_tls() {
    let (pair, certs) = tls_pair().await;
    let source = dsn(
        &pair.old,
        "localhost",
        &format!("sslmode=verify-full {}", root(&certs.ca())),
    );
    let run = cutover(
        &["db", "sync", "--copy", "controller"],
        &[
            ("CUTOVER_SOURCE".into(), source),
            ("CUTOVER_TARGET".into(), pair.new.dsn("app")),
        ],
    )
    .await
    .ok();
    let copy = run
        .stdout
        .lines()
        .find(|l| l.starts_with("initial copy"))
        .unwrap_or_else(|| panic!("no copy line: {}", run.all()));
    assert!(
        copy.contains("created") && copy.contains("under the snapshot"),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("ready"), "{}", run.all());
}
