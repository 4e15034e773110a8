//! Attaching to a running container's own stdio, as conmon's attach socket does: the shim
//! (which owns the container's stdin, stdout and stderr, or its terminal) listens on a Unix
//! socket in the run's state directory. Every attached client gets the output as it is
//! read, before the shim splits it into log lines, so a prompt without a newline shows at
//! once; stdin and terminal resizes travel the other way. The shim side is synchronous
//! (threads, as the rest of the shim); the agent side is async.
//!
//! A frame is `[kind: u8][length: u32 big-endian][payload]`, in both directions.

use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

pub const SOCKET: &str = "attach.sock";

/// Shim to client: container output.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Client to shim.
pub const STDIN: u8 = 0;
/// The client's input ended (Ctrl-D in a pipe, or the client left).
pub const STDIN_END: u8 = 3;
/// Payload: width and height, u16 big-endian each.
pub const RESIZE: u8 = 4;
/// Sent first by a client that attaches with stdin: only such a session ends a
/// `stdinOnce` container's input.
pub const WANTS_STDIN: u8 = 5;

/// A frame longer than this is refused: nothing legitimate comes close.
const MAX_FRAME: usize = 1 << 20;

/// A client that cannot take output for this long is dropped rather than stall the
/// container, whose writes would block on a full pipe.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The path to bind or connect through: a Unix socket path is limited to 108 bytes, and
/// run directories can be deeper, so the directory is reached through an open descriptor.
fn short_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

/// The shim's side: output fans out to every attached client; clients' stdin goes to the
/// container's.
pub struct Hub {
    clients: Mutex<Vec<UnixStream>>,
    stdin: Mutex<Option<Box<dyn Write + Send>>>,
    /// The terminal's master side, for resizes.
    terminal: Option<OwnedFd>,
    stdin_once: bool,
}

impl Hub {
    pub fn new(stdin: Option<Box<dyn Write + Send>>, terminal: Option<OwnedFd>, stdin_once: bool) -> Arc<Self> {
        Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            stdin: Mutex::new(stdin),
            terminal,
            stdin_once,
        })
    }

    /// Listens in `state_dir` and serves clients on threads of their own.
    pub fn listen(self: &Arc<Self>, state_dir: &Path) -> std::io::Result<()> {
        let dir = File::open(state_dir)?;
        let _ = std::fs::remove_file(state_dir.join(SOCKET));
        let listener = UnixListener::bind(short_path(&dir))?;
        let hub = Arc::clone(self);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(writer) = conn.try_clone() else { continue };
                let _ = writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
                if let Ok(mut clients) = hub.clients.lock() {
                    clients.push(writer);
                }
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || hub.serve(conn));
            }
        });
        Ok(())
    }

    /// Sends output to every client; a client that fails is dropped.
    pub fn broadcast(&self, kind: u8, data: &[u8]) {
        let Ok(mut clients) = self.clients.lock() else { return };
        if clients.is_empty() {
            return;
        }
        let f = frame(kind, data);
        clients.retain_mut(|c| c.write_all(&f).is_ok());
    }

    fn serve(&self, mut conn: UnixStream) {
        let mut wants_stdin = false;
        loop {
            let mut head = [0u8; 5];
            if conn.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_FRAME {
                break;
            }
            let mut payload = vec![0u8; len];
            if conn.read_exact(&mut payload).is_err() {
                break;
            }
            match head[0] {
                WANTS_STDIN => wants_stdin = true,
                STDIN => {
                    if let Ok(mut stdin) = self.stdin.lock()
                        && let Some(w) = stdin.as_mut()
                        && w.write_all(&payload).and_then(|()| w.flush()).is_err()
                    {
                        *stdin = None;
                    }
                }
                STDIN_END => {
                    self.session_ended(wants_stdin);
                    wants_stdin = false;
                }
                RESIZE if payload.len() == 4 => {
                    let width = u16::from_be_bytes([payload[0], payload[1]]);
                    let height = u16::from_be_bytes([payload[2], payload[3]]);
                    if let Some(t) = &self.terminal {
                        crate::node::streaming::exec::resize(t, width, height);
                    }
                }
                _ => {}
            }
        }
        self.session_ended(wants_stdin);
    }

    /// `stdinOnce`: the container's stdin closes when the first session that used it ends.
    fn session_ended(&self, had_stdin: bool) {
        if had_stdin
            && self.stdin_once
            && let Ok(mut stdin) = self.stdin.lock()
        {
            *stdin = None;
        }
    }
}

/// The agent's side: a connection to a running container's shim.
pub async fn connect(run_dir: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let dir = File::open(run_dir)?;
    tokio::net::UnixStream::connect(short_path(&dir)).await
}

/// Reads one frame; `None` at a clean end of the stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("an attach frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_reaches_every_client_and_stdin_once_closes_after_the_first_session() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let hub = Hub::new(Some(Box::new(writer)), None, true);
        hub.listen(dir.path()).unwrap();
        let d = File::open(dir.path()).unwrap();
        let mut a = UnixStream::connect(short_path(&d)).unwrap();
        let mut b = UnixStream::connect(short_path(&d)).unwrap();
        // Both registered before output is sent.
        while hub.clients.lock().unwrap().len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        hub.broadcast(STDOUT, b"prompt$ ");
        for c in [&mut a, &mut b] {
            let mut f = vec![0u8; 5 + 8];
            c.read_exact(&mut f).unwrap();
            assert_eq!(f, frame(STDOUT, b"prompt$ "));
        }
        a.write_all(&frame(WANTS_STDIN, b"")).unwrap();
        a.write_all(&frame(STDIN, b"hello\n")).unwrap();
        a.write_all(&frame(STDIN_END, b"")).unwrap();
        // The container sees the input, then end of file.
        let mut got = String::new();
        let mut reader = reader;
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello\n");
    }
}
