//! Running commands: `ip` for building the topology, and anything else inside a namespace
//! via `ip netns exec`.

use std::{
    ffi::OsStr,
    io,
    process::{Child, Command, ExitStatus, Output, Stdio},
};

use super::HarnessError;

/// Runs `ip <args>` and fails with the command line and stderr if it does not succeed.
pub(crate) fn ip<I, S>(args: I) -> Result<String, HarnessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(args);
    checked_output(&mut cmd)
}

/// Root and a working `ip` are what everything else needs; say so before anything fails
/// in a more confusing way.
pub(crate) fn preflight() -> Result<(), HarnessError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(HarnessError::NotRoot { euid });
    }
    ip(["-V"]).map(drop)
}

/// `cmd` rewritten as `ip netns exec <netns> <program> <args>`, keeping its environment
/// changes and working directory. Stdio is left at the defaults for the caller to set;
/// `env_clear()` on `cmd` cannot be seen and is not carried over.
pub fn netns_exec(netns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", netns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Runs `cmd` inside `netns` to completion. A non-zero exit is returned, not an error, so
/// tests can assert on failures; use [`run_in`] when success is expected.
pub fn exec_in(netns: &str, cmd: &Command) -> Result<Output, HarnessError> {
    let mut wrapped = netns_exec(netns, cmd);
    wrapped.stdin(Stdio::null());
    wrapped.output().map_err(|error| spawn_error(&wrapped, error))
}

/// Runs `cmd` inside `netns` and returns its stdout; a non-zero exit is an error carrying the
/// command line and stderr.
pub fn run_in(netns: &str, cmd: &Command) -> Result<String, HarnessError> {
    checked_output(netns_exec(netns, cmd).stdin(Stdio::null()))
}

/// Starts `cmd` inside `netns` with stdin closed and stdout/stderr inherited. For other stdio,
/// build the command with [`netns_exec`] and start it with [`Process::spawn`].
pub fn spawn_in(netns: &str, cmd: &Command) -> Result<Process, HarnessError> {
    Process::spawn(netns_exec(netns, cmd).stdin(Stdio::null()))
}

/// A running process that is killed (SIGKILL) and reaped when this guard drops.
///
/// `ip netns exec` execs the program in place, so the guarded pid is the program itself.
/// Anything it forks is not tracked here; it dies when the cluster's namespaces are torn down.
#[derive(Debug)]
pub struct Process {
    child: Child,
    command: String,
}

impl Process {
    /// Spawns `cmd` as is; combine with [`netns_exec`] to run it inside a namespace.
    pub fn spawn(cmd: &mut Command) -> Result<Self, HarnessError> {
        let child = cmd.spawn().map_err(|error| spawn_error(cmd, error))?;
        Ok(Self {
            child,
            command: command_line(cmd),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// For taking piped stdio or polling with `try_wait`.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Kills and reaps the process now, returning how it ended.
    pub fn kill(mut self) -> Result<ExitStatus, HarnessError> {
        // kill fails only if the process already exited, which is fine: wait reports how.
        let _ = self.child.kill();
        self.child.wait().map_err(|error| HarnessError::Io {
            context: format!("waiting for `{}`", self.command),
            error,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell-like rendering of `cmd` for error messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            if part.is_empty() || part.contains(|c: char| c.is_whitespace() || c == '"') {
                format!("{part:?}")
            } else {
                part.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn checked_output(cmd: &mut Command) -> Result<String, HarnessError> {
    let output = cmd.output().map_err(|error| spawn_error(cmd, error))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            command: command_line(cmd),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn spawn_error(cmd: &Command, error: io::Error) -> HarnessError {
    if error.kind() == io::ErrorKind::NotFound && cmd.get_program() == "ip" {
        HarnessError::MissingTool {
            tool: "ip",
            hint: "install iproute2",
            error,
        }
    } else {
        HarnessError::Spawn {
            command: command_line(cmd),
            error,
        }
    }
}

/// `ip -n <netns> <args>`, with `args` split on whitespace; the harness's names never
/// contain any.
pub(crate) fn ip_n(netns: &str, args: &str) -> Result<String, HarnessError> {
    ip(["-n", netns].into_iter().chain(args.split_whitespace()))
}
