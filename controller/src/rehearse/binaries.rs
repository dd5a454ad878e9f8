//! Finds the programs a rehearsal starts beside itself: `cutover-proxy` and
//! `cutover-load`, which a release ships next to `cutover` and cargo builds into the
//! same target directory. Under `cargo run` a missing one is built first (one
//! progress line), so `cargo run --bin cutover -- rehearse` works on a fresh clone;
//! anywhere else a missing one is an error that says where it looked and how to
//! build it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs a rehearsal needs.
pub const NEEDED: [&str; 2] = ["cutover-proxy", "cutover-load"];

/// A program is missing and cannot be built here.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// The current executable's path is unknown.
    #[error("cannot find the cutover executable's directory: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// Missing, and not running under cargo.
    #[error(
        "{} not found in {}: build {} with `{}` (or install them beside cutover)",
        .missing.join(" and "), .dir.display(),
        if .missing.len() == 1 { "it" } else { "them" }, build_command(*.release)
    )]
    Missing {
        missing: Vec<String>,
        dir: PathBuf,
        release: bool,
    },
    /// The build under cargo failed.
    #[error("`{command}` failed ({status}); see its output above")]
    Build { command: String, status: String },
    /// Cargo could not be started.
    #[error("cannot run cargo ({cargo}) to build {what}: {source}")]
    Cargo {
        cargo: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The paths of the two programs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub proxy: PathBuf,
    pub load: PathBuf,
}

fn build_command(release: bool) -> String {
    format!(
        "cargo build{} -p cutover-proxy --bin cutover-proxy -p cutover-load --bin cutover-load",
        if release { " --release" } else { "" }
    )
}

/// The programs next to the current executable, built first when missing and
/// running under cargo (`CARGO` and `CARGO_MANIFEST_DIR` set at run time, which
/// `cargo run` and `cargo test` do).
pub fn locate() -> Result<Binaries, BinariesError> {
    let exe = std::env::current_exe().map_err(BinariesError::CurrentExe)?;
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // cargo puts test executables in `deps/`; their siblings are one level up.
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    let release = dir.file_name().is_some_and(|n| n == "release");
    let missing = |dir: &Path| -> Vec<String> {
        NEEDED
            .iter()
            .filter(|n| !dir.join(n).is_file())
            .map(|n| n.to_string())
            .collect()
    };
    let absent = missing(&dir);
    if !absent.is_empty() {
        let cargo = std::env::var_os("CARGO");
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
        match (cargo, manifest) {
            (Some(cargo), Some(manifest)) if manifest.is_dir() => {
                build(Path::new(&cargo), &manifest, release, &absent)?;
            }
            _ => {
                return Err(BinariesError::Missing {
                    missing: absent,
                    dir,
                    release,
                });
            }
        }
        let still = missing(&dir);
        if !still.is_empty() {
            return Err(BinariesError::Missing {
                missing: still,
                dir,
                release,
            });
        }
    }
    Ok(Binaries {
        proxy: dir.join("cutover-proxy"),
        load: dir.join("cutover-load"),
    })
}

fn build(
    cargo: &Path,
    manifest: &Path,
    release: bool,
    what: &[String],
) -> Result<(), BinariesError> {
    let command = build_command(release);
    eprintln!(
        "cutover rehearse: building {} ({command}) ...",
        what.join(" and ")
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest).args(["build", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args([
        "-p",
        "cutover-proxy",
        "--bin",
        "cutover-proxy",
        "-p",
        "cutover-load",
        "--bin",
        "cutover-load",
    ]);
    let status = cmd.status().map_err(|source| BinariesError::Cargo {
        cargo: cargo.display().to_string(),
        what: what.join(" and "),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BinariesError::Build {
            command,
            status: status.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_error_names_the_dir_and_the_command() {
        let e = BinariesError::Missing {
            missing: vec!["cutover-load".into()],
            dir: PathBuf::from("/opt/cutover/bin"),
            release: true,
        };
        let text = e.to_string();
        assert!(
            text.contains("cutover-load not found in /opt/cutover/bin"),
            "{text}"
        );
        assert!(
            text.contains("cargo build --release -p cutover-proxy"),
            "{text}"
        );
    }
}
