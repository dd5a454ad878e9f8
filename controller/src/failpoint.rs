//! Crash points for the test suite: with `CUTOVER_CRASH_AT=NAME` in its
//! environment, the controller exits at once when it reaches the point `NAME`, as
//! a SIGKILL would leave it (no undo, no state saved, connections cut). The
//! switchover has `before-fence`, `after-fence` and `after-drop`; the controller's
//! initial copy has `during-copy` (after its first part).

/// Exits the process with status 137 if `CUTOVER_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var("CUTOVER_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("cutover: crash point {name} reached (CUTOVER_CRASH_AT): exiting at once");
        std::process::exit(137);
    }
}
