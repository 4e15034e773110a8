use std::{fmt, io, path::PathBuf};

/// Why the harness could not build or use its namespaces.
///
/// Messages are complete on their own (command line, exit status and stderr included), and
/// `Debug` prints the same text, so `.expect()` in a test shows something readable.
#[derive(thiserror::Error)]
pub enum HarnessError {
    #[error("netns harness needs root (euid is {euid}): run the tests as root (CI does)")]
    NotRoot { euid: u32 },

    #[error("netns harness needs `{tool}` on PATH ({hint}): {error}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
        error: io::Error,
    },

    #[error("could not start `{command}`: {error}")]
    Spawn { command: String, error: io::Error },

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// A setup step failed; `step` says what the harness was building, which usually names
    /// the missing kernel feature better than the raw `ip` error does.
    #[error("netns harness could not {step}: {cause}")]
    Setup { step: String, cause: Box<HarnessError> },

    #[error("could not enter netns {netns}: {error}")]
    Enter { netns: String, error: io::Error },

    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },

    #[error("{0}")]
    OutOfRange(String),

    #[error("the cluster that owned {0} has already been dropped")]
    ClusterGone(String),

    #[error(
        "rudder-echo binary not found (tried {tried:?}); build it with \
         `cargo build -p rudder-tests --bin rudder-echo` or set RUDDER_ECHO_BIN"
    )]
    EchoBinaryNotFound { tried: Vec<PathBuf> },

    #[error("rudder-echo {name:?} in netns {netns} did not become ready: {reason}")]
    ServerNotReady {
        name: String,
        netns: String,
        reason: String,
    },

    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    pub(crate) fn setup(step: impl Into<String>) -> impl FnOnce(HarnessError) -> HarnessError {
        let step = step.into();
        move |cause| match cause {
            // Context would only bury these; they already say exactly what to do.
            HarnessError::NotRoot { .. } | HarnessError::MissingTool { .. } => cause,
            cause => HarnessError::Setup {
                step,
                cause: Box::new(cause),
            },
        }
    }
}
