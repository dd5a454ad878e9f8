//! The programs a rehearsal starts beside itself, `cutover-proxy` and
//! `cutover-load`, are the running executable: the `cutover` binary (the `cli/`
//! package) carries both and runs them through its hidden `proxy-process` and
//! `load-process` subcommands. So `cargo run --release --bin cutover -- rehearse`
//! builds once, and a rehearsal always runs the proxy and load generator that were
//! built with it. A rehearsal therefore runs only inside the `cutover` binary.

use std::path::PathBuf;
use std::process::Command;

/// The running executable cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// The current executable's path is unknown.
    #[error("cannot find the cutover executable: {0}")]
    CurrentExe(#[source] std::io::Error),
}

/// One program a rehearsal starts: an executable and the hidden subcommand that
/// selects the program inside it.
#[derive(Debug, Clone)]
pub struct Program {
    path: PathBuf,
    subcommand: &'static str,
    /// The program's own name, for logs and errors.
    pub name: &'static str,
}

impl Program {
    /// A command that runs the program; add its arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(self.subcommand);
        cmd
    }

    /// How the program is started, for errors: `/path/cutover proxy-process`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.path.display(), self.subcommand)
    }
}

/// The two programs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub proxy: Program,
    pub load: Program,
}

/// The programs inside the running `cutover` executable.
pub fn locate() -> Result<Binaries, BinariesError> {
    let path = std::env::current_exe().map_err(BinariesError::CurrentExe)?;
    Ok(Binaries {
        proxy: Program {
            path: path.clone(),
            subcommand: "proxy-process",
            name: "cutover-proxy",
        },
        load: Program {
            path,
            subcommand: "load-process",
            name: "cutover-load",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_runs_its_subcommand_of_this_executable() {
        let bins = locate().unwrap();
        let cmd = bins.proxy.command();
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["proxy-process"]);
        assert_eq!(cmd.get_program(), std::env::current_exe().unwrap());
        assert!(bins.load.describe().ends_with(" load-process"));
    }
}
