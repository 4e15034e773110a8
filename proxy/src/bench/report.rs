//! The versioned report `rudder-proxy bench` writes (`report.json`); its fields are
//! documented in `SCHEMA.md` beside this file. Bump [`SCHEMA_VERSION`] when a field changes
//! meaning or goes away (adding one does not).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::machine::{Capabilities, Machine};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub rudder_version: String,
    /// The exact command line (argv).
    pub command: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub machine: Machine,
    pub capabilities: Capabilities,
    pub options: Options,
    /// Suites and modes not run, and why.
    pub refused: Vec<Refusal>,
    /// Suites that started and failed.
    pub failed: Vec<Failure>,
    /// Per suite that ran, its own report (see SCHEMA.md).
    pub suites: BTreeMap<String, serde_json::Value>,
    /// Other files written beside this one (tables, plots).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub suites: Vec<String>,
    /// Empty: each suite's defaults.
    pub sizes: Vec<usize>,
    /// Empty: every mode.
    pub modes: Vec<String>,
    pub rounds: usize,
    pub warmup: bool,
    pub cpu: Option<usize>,
    pub runs: u32,
    pub reps: usize,
    pub settle_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub suite: String,
    /// None: the whole suite.
    pub mode: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Some(m) => write!(f, "{} {m}: {}; skipped", self.suite, self.reason),
            None => write!(f, "{}: {}; skipped", self.suite, self.reason),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub suite: String,
    pub error: String,
}

impl Report {
    /// The header of `report.md`: the machine and what was not run.
    pub fn header(&self) -> String {
        let m = &self.machine;
        let mut t = format!(
            "# rudder-proxy bench\n\n`{}` on {} ({} CPUs: {}, {:.1} GiB), kernel {}, started {}, {:.0} s.\n",
            self.command.join(" "),
            m.hostname,
            m.cores,
            m.cpu_model,
            m.memory_bytes as f64 / f64::from(1u32 << 30),
            m.kernel_release,
            self.started_at,
            self.duration_s
        );
        for r in &self.refused {
            t += &format!("\n- refused: {r}");
        }
        for f in &self.failed {
            t += &format!("\n- FAILED: {}: {}", f.suite, f.error);
        }
        t.push('\n');
        t
    }
}
