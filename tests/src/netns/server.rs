//! Starting `rudder-echo serve` inside a namespace and knowing when it is listening.

use std::{
    env,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use super::{
    HarnessError,
    cmd::{Process, netns_exec},
};

/// Overrides where the harness looks for the `rudder-echo` binary.
pub const ECHO_BIN_ENV: &str = "RUDDER_ECHO_BIN";
const ECHO_BIN_NAME: &str = "rudder-echo";
/// Starting takes milliseconds; this only bounds a hang.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a `rudder-echo` server answers and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoConfig {
    /// Sent back, followed by a newline, to every TCP connection and UDP datagram.
    pub name: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    /// If set, also answers HTTP/1.1 requests on this port with `name` as the body.
    pub http_port: Option<u16>,
    /// Where it listens (`None`: 0.0.0.0).
    pub address: Option<std::net::IpAddr>,
}

impl EchoConfig {
    /// Answers `name` on TCP and UDP `port`, no HTTP.
    pub fn new(name: &str, port: u16) -> Self {
        Self {
            name: name.to_owned(),
            tcp_port: port,
            udp_port: port,
            http_port: None,
            address: None,
        }
    }
}

/// A running `rudder-echo serve`, killed when dropped.
#[derive(Debug)]
pub struct ServerGuard {
    process: Process,
    config: EchoConfig,
    netns: String,
}

impl ServerGuard {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &EchoConfig {
        &self.config
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the server now rather than at the end of the scope.
    pub fn stop(self) {
        drop(self);
    }
}

/// Where `rudder-echo` is, in this order:
/// 1. `$RUDDER_ECHO_BIN`, if set;
/// 2. [`crate::binary_candidates`]: the target directory, then beside the running
///    executable. Cargo builds a package's binaries before running its integration tests,
///    so this finds the binary for any test in this package without configuration.
pub fn echo_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = env::var_os(ECHO_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::EchoBinaryNotFound { tried: vec![path] })
        };
    }
    let tried = crate::binary_candidates(ECHO_BIN_NAME);
    match tried.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => Err(HarnessError::EchoBinaryNotFound { tried }),
    }
}

/// Starts `rudder-echo serve` in `netns` and returns once it has bound its sockets.
pub fn serve_in(netns: &str, config: &EchoConfig) -> Result<ServerGuard, HarnessError> {
    let mut serve = Command::new(echo_binary()?);
    serve.arg("serve").args(["--name", &config.name]);
    serve.args([
        "--port",
        &config.tcp_port.to_string(),
        "--udp-port",
        &config.udp_port.to_string(),
    ]);
    if let Some(http) = config.http_port {
        serve.args(["--http-port", &http.to_string()]);
    }
    if let Some(address) = config.address {
        serve.args(["--address", &address.to_string()]);
    }
    let mut cmd = netns_exec(netns, &serve);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut process = Process::spawn(&mut cmd)?;
    let not_ready = |reason: String| HarnessError::ServerNotReady {
        name: config.name.clone(),
        netns: netns.to_owned(),
        reason,
    };
    let (Some(stdout), Some(stderr)) = (process.child_mut().stdout.take(), process.child_mut().stderr.take()) else {
        return Err(not_ready("its stdout/stderr were not piped".into()));
    };

    // A thread, so waiting for "ready" can time out instead of blocking on a silent server.
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = ready_tx.send(lines.next());
        // Keep draining so a chatty server never blocks on a full pipe.
        lines.for_each(drop);
    });

    let problem = match ready_rx.recv_timeout(crate::slow(READY_TIMEOUT)) {
        Ok(Some(Ok(line))) if line.trim() == "ready" => None,
        Ok(Some(Ok(line))) => Some(format!("printed {line:?} instead of \"ready\"")),
        Ok(Some(Err(err))) => Some(format!("reading its stdout failed: {err}")),
        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => Some("it exited before getting ready".to_owned()),
        Err(mpsc::RecvTimeoutError::Timeout) => Some(format!("no \"ready\" within {:?}", crate::slow(READY_TIMEOUT))),
    };
    if let Some(problem) = problem {
        let status = process
            .kill()
            .map_or_else(|err| err.to_string(), |status| status.to_string());
        let mut errors = String::new();
        // The process is dead, so this reads to EOF without blocking.
        let _ = BufReader::new(stderr).read_to_string(&mut errors);
        return Err(not_ready(format!("{problem}; {status}; stderr: {}", errors.trim())));
    }

    // Later complaints (a failing accept, say) belong in the test's output, tagged.
    let tag = format!("rudder-echo {}@{netns}", config.name);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
        }
    });
    Ok(ServerGuard {
        process,
        config: config.clone(),
        netns: netns.to_owned(),
    })
}
