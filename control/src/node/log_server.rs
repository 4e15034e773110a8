//! The agent's HTTPS port (the kubelet's 10250), serving container logs to the API server:
//! `GET /containerLogs/{namespace}/{pod}/{container}` with the kubelet's query parameters
//! (`follow`, `tailLines`, `previous`, `timestamps`, `limitBytes`, `sinceSeconds`,
//! `sinceTime`).
//!
//! Logs are the CRI files the shims write (`<time> <stream> F|P <text>`), one per
//! container run, under `<root>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`; the
//! newest attempt is the current run, the one before it the `previous` one. Reading is
//! stateless (the directory names say which pod a file belongs to), so logs stay
//! readable across agent restarts.
//!
//! Authentication: a client certificate signed by the cluster CA is required, and only
//! `system:masters` or the user `kube-apiserver-kubelet-client` may read logs (the API
//! server presents such a certificate). The serving certificate is the one given with
//! `--tls-cert-file`/`--tls-private-key-file` (issued by the cluster CA for the node IP,
//! as `rudder up` does); without one the agent makes a self-signed certificate, as the
//! kubelet does, which rudder's API server refuses to trust: logs then fail with a TLS
//! error naming the node.

use std::{
    convert::Infallible,
    future::Future,
    io::{Read, Seek, SeekFrom},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::WebPkiClientVerifier,
    },
};

use super::{runtime, shim::EXIT_FILE};

type Body = BoxBody<Bytes, Infallible>;

/// The user name the API server's client certificate carries (as upstream's
/// `--kubelet-client-certificate` conventionally does).
pub const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// How often a follower looks for new lines and for the run's end.
const FOLLOW_POLL: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------------------
// CRI log records

/// One CRI log record (a line of the file, without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a [u8],
    pub stream: &'a [u8],
    /// `P`: the line continues in the next record.
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses `<time> <stream> <tags> <text>`; None for a malformed line.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next().filter(|t| !t.is_empty())?;
    let stream = parts.next().filter(|s| *s == b"stdout" || *s == b"stderr")?;
    let tags = parts.next()?;
    let text = parts.next().unwrap_or_default();
    // Tags are `:`-separated; `P` marks a partial record, anything else is full.
    let partial = tags.split(|b| *b == b':').any(|t| t == b"P");
    Some(Record {
        time,
        stream,
        partial,
        text,
    })
}

/// A whole log line: the partial records joined, stamped with the first one's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub time: String,
    pub text: Vec<u8>,
}

impl Line {
    /// The line as served: `text\n`, or `time text\n` with timestamps.
    pub fn render(&self, timestamps: bool, out: &mut Vec<u8>) {
        if timestamps {
            out.extend_from_slice(self.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.text);
        out.push(b'\n');
    }

    fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.parse().ok()
    }
}

/// Turns file bytes into whole lines, keeping an unterminated tail (the writer is
/// mid-record) and an unfinished partial line (one stream at a time, as the shims write
/// a partial line's records back to back) for the next call.
#[derive(Debug, Default)]
pub struct Decoder {
    unterminated: Vec<u8>,
    /// Per stream: (time of the first record, text so far).
    partial: Vec<(Vec<u8>, String, Vec<u8>)>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        self.unterminated.extend_from_slice(bytes);
        let Some(end) = self.unterminated.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.unterminated.drain(..=end).collect();
        let mut lines = Vec::new();
        for raw in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(r) = parse_record(raw) else { continue };
            let slot = self.partial.iter().position(|(s, _, _)| s == r.stream);
            if r.partial {
                match slot {
                    Some(i) => self.partial[i].2.extend_from_slice(r.text),
                    None => self.partial.push((
                        r.stream.to_vec(),
                        String::from_utf8_lossy(r.time).into_owned(),
                        r.text.to_vec(),
                    )),
                }
                continue;
            }
            let line = match slot {
                Some(i) => {
                    let (_, time, mut text) = self.partial.remove(i);
                    text.extend_from_slice(r.text);
                    Line { time, text }
                }
                None => Line {
                    time: String::from_utf8_lossy(r.time).into_owned(),
                    text: r.text.to_vec(),
                },
            };
            lines.push(line);
        }
        lines
    }
}

/// The last `n` lines of `text` (each ending in `\n`, the last possibly not).
pub fn tail_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// What the client asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since: Option<jiff::Timestamp>,
}

impl LogOptions {
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut o = LogOptions::default();
        let flag = |v: &str| matches!(v, "true" | "1");
        let number = |k: &str, v: &str| v.parse::<i64>().map_err(|_| format!("invalid value for {k}: {v:?}"));
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "follow" => o.follow = flag(&v),
                "previous" => o.previous = flag(&v),
                "timestamps" => o.timestamps = flag(&v),
                // Negative tailLines means all lines, as upstream.
                "tailLines" => o.tail_lines = usize::try_from(number(&k, &v)?).ok(),
                "limitBytes" => {
                    let n = number(&k, &v)?;
                    if n < 1 {
                        return Err("limitBytes must be greater than zero".into());
                    }
                    o.limit_bytes = Some(n as usize);
                }
                "sinceSeconds" => {
                    let n = number(&k, &v)?;
                    if n < 1 {
                        return Err("sinceSeconds must be greater than zero".into());
                    }
                    o.since = jiff::Timestamp::now()
                        .checked_sub(jiff::SignedDuration::from_secs(n))
                        .ok();
                }
                "sinceTime" => o.since = Some(v.parse().map_err(|e| format!("invalid sinceTime {v:?}: {e}"))?),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// The first answer from a whole log file's bytes: lines since `since`, the last
/// `tail_lines` of them, rendered.
pub fn render_initial(lines: &[Line], opts: &LogOptions) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        if let Some(since) = opts.since
            && l.timestamp().is_some_and(|t| t < since)
        {
            continue;
        }
        l.render(opts.timestamps, &mut out);
    }
    match opts.tail_lines {
        Some(n) => tail_lines(&out, n).to_vec(),
        None => out,
    }
}

// ---------------------------------------------------------------------------------------
// Finding a container's log files

/// One container run's log file and run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub log: PathBuf,
    pub run_dir: PathBuf,
}

impl Run {
    fn newer_run_started(&self) -> bool {
        let attempt = self
            .log
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u32>().ok());
        let Some((a, dir)) = attempt.zip(self.log.parent()) else {
            return false;
        };
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse::<u32>().ok())
            .any(|n| n > a)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum LookupError {
    PodNotFound,
    ContainerNotStarted,
    NoPrevious,
}

/// The log directory of the newest pod `ns/pod` this node has (a pod deleted and created
/// again under the same name leaves an older uid's directory for a while).
fn pod_log_dir(root: &Path, ns: &str, pod: &str) -> Option<(PathBuf, String)> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(root.join("logs"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let uid = name.strip_prefix(&prefix)?.to_owned();
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            Some((modified, e.path(), uid))
        })
        .max_by_key(|(m, _, _)| *m)
        .map(|(_, p, uid)| (p, uid))
}

/// The current run of `container` (or, with `previous`, the one before it).
pub fn find_run(root: &Path, ns: &str, pod: &str, container: &str, previous: bool) -> Result<Run, LookupError> {
    let (dir, uid) = pod_log_dir(root, ns, pod).ok_or(LookupError::PodNotFound)?;
    let mut attempts: Vec<u32> = std::fs::read_dir(dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    attempts.sort_unstable();
    let attempt = match (attempts.last(), previous) {
        (None, _) => return Err(LookupError::ContainerNotStarted),
        (Some(_), false) => attempts[attempts.len() - 1],
        (Some(_), true) if attempts.len() >= 2 => attempts[attempts.len() - 2],
        (Some(_), true) => return Err(LookupError::NoPrevious),
    };
    Ok(Run {
        log: dir.join(container).join(format!("{attempt}.log")),
        run_dir: runtime::run_dir(&root.join("pods").join(uid), container, attempt),
    })
}

// ---------------------------------------------------------------------------------------
// TLS and the server

#[derive(Debug, thiserror::Error)]
pub enum LogServerError {
    #[error("the serving certificate: {0}")]
    ServingCert(String),
    #[error("the cluster CA: {0}")]
    Ca(String),
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// TLS for the log port: `serving` (PEM certificate chain and key) or a fresh self-signed
/// certificate for `node_name`/`node_ip`; client certificates verified against `ca_pem`
/// (optional at the TLS layer so a request without one gets a 401, not a reset).
pub fn tls_config(
    serving: Option<&(String, String)>,
    ca_pem: &[u8],
    node_name: &str,
    node_ip: Ipv4Addr,
) -> Result<Arc<ServerConfig>, LogServerError> {
    let (cert_pem, key_pem) = match serving {
        Some((c, k)) => (c.clone(), k.clone()),
        None => {
            let key = rcgen::KeyPair::generate().map_err(|e| LogServerError::ServingCert(e.to_string()))?;
            let mut params = rcgen::CertificateParams::new(vec![node_name.to_owned()])
                .map_err(|e| LogServerError::ServingCert(e.to_string()))?;
            params.subject_alt_names.push(rcgen::SanType::IpAddress(node_ip.into()));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("{node_name}@self-signed"));
            let cert = params
                .self_signed(&key)
                .map_err(|e| LogServerError::ServingCert(e.to_string()))?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| LogServerError::ServingCert(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(LogServerError::ServingCert("no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| LogServerError::ServingCert(format!("key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| LogServerError::Ca(e.to_string()))?;
        roots.add(ca).map_err(|e| LogServerError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(LogServerError::Ca("no CA certificate to check clients against".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| LogServerError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LogServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| LogServerError::ServingCert(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds `<node_ip>:<port>` and serves until `shutdown`.
pub async fn run(
    config: &super::Config,
    ca_pem: &[u8],
    shutdown: impl Future<Output = ()>,
) -> Result<(), LogServerError> {
    let tls = tls_config(config.serving_cert.as_ref(), ca_pem, &config.node_name, config.node_ip)?;
    let addr = std::net::SocketAddr::from((config.node_ip, config.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| LogServerError::Bind { addr, source })?;
    tracing::info!(%addr, "log server listening");
    serve(listener, tls, config.root_dir.clone(), shutdown).await;
    Ok(())
}

/// Serves `/containerLogs` from `root_dir` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    root_dir: PathBuf,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let root_dir = Arc::new(root_dir);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "log server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let root_dir = Arc::clone(&root_dir);
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "log server: TLS handshake failed");
                    return;
                }
            };
            let peer_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let service = service_fn(move |req: Request<Incoming>| {
                let root_dir = Arc::clone(&root_dir);
                let peer_cert = peer_cert.clone();
                async move { Ok::<_, Infallible>(handle(&root_dir, peer_cert.as_deref(), req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "log server: connection ended with an error");
            }
        });
    }
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(message.into())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Who may read logs: the certificate's CN is the user, its O values the groups.
fn authorize(peer_cert: Option<&[u8]>) -> Result<(), Box<Response<Body>>> {
    let Some(der) = peer_cert else {
        return Err(Box::new(text(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: a client certificate signed by the cluster CA is required",
        )));
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Err(Box::new(text(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: unreadable client certificate",
        )));
    };
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let masters = subject
        .iter_organization()
        .any(|o| o.as_str().ok() == Some("system:masters"));
    if masters || user == APISERVER_KUBELET_CLIENT {
        return Ok(());
    }
    Err(Box::new(text(
        StatusCode::FORBIDDEN,
        format!("Forbidden (user={user}, verb=get, resource=nodes, subresource=log)"),
    )))
}

async fn handle(root: &Path, peer_cert: Option<&[u8]>, req: Request<Incoming>) -> Response<Body> {
    if let Err(resp) = authorize(peer_cert) {
        return *resp;
    }
    let path = req.uri().path().to_owned();
    if super::streaming::serves(&path) {
        return super::streaming::handle(root, req).await;
    }
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if req.method() == http::Method::GET && parts.as_slice() == ["healthz"] {
        return text(StatusCode::OK, "ok");
    }
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported");
    }
    let opts = match LogOptions::from_query(req.uri().query()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let run = match find_run(root, ns, pod, container, opts.previous) {
        Ok(r) => r,
        Err(LookupError::PodNotFound) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod \"{pod}\" in namespace \"{ns}\" not found on this node"),
            );
        }
        Err(LookupError::ContainerNotStarted) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"),
            );
        }
        Err(LookupError::NoPrevious) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            );
        }
    };
    // Following the previous run makes no sense: it has ended.
    let follow = opts.follow && !opts.previous;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(stream_log(run, opts, follow, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    resp
}

/// Sends the log (and, following, what is appended to it) until the limit, the run's end
/// or the client leaving (the channel closes).
async fn stream_log(run: Run, opts: LogOptions, follow: bool, tx: mpsc::Sender<Bytes>) {
    let mut remaining = opts.limit_bytes.unwrap_or(usize::MAX);
    let mut decoder = Decoder::default();
    let mut file = match std::fs::File::open(&run.log) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %run.log.display(), error = %e, "opening a log");
            return;
        }
    };
    let mut offset = 0u64;
    let read_new = |file: &mut std::fs::File, offset: &mut u64| -> Vec<u8> {
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(*offset)).is_ok() && file.read_to_end(&mut buf).is_ok() {
            *offset += buf.len() as u64;
        }
        buf
    };
    let initial = read_new(&mut file, &mut offset);
    let lines = decoder.push(&initial);
    let out = render_initial(&lines, &opts);
    if !send(&tx, out, &mut remaining).await {
        return;
    }
    if !follow {
        return;
    }
    loop {
        // Checked before reading, so what was written before the exit is all sent. A newer
        // run's log also ends it (a run lost with its shim never writes `exit.json`).
        let ended = run.run_dir.join(EXIT_FILE).exists() || run.newer_run_started();
        let new = read_new(&mut file, &mut offset);
        let mut out = Vec::new();
        for l in decoder.push(&new) {
            l.render(opts.timestamps, &mut out);
        }
        if !send(&tx, out, &mut remaining).await {
            return;
        }
        if ended && new.is_empty() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Sends up to `remaining` bytes of `out`; false once the limit is reached or the
/// client is gone.
async fn send(tx: &mpsc::Sender<Bytes>, mut out: Vec<u8>, remaining: &mut usize) -> bool {
    if *remaining == 0 {
        return false;
    }
    out.truncate(*remaining);
    *remaining -= out.len();
    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
        return false;
    }
    *remaining > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let r = parse_record(b"2026-01-01T00:00:00.5Z stdout F hello world").unwrap();
        assert_eq!(
            (r.time, r.stream, r.partial, r.text),
            (
                &b"2026-01-01T00:00:00.5Z"[..],
                &b"stdout"[..],
                false,
                &b"hello world"[..]
            )
        );
        let r = parse_record(b"2026-01-01T00:00:00Z stderr P part").unwrap();
        assert!(r.partial && r.stream == b"stderr");
        // An empty line is `<time> <stream> F ` (or without the trailing space).
        assert_eq!(parse_record(b"t stdout F ").unwrap().text, b"");
        assert_eq!(parse_record(b"t stdout F").unwrap().text, b"");
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"t stdin F x").is_none());
    }

    #[test]
    fn partial_records_join_and_unterminated_lines_wait() {
        let mut d = Decoder::default();
        let lines = d.push(b"T1 stdout P abc\nT2 stderr F err\nT3 stdout P def\nT4 stdout F ghi\nT5 stdout F tail");
        assert_eq!(
            lines,
            vec![
                Line {
                    time: "T2".into(),
                    text: b"err".to_vec()
                },
                Line {
                    time: "T1".into(),
                    text: b"abcdefghi".to_vec()
                }
            ]
        );
        // The last record has no newline yet: it comes with the next read.
        let lines = d.push(b" end\n");
        assert_eq!(
            lines,
            vec![Line {
                time: "T5".into(),
                text: b"tail end".to_vec()
            }]
        );
    }

    #[test]
    fn tails() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 3), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 10), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 0), b"");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_lines(b"", 1), b"");
    }

    #[test]
    fn rendering_with_timestamps_since_and_tail() {
        let mut d = Decoder::default();
        let lines = d.push(b"2026-01-01T00:00:01Z stdout F one\n2026-01-01T00:00:02Z stdout F two\n2026-01-01T00:00:03Z stderr F three\n");
        let all = LogOptions::default();
        assert_eq!(render_initial(&lines, &all), b"one\ntwo\nthree\n");
        let o = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(render_initial(&lines, &o), b"2026-01-01T00:00:03Z three\n");
        let o = LogOptions {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(render_initial(&lines, &o), b"two\nthree\n");
    }

    #[test]
    fn options_parse() {
        let o = LogOptions::from_query(Some(
            "follow=true&tailLines=5&previous=true&timestamps=true&limitBytes=10",
        ))
        .unwrap();
        assert_eq!(
            o,
            LogOptions {
                follow: true,
                previous: true,
                timestamps: true,
                tail_lines: Some(5),
                limit_bytes: Some(10),
                since: None
            }
        );
        assert_eq!(LogOptions::from_query(Some("tailLines=-1")).unwrap().tail_lines, None);
        assert!(LogOptions::from_query(Some("limitBytes=0")).is_err());
        assert!(LogOptions::from_query(Some("tailLines=x")).is_err());
        assert!(LogOptions::from_query(Some("sinceSeconds=10")).unwrap().since.is_some());
    }

    #[test]
    fn current_and_previous_runs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("logs/default_web_u1/c");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            find_run(root.path(), "default", "web", "c", false),
            Err(LookupError::ContainerNotStarted)
        );
        assert_eq!(
            find_run(root.path(), "default", "other", "c", false),
            Err(LookupError::PodNotFound)
        );
        std::fs::write(dir.join("0.log"), "").unwrap();
        assert_eq!(
            find_run(root.path(), "default", "web", "c", true),
            Err(LookupError::NoPrevious)
        );
        std::fs::write(dir.join("1.log"), "").unwrap();
        std::fs::write(dir.join("10.log"), "").unwrap();
        let cur = find_run(root.path(), "default", "web", "c", false).unwrap();
        assert_eq!(cur.log, dir.join("10.log"));
        assert_eq!(cur.run_dir, root.path().join("pods/u1/containers/c/10"));
        assert_eq!(
            find_run(root.path(), "default", "web", "c", true).unwrap().log,
            dir.join("1.log")
        );
        assert!(
            find_run(root.path(), "default", "web", "c", true)
                .unwrap()
                .newer_run_started()
        );
        assert!(!cur.newer_run_started());
    }
}
