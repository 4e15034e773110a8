//! Tidy checks, run as tests so the README's test command (and CI) enforces them:
//! rustfmt over both workspaces and clippy with warnings denied.

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    fn repo() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .canonicalize()
            .expect("the repository root")
    }

    fn check(what: &str, cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}): {cmd:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_tree_is_formatted_as_rustfmt_toml_says() {
        // The eBPF programs are their own workspace; stable rustfmt formats them too.
        for manifest in ["Cargo.toml", "ebpf/programs/Cargo.toml"] {
            check(
                &format!("cargo fmt --check ({manifest})"),
                Command::new(env!("CARGO"))
                    .current_dir(repo())
                    .args(["fmt", "--all", "--check", "--manifest-path"])
                    .arg(repo().join(manifest)),
            );
        }
    }

    #[test]
    fn clippy_finds_nothing_to_warn_about() {
        // Its own target directory: `cargo test` may still hold the main one's lock, and
        // clippy's check artifacts share nothing with the test build's anyway.
        check(
            "cargo clippy --workspace --all-targets -- -D warnings",
            Command::new(env!("CARGO"))
                .current_dir(repo())
                .env("CARGO_TARGET_DIR", repo().join("target/tidy"))
                .env("CARGO_INCREMENTAL", "0")
                .args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--quiet",
                    "--",
                    "-D",
                    "warnings",
                ]),
        );
    }
}
