//! Progress for long runs: a bar on a terminal, plain status lines otherwise (a CI log
//! keeps what ran without the bar's redraws).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    terminal: bool,
}

impl Progress {
    pub fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar, terminal }
    }

    /// No output at all (for tests of a suite's logic).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            terminal: true,
        }
    }

    /// A suite announces the measurements it will make.
    pub fn add_steps(&self, n: u64) {
        self.bar.inc_length(n);
    }

    /// What runs now.
    pub fn status(&self, msg: &str) {
        if self.terminal {
            self.bar.set_message(msg.to_owned());
        } else {
            eprintln!("bench: {msg}");
        }
    }

    /// One announced step is done.
    pub fn step_done(&self) {
        self.bar.inc(1);
    }

    /// A line that stays (a result, a refusal), above the bar.
    pub fn println(&self, msg: &str) {
        if self.terminal {
            self.bar.println(msg);
        } else {
            eprintln!("bench: {msg}");
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
