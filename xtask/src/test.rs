//! `cargo xtask test`: the README's test command and exactly what CI runs.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

pub fn run(extra: &[String]) -> Result<()> {
    cmd::require_root("the test suite")?;
    let start = Instant::now();
    setup::run()?;
    report_disk("at start", free_disk());
    // --show-output: the kernel and API tests print what they loaded and measured; that
    // output is the evidence a reader of the CI log wants. Doc tests are skipped: there are
    // none, and their empty summaries would close the log.
    let mut child = Command::new(env!("CARGO"))
        .args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--no-fail-fast",
            "--",
            "--show-output",
        ])
        .args(extra)
        .envs(incremental_off())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut panics = Panics::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        panics.see(&line);
        if let Some(summary) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                summary
                    .split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim()
                                .parse::<u64>()
                                .unwrap_or(0)
                        })
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    println!("xtask test: finished in {:.0}s", start.elapsed().as_secs_f64());
    report_disk("at the end", free_disk());
    panics.print();
    // The one closing line CI reads, summed over every test binary.
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Each failed test's panic message, gathered from libtest's "---- name stdout ----"
/// sections under "failures:" and repeated at the end: a CI log that is cut short keeps its
/// tail, and the causes would otherwise sit hundreds of lines up, among backtraces. With
/// --show-output the passing tests have such sections too (under "successes:"); they are
/// not failures and are left out.
#[derive(Default)]
struct Panics {
    /// The test executable whose output is being read ("proxy_e2e"), so a name says where
    /// to look.
    binary: String,
    in_failures: bool,
    current: Option<(String, Vec<String>, bool)>,
    done: Vec<(String, Vec<String>)>,
}

impl Panics {
    const LINES: usize = 8;

    fn see(&mut self, line: &str) {
        if let Some(rest) = line.trim_start().strip_prefix("Running ") {
            self.finish();
            self.in_failures = false;
            // "tests/x.rs (target/debug/deps/x-0123)": the executable's name without its
            // hash names the crate too, which "unittests src/lib.rs" does not.
            let exe = rest.rsplit_once(" (").map_or(rest, |(_, p)| p.trim_end_matches(')'));
            let file = exe.rsplit('/').next().unwrap_or(exe);
            self.binary = file.rsplit_once('-').map_or(file, |(stem, _)| stem).to_string();
            return;
        }
        if line == "failures:" || line == "successes:" || line.starts_with("test result: ") {
            self.finish();
            self.in_failures = line == "failures:";
            return;
        }
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
            self.finish();
            if self.in_failures {
                let name = match self.binary.is_empty() {
                    true => name.to_string(),
                    false => format!("{} {name}", self.binary),
                };
                self.current = Some((name, Vec::new(), false));
            }
            return;
        }
        let Some((_, lines, in_message)) = &mut self.current else {
            return;
        };
        if line.contains("panicked at ") {
            *in_message = true;
        } else if line.starts_with("stack backtrace:") || line.starts_with("note: ") {
            *in_message = false;
        }
        if *in_message && lines.len() < Self::LINES {
            lines.push(line.to_string());
        }
    }

    fn finish(&mut self) {
        if let Some((name, lines, _)) = self.current.take() {
            self.done.push((name, lines));
        }
    }

    fn print(&mut self) {
        self.finish();
        if self.done.is_empty() {
            return;
        }
        println!(
            "xtask test: {} failed test(s), with the start of each panic:",
            self.done.len()
        );
        for (name, lines) in &self.done {
            println!("  {name}");
            for line in lines {
                println!("      {line}");
            }
        }
    }
}

/// A suite run builds everything once: incremental caches would only double the build's
/// disk use (they were two thirds of it). A developer who wants them sets the variable.
fn incremental_off() -> Option<(&'static str, &'static str)> {
    std::env::var_os("CARGO_INCREMENTAL")
        .is_none()
        .then_some(("CARGO_INCREMENTAL", "0"))
}

/// Bytes free on the disk that holds the build, as `df` reports them.
fn free_disk() -> Option<u64> {
    let out = Command::new("df").args(["--output=avail", "-B1", "."]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
}

/// A full disk fails tests in ways that name the symptom (a store that cannot write, an
/// etcd that panics), so the log says how much room there was.
fn report_disk(when: &str, free: Option<u64>) {
    const LOW: u64 = 20 << 30;
    match free {
        Some(bytes) => {
            println!(
                "xtask test: {:.1} GiB free on the build's disk {when}",
                bytes as f64 / (1u64 << 30) as f64
            );
            if bytes < LOW {
                println!(
                    "xtask test: WARNING: less than {} GiB free; a clean build and the suite need about that much",
                    LOW >> 30
                );
            }
        }
        None => println!("xtask test: could not read the free space on the build's disk {when}"),
    }
}

#[cfg(test)]
mod tests {
    use super::Panics;

    #[test]
    fn panics_keep_each_failed_tests_message_and_only_failed_tests() {
        let mut p = Panics::default();
        for line in [
            "     Running tests/x.rs (target/debug/deps/x-0123)",
            "successes:",
            "",
            "---- passed stdout ----",
            "measured 3 things",
            "thread 'worker' panicked at z.rs:1:1:",
            "",
            "failures:",
            "",
            "---- a::b stdout ----",
            "some output",
            "thread 'a::b' (12) panicked at tests/x.rs:1:2:",
            "start etcd: no space left on device",
            "stack backtrace:",
            "   0: frame",
            "---- c stdout ----",
            "thread 'c' panicked at y.rs:3:4:",
            "boom",
            "",
            "failures:",
            "    a::b",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored",
            "     Running unittests src/lib.rs (target/debug/deps/y-4567)",
            "successes:",
            "---- fine stdout ----",
            "test result: ok. 1 passed; 0 failed; 0 ignored",
        ] {
            p.see(line);
        }
        p.finish();
        let names: Vec<&str> = p.done.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x a::b", "x c"]);
        assert_eq!(
            p.done[0].1,
            vec![
                "thread 'a::b' (12) panicked at tests/x.rs:1:2:",
                "start etcd: no space left on device"
            ]
        );
        assert_eq!(p.done[1].1, vec!["thread 'c' panicked at y.rs:3:4:", "boom", ""]);
    }
}
