//! Crash points for the test suite: with `CUTOVER_CRASH_AT=NAME` in its
//! environment, the controller exits at once when it reaches the point `NAME`, as
//! a SIGKILL would leave it (no undo, no state saved, connections cut). The
//! switchover has `before-fence`, `after-fence` and `after-drop`; the controller's
//! initial copy has `during-copy` (after its first part).
//!
//! Pause points stand in for a controller that stalls (a slow disk, a paused VM):
//! with `CUTOVER_PAUSE_AT=NAME:DURATION` it waits `DURATION` at the point `NAME`.
//! The switchover has `after-hold` (every replica holds; nothing drained yet).

/// True if `CUTOVER_FAIL_AT` (points separated by commas) lists this point: the
/// step there then fails as if its database had answered with an error. The
/// switchover has `commit-answer-lost` (the point of no return committed, its
/// answer lost with the connection) and `restore-write-access` (the undo cannot
/// lift the old writer's block).
pub fn fail_point(name: &str) -> bool {
    std::env::var("CUTOVER_FAIL_AT").is_ok_and(|v| v.split(',').any(|p| p == name))
}

/// Exits the process with status 137 if `CUTOVER_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var("CUTOVER_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("cutover: crash point {name} reached (CUTOVER_CRASH_AT): exiting at once");
        std::process::exit(137);
    }
}

/// Waits if `CUTOVER_PAUSE_AT` is `name:DURATION` (e.g. `after-hold:3s`).
pub async fn pause_point(name: &str) {
    let Ok(v) = std::env::var("CUTOVER_PAUSE_AT") else {
        return;
    };
    let Some((point, d)) = v.split_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    match cutover_api::duration::parse_duration(d) {
        Ok(d) => {
            eprintln!("cutover: pause point {name} reached (CUTOVER_PAUSE_AT): waiting {d:?}");
            tokio::time::sleep(d).await;
        }
        Err(e) => eprintln!("cutover: CUTOVER_PAUSE_AT={v}: {e}"),
    }
}
