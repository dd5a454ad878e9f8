//! Credentials in the URLs never show: not on stdout, not on stderr, not in the
//! status file, whether the run succeeds or a password is wrong. The source
//! logs in as `default` (`--requirepass`), the target as an ACL user.

use std::time::Duration;

use cutover_tests::RedisServer;

use crate::common::{Cutover, Rng, Run, caught_up, cutover, cutover_bin, load_mixed};
use crate::compare::assert_same;

const SOURCE_PW: &str = "Src-pw-9fQ2xLr7";
const TARGET_DEFAULT_PW: &str = "Tgt-default-pw-7Hs3";
const TARGET_USER: &str = "mover";
const TARGET_PW: &str = "Tgt-acl-pw-4Wm8kZ";
const WRONG_PW: &str = "Wrong-pw-3Jd8nV";

/// No password appears in `text`; on failure the text is shown masked.
#[track_caller]
fn assert_no_password(what: &str, text: &str) {
    let secrets = [SOURCE_PW, TARGET_DEFAULT_PW, TARGET_PW, WRONG_PW];
    if secrets.iter().any(|s| text.contains(s)) {
        let masked = secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s, "<PASSWORD>"));
        panic!("a password leaked into {what}:\n{masked}");
    }
}

#[track_caller]
fn assert_quiet(run: &Run) {
    assert_no_password("stdout", &run.stdout);
    assert_no_password("stderr", &run.stderr);
}

#[test]
fn passwords_never_appear_in_output() {
    cutover_bin();
    let source =
        RedisServer::start_with(&["--requirepass", SOURCE_PW, "--notify-keyspace-events", "KA"]);
    let target = RedisServer::start_with(&["--requirepass", TARGET_DEFAULT_PW]);
    let acl = format!(">{TARGET_PW}");
    target
        .cmd(&[
            "ACL",
            "SETUSER",
            TARGET_USER,
            "on",
            &acl,
            "~*",
            "&*",
            "+@all",
        ])
        .ok();
    load_mixed(
        &mut source.conn(),
        0..300,
        3,
        300_000..900_000,
        &mut Rng::new(6),
    );
    let src = source.url_with("default", SOURCE_PW);
    let dst = target.url_with(TARGET_USER, TARGET_PW);

    let mut once = Cutover::sync(&src, &dst, &["--once"]);
    let run = once.wait(Duration::from_secs(120));
    assert_quiet(&run);
    run.ok();
    if let Some(status) = once.status_text() {
        assert_no_password("the status file", &status);
    }
    assert_same(&source, &target);

    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["cache", "verify", "--source", &src, "--target", &dst];
        args.extend_from_slice(extra);
        let run = cutover(&args);
        assert_quiet(&run);
        run.ok();
    }

    // Following, where the status file is rewritten every second.
    let mut sync = Cutover::sync(&src, &dst, &["--verify-every", "1s"]);
    source.cmd(&["SET", "after-the-copy", "1"]).ok();
    sync.until_status(Duration::from_secs(60), "caught up", caught_up);
    assert_no_password("the status file", &sync.status_text().unwrap());
    sync.interrupt();
    let run = sync.wait(Duration::from_secs(30));
    assert_quiet(&run);
    run.ok();
    assert_no_password("the status file", &sync.status_text().unwrap());

    // A wrong password on either side: exit 1, the side named, nothing shown.
    let bad_src = source.url_with("default", WRONG_PW);
    let bad_dst = target.url_with(TARGET_USER, WRONG_PW);
    for (side, s, d) in [("source", &bad_src, &dst), ("target", &src, &bad_dst)] {
        for sub in ["verify", "sync"] {
            let mut args = vec!["cache", sub, "--source", s, "--target", d];
            if sub == "sync" {
                args.push("--once");
            }
            let run = cutover(&args);
            assert_quiet(&run);
            let run = run.fails();
            assert!(
                run.stderr.to_lowercase().contains(side),
                "`cache {sub}` with a wrong {side} password does not name the {side}:\n{}",
                run.stderr
            );
        }
    }
}
