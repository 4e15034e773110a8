//! A minimal HTTP/1 server for the agent's small endpoints (healthz, metrics, health
//! check NodePorts): each answer is computed from a path by a plain function.
//!
//! What keeps it up under abuse or pressure: a client must send its request head within
//! [`HEADER_READ_TIMEOUT`] (else a slow client holds a descriptor for ever); a failing
//! `accept` (EMFILE: out of descriptors) backs off instead of spinning on the listener,
//! which stays readable while the connection waits; and [`Server::shutdown`] stops
//! accepting but lets requests already being answered finish, within a bound.

use std::{convert::Infallible, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::{JoinHandle, JoinSet},
};

/// An answer: status, content type, body.
pub type Reply = (u16, &'static str, String);

pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// How long a client has to send its request line and headers, from connecting (or from
/// the previous answer on a kept-alive connection). Probes and scrapers send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Accept retries after an error: 5 ms doubling to 1 s, as Go's net/http does.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A running server; dropping it stops it at once, [`Server::shutdown`] drains it.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish for up to `grace`, then closes
    /// what is left.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` now (so a taken port is an error at startup, naming the address) and
/// serves in the background.
pub async fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<Server> {
    serve_with(addr, handler, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with another header-read timeout.
pub async fn serve_with(addr: SocketAddr, handler: Handler, header_timeout: Duration) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, handler, header_timeout, stopped));
    Ok(Server {
        addr,
        stop: Some(stop),
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    header_timeout: Duration,
    mut stopped: oneshot::Receiver<Duration>,
) {
    let (draining, _) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff: Option<Duration> = None;
    let mut failures = 0u64;
    let grace = loop {
        let accepted = tokio::select! {
            grace = &mut stopped => break grace.unwrap_or_default(),
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections so the set does not grow with every one served.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                if failures > 0 {
                    tracing::info!(addr = ?listener.local_addr().ok(), failures, "accepting connections again");
                    (failures, backoff) = (0, None);
                }
                connections.spawn(connection(
                    stream,
                    Arc::clone(&handler),
                    header_timeout,
                    draining.subscribe(),
                ));
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    // Once per burst: a full descriptor table fails every retry alike.
                    tracing::warn!(addr = ?listener.local_addr().ok(), %error, "accept failed; retrying with backoff");
                }
                let delay = backoff.map_or(ACCEPT_BACKOFF_FIRST, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
                backoff = Some(delay);
                tokio::select! {
                    grace = &mut stopped => break grace.unwrap_or_default(),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    // Closing the listener refuses new connections while the others drain.
    drop(listener);
    let _ = draining.send(true);
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            ?grace,
            "requests still unanswered at the end of shutdown; closing them"
        );
    }
    // Dropping the set aborts what is left.
}

async fn connection(
    stream: TcpStream,
    handler: Handler,
    header_timeout: Duration,
    mut draining: watch::Receiver<bool>,
) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let (status, content_type, body) = handler(req.uri().path());
        async move {
            let response = Response::builder()
                .status(status)
                .header("content-type", content_type)
                .header("x-content-type-options", "nosniff")
                .body(Full::new(Bytes::from(body)));
            // The builder only fails on invalid header values, and ours are fixed.
            Ok::<_, Infallible>(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
        }
    });
    let mut conn = pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service)
    );
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = draining.wait_for(|d| *d) => {}
    }
    // Finish the request in flight, if any, then close; an idle connection closes now.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::TcpStream,
        process::{Command, Stdio},
        sync::{Mutex, mpsc},
        time::Instant,
    };

    use super::*;

    fn answer(path: &str) -> Reply {
        (200, "text/plain", format!("ok {path}\n"))
    }

    /// Sends a GET and reads the whole answer (the server closes after it).
    fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// How long until the server closes `s`, reading (and discarding) what it sends.
    fn closed_after(mut s: TcpStream, started: Instant) -> Duration {
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
                Err(e) => panic!(
                    "the server kept the connection open ({e}) after {:?}",
                    started.elapsed()
                ),
            }
        }
    }

    /// Slowloris: a client that sends half a request line, or nothing, holds a connection
    /// (and a descriptor) only until the header-read timeout, while others are served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_finishes_its_request_is_cut() {
        let timeout = Duration::from_secs(1);
        let server = serve_with(([127, 0, 0, 1], 0).into(), Arc::new(answer), timeout)
            .await
            .expect("bind");
        let addr = server.local_addr();
        let (half, silent) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut half = TcpStream::connect(addr).expect("connect");
            half.write_all(b"GET /heal").expect("write half a request line");
            let silent = TcpStream::connect(addr).expect("connect");
            let answered = get(addr, "/healthz").expect("a full request meanwhile");
            assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
            let a = std::thread::spawn(move || closed_after(half, started));
            let b = closed_after(silent, started);
            (a.join().expect("join"), b)
        })
        .await
        .expect("client thread");
        for (what, took) in [("half a request line", half), ("nothing", silent)] {
            assert!(
                took >= timeout && took < timeout + Duration::from_secs(4),
                "a client that sent {what} was cut after {took:?} (timeout {timeout:?})"
            );
        }
        server.shutdown(Duration::from_secs(1)).await;
    }

    /// A handler that signals it started and then waits for `release`.
    fn blocking(entered: mpsc::Sender<()>, release: mpsc::Receiver<()>) -> Handler {
        let release = Mutex::new(release);
        let entered = Mutex::new(entered);
        Arc::new(move |path| {
            if path == "/slow" {
                let _ = entered.lock().expect("lock").send(());
                let _ = release.lock().expect("lock").recv();
            }
            answer(path)
        })
    }

    /// A server whose handler holds a GET of /slow until `release` is sent, returned once
    /// that request has entered the handler; the client thread yields the answer.
    async fn a_request_held_in_its_handler() -> (
        Server,
        mpsc::Sender<()>,
        std::thread::JoinHandle<std::io::Result<String>>,
    ) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let server = serve(([127, 0, 0, 1], 0).into(), blocking(entered_tx, release_rx))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let client = std::thread::spawn(move || get(addr, "/slow"));
        tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(20)))
            .await
            .expect("join")
            .expect("the handler started");
        (server, release, client)
    }

    /// Shutdown stops accepting at once, but a request already being answered gets its
    /// whole answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shutdown_drains_an_in_flight_request() {
        let (server, release, client) = a_request_held_in_its_handler().await;
        let addr = server.local_addr();
        let started = Instant::now();
        let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(20)));
        // New connections are refused once the listener is closed.
        let refused = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
        .await
        .expect("join");
        assert!(refused, "the listener still accepts during shutdown");
        assert!(
            !shutdown.is_finished(),
            "shutdown returned before the request was answered"
        );
        release.send(()).expect("release the handler");
        let answer = client.join().expect("join").expect("the in-flight request is answered");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok /slow\n"),
            "{answer}"
        );
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown finishes once the request is answered")
            .expect("join");
        println!("shutdown drained an in-flight request in {:?}", started.elapsed());
    }

    /// A request that never finishes holds shutdown only for the grace period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shutdown_is_bounded_by_its_grace_period() {
        let (server, release, _client) = a_request_held_in_its_handler().await;
        let grace = Duration::from_millis(500);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), server.shutdown(grace))
            .await
            .expect("shutdown gives up after its grace period");
        let took = started.elapsed();
        assert!(took >= grace && took < grace + Duration::from_secs(3), "{took:?}");
        let _ = release.send(());
    }

    /// Set in the child process of the EMFILE test, which the test binary runs again.
    const EMFILE_CHILD: &str = "RUDDER_HTTP_EMFILE_CHILD";

    /// The EMFILE test's child: a server under a descriptor limit it then exhausts. It
    /// prints its port, fills the descriptor table, and frees it when told on stdin.
    fn emfile_child() {
        let limit = libc::rlimit {
            rlim_cur: 128,
            rlim_max: 128,
        };
        // SAFETY: setrlimit with a valid struct; this process is the test's own child.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "setrlimit");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(serve(([127, 0, 0, 1], 0).into(), Arc::new(answer)))
            .expect("bind");
        println!("LISTENING {}", server.local_addr().port());
        let mut held = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("open: {e}"),
            }
        }
        println!("EXHAUSTED {}", held.len());
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).expect("stdin");
        drop(held);
        println!("FREED");
        line.clear();
        let _ = std::io::stdin().read_line(&mut line);
        drop(server);
    }

    fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // Fields after the command name (which may hold spaces): utime and stime are the
        // 12th and 13th after it.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / ticks
    }

    /// EMFILE: with its descriptors exhausted the server cannot accept; it must back off
    /// instead of spinning on the ever-ready listener, and serve again once they free up.
    #[test]
    fn accept_errors_back_off_and_serving_resumes() {
        if std::env::var_os(EMFILE_CHILD).is_some() {
            return emfile_child();
        }
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "agent::http::tests::accept_errors_back_off_and_serving_resumes",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EMFILE_CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let pid = child.id();
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let expect = |prefix: &str| -> String {
            loop {
                let line = lines
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("the child never printed {prefix}: {e}"));
                // libtest prints the test's name on the same line as its first output.
                if let Some(at) = line.find(prefix) {
                    return line[at + prefix.len()..].trim().to_owned();
                }
            }
        };
        let port: u16 = expect("LISTENING").parse().expect("port");
        expect("EXHAUSTED");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // The kernel completes the handshake into the backlog; the server cannot accept it.
        let client = std::thread::spawn(move || get(addr, "/healthz"));
        std::thread::sleep(Duration::from_millis(200));
        let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(2));
        let (cpu, wall) = (cpu_seconds(pid) - cpu0, t0.elapsed());
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "free").expect("tell the child to free its descriptors");
        expect("FREED");
        let freed = Instant::now();
        let answer = client.join().expect("join").expect("the waiting request is answered");
        let resumed = freed.elapsed();
        drop(stdin);
        let _ = child.wait();
        assert!(
            cpu < 0.2,
            "the server used {cpu:.2} s of CPU in {wall:?} while it could not accept (spinning)"
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            resumed < Duration::from_secs(3),
            "serving resumed only after {resumed:?}"
        );
        println!(
            "EMFILE: {:.3} s CPU in {:.1} s of failing accepts; the waiting request was answered {:?} after descriptors freed",
            cpu,
            wall.as_secs_f64(),
            resumed
        );
    }
}
