//! `rudder-dns-bench RUDDER [SIZES...]`: the cluster DNS under load, as `cargo xtask bench
//! --suite dns` runs it. For each size: a real `rudder server` with that many Services, the
//! real `rudder dns` watching it, then UDP clients asking for random Services' names for a
//! few seconds. Prints one JSON line: queries per second, latency percentiles, and the DNS
//! server's resident memory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, api::PostParams};
use serde_json::json;

/// Concurrent clients, each with one socket and one query in flight.
const CLIENTS: usize = 16;
const DURATION: Duration = Duration::from_secs(10);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn query(name: &str, id: u16) -> Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn one_size(rudder: &Path, size: usize) -> Result<serde_json::Value> {
    let dir = tempfile_dir()?;
    let api_port = free_port()?;
    let _server = Killed(
        Command::new(rudder)
            .args(["server", "--controllers=false", "--scheduler=false"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rudder server")?,
    );
    let kubeconfig = dir.join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        if kubeconfig.exists()
            && let Ok(c) = client(&kubeconfig).await
            && c.apiserver_version().await.is_ok()
        {
            break c;
        }
        if Instant::now() > deadline {
            bail!("the API server did not start within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..size)
        .map(|k| {
            let services = services.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{k}")},
                    "spec": {"ports": [{"name": "http", "port": 80}]},
                }))?;
                services.create(&PostParams::default(), &svc).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    eprintln!("{size} Services created in {:.1} s", created.elapsed().as_secs_f64());

    let dns_port = free_port()?;
    let dns_addr = SocketAddr::from(([127, 0, 0, 1], dns_port));
    let dns = Killed(
        Command::new(rudder)
            .arg("dns")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--listen",
                &dns_addr.to_string(),
                "--upstream",
                "none",
                "--health-listen",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rudder dns")?,
    );
    let last = format!("svc-{}.default.svc.cluster.local.", size - 1);
    let started = Instant::now();
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            rudder_control::dns::forward::exchange(dns_addr, &query(&last, 1)?, false),
        )
        .await;
        if let Ok(Ok(m)) = ok
            && !m.answers.is_empty()
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("rudder dns did not answer for {last} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced_s = started.elapsed().as_secs_f64();
    let rss_idle = rss_kib(dns.0.id());

    let names: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..size)
            .map(|k| query(&format!("svc-{k}.default.svc.cluster.local."), 0))
            .collect::<Result<_>>()?,
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let names = Arc::clone(&names);
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(dns_addr).await?;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut buf = vec![0u8; 4096];
            let mut k = c;
            let mut id: u16 = 0;
            while start.elapsed() < DURATION {
                k = (k * 7919 + 13) % names.len();
                id = id.wrapping_add(1);
                let mut q = names[k].clone();
                q[..2].copy_from_slice(&id.to_be_bytes());
                let t = Instant::now();
                socket.send(&q).await?;
                let answered = loop {
                    match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                        Ok(Ok(n)) => match Message::from_vec(&buf[..n]) {
                            Ok(m) if m.metadata.id == id => {
                                break m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty();
                            }
                            _ => continue,
                        },
                        _ => break false,
                    }
                };
                if answered {
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let rss_loaded = rss_kib(dns.0.id());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "services": size,
        "clients": CLIENTS,
        "seconds": elapsed,
        "queries": latencies.len(),
        "errors": errors,
        "qps": latencies.len() as f64 / elapsed,
        "p50_us": percentile(&latencies, 0.50),
        "p99_us": percentile(&latencies, 0.99),
        "max_us": latencies.last().copied().unwrap_or(f64::NAN),
        "sync_s": synced_s,
        "rss_idle_mib": rss_idle.map(|k| k as f64 / 1024.0),
        "rss_loaded_mib": rss_loaded.map(|k| k as f64 / 1024.0),
    }))
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rudder-dns-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rudder = PathBuf::from(args.next().context("usage: rudder-dns-bench RUDDER [SIZES...]")?);
    let mut sizes: Vec<usize> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![1000, 10000];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = Vec::new();
    for size in sizes {
        let r = runtime.block_on(one_size(&rudder, size))?;
        eprintln!("{r}");
        results.push(r);
    }
    println!("{}", json!({"benchmark": "dns", "results": results}));
    Ok(())
}
