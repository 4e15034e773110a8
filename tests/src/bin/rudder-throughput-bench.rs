//! `rudder-throughput-bench`: end to end through a ClusterIP in the netns cluster, per
//! mode, beside the same client talking to the pod IP directly (the physical limit).
//!
//! - `run`: the whole benchmark (two nodes, the API server, a backend pod on n2, a client
//!   pod on n1; for each mode the proxies, a Service, then every load kind against the pod
//!   IP and the ClusterIP back to back). Prints one JSON document.
//! - `serve [PORT]`: the backend: HTTP/1.1 with keep-alive and a UDP echo on one port
//!   (also the steady backend of the proxy-restart test).
//! - `client`: one load kind for a while, as a process of the client pod inside node n1's
//!   cgroup (where a real pod's processes live, so the ebpf mode's socket LB applies).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rudder_tests::{
    Cluster, InNetns,
    e2e::{ControlPlane, NodeCgroup, PinDir, Proxy, cluster_ip},
    netns::netns_exec,
};
use serde_json::{Value, json};

const PORT: u16 = 8080;
const KINDS: [&str; 3] = ["http-keepalive", "http-new-connection", "udp"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(args.get(1).map_or(Ok(PORT), |p| p.parse())?),
        Some("client") => {
            let [_, target, kind, conns, secs] = args.as_slice() else {
                bail!("client TARGET KIND CONNS SECS");
            };
            let r = client(
                target.parse()?,
                kind,
                conns.parse()?,
                Duration::from_secs_f64(secs.parse()?),
            )?;
            println!("{r}");
            Ok(())
        }
        Some("run") => {
            let modes = args.get(1).map_or("ebpf,nftables,iptables", String::as_str);
            let secs: f64 = args.get(2).map_or(Ok(5.0), |s| s.parse())?;
            let r = run(&modes.split(',').collect::<Vec<_>>(), secs)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        _ => bail!("usage: rudder-throughput-bench run [MODES] [SECS] | serve | client TARGET KIND CONNS SECS"),
    }
}

fn serve(port: u16) -> Result<()> {
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming().flatten() {
        thread::spawn(move || http_conn(stream));
    }
    Ok(())
}

/// Answers requests on one connection until the client closes it.
fn http_conn(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    loop {
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line.eq_ignore_ascii_case("connection: close\r\n") {
                close = true;
            }
            if line == "\r\n" {
                break;
            }
        }
        let conn = if close { "close" } else { "keep-alive" };
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: {conn}\r\n\r\nok\n"
        )?;
        // On "close" the client closes first (it read the whole response), so TIME_WAIT
        // stays with the client, whose port choice knows about it, as with real
        // load generators; the server closing first would make the client's reused ports
        // collide with the server's TIME_WAIT and stall on retransmits.
        let _ = close;
    }
}

/// Reads one response (head and a body of Content-Length bytes).
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    let mut len = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)
}

fn client(target: SocketAddr, kind: &str, conns: usize, secs: Duration) -> Result<Value> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, kind) = (Arc::clone(&stop), kind.to_owned());
            thread::spawn(move || -> (Vec<u32>, u64) {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let timeout = Some(Duration::from_secs(2));
                match kind.as_str() {
                    "http-keepalive" => {
                        let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                            return (lat, 1);
                        };
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(timeout);
                        let Ok(r) = s.try_clone() else { return (lat, 1) };
                        let (mut w, mut r) = (s, BufReader::new(r));
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            if w.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").is_err()
                                || read_response(&mut r).is_err()
                            {
                                errors += 1;
                                break;
                            }
                            lat.push(t.elapsed().as_micros() as u32);
                        }
                    }
                    "http-new-connection" => {
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            let ok = (|| -> std::io::Result<()> {
                                let s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                                s.set_nodelay(true)?;
                                s.set_read_timeout(timeout)?;
                                let mut w = s.try_clone()?;
                                w.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
                                read_response(&mut BufReader::new(s))
                            })();
                            match ok {
                                Ok(()) => lat.push(t.elapsed().as_micros() as u32),
                                Err(_) => errors += 1,
                            }
                        }
                    }
                    _ => {
                        let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                            return (lat, 1);
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            if s.send_to(b"ping", target).is_ok() && s.recv_from(&mut buf).is_ok() {
                                lat.push(t.elapsed().as_micros() as u32);
                            } else {
                                errors += 1;
                            }
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(
        json!({"kind": kind, "target": target.to_string(), "requests": all.len(), "errors": errors,
              "per_s": all.len() as f64 / elapsed, "p50_us": pct(0.5), "p99_us": pct(0.99)}),
    )
}

/// Runs `client` as a process of the client pod in n1's cgroup.
fn load(netns: &str, cgroup: &NodeCgroup, target: SocketAddr, kind: &str, secs: f64) -> Result<Value> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["client", &target.to_string(), kind, "2", &secs.to_string()]);
    let out = cgroup
        .command(netns_exec(netns, &cmd))
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("client {kind} {target} failed: {}", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn run(modes: &[&str], secs: f64) -> Result<Value> {
    let cluster = Cluster::new(2).context("a two-node netns cluster")?;
    let control_plane = ControlPlane::start(&cluster);
    let api = control_plane.api();
    for node in cluster.nodes() {
        api.register_node(node);
    }
    let backend = cluster.add_pod(2, "backend").context("backend pod")?;
    let mut server = Command::new(std::env::current_exe()?);
    server.arg("serve");
    let _server = backend.spawn(&server).context("start the backend")?;
    api.register_pod(&backend, cluster.node(2), json!({"app": "bench"}));
    let client_pod = cluster.add_pod(1, "client").context("client pod")?;
    let cgroups: Vec<NodeCgroup> = cluster.nodes().iter().map(|n| NodeCgroup::create(n.netns())).collect();
    // The client opens thousands of connections per second to one address: it may reuse
    // ports still in TIME_WAIT (timestamps keep that safe), from the whole port range.
    for (key, value) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65535"),
    ] {
        client_pod
            .run(Command::new("sysctl").args(["-qw", &format!("{key}={value}")]))
            .with_context(|| format!("set {key} in the client pod"))?;
    }
    // Thousands of short connections per second leave conntrack entries in TIME_WAIT for
    // two minutes on each node (forwarded traffic, every mode and the direct path alike);
    // a full table would throttle later measurements, so they expire at once here.
    for node in cluster.nodes() {
        node.run(Command::new("sysctl").args(["-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"]))
            .context("shorten conntrack TIME_WAIT")?;
    }
    let direct = SocketAddr::from((backend.ip(), PORT));
    let mut results = Vec::new();
    for mode in modes {
        let pins: Vec<PinDir> = cluster.nodes().iter().map(|n| PinDir::for_node(n.netns())).collect();
        let mut proxies: Vec<Proxy> = cluster
            .nodes()
            .iter()
            .zip(cgroups.iter().zip(&pins))
            .map(|(node, (cg, pin))| {
                let extra: Vec<String> = if *mode == "ebpf" {
                    vec![
                        "--cgroup-path".into(),
                        cg.relative.to_string_lossy().into_owned(),
                        "--bpf-root".into(),
                        pin.0.to_string_lossy().into_owned(),
                    ]
                } else {
                    Vec::new()
                };
                Proxy::start(node, mode, &control_plane.kubeconfig, &extra)
            })
            .collect();
        for p in &mut proxies {
            p.wait_healthy(Duration::from_secs(30));
        }
        let svc = api.create_service(
            json!({"metadata": {"name": "bench"}, "spec": {"selector": {"app": "bench"}, "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": PORT},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": PORT}]}}),
        );
        let vip = SocketAddr::new(cluster_ip(&svc), 80);
        let deadline = Instant::now() + Duration::from_secs(20);
        while load(client_pod.netns(), &cgroups[0], vip, "http-keepalive", 0.2)?["requests"]
            .as_u64()
            .unwrap_or(0)
            == 0
        {
            if Instant::now() > deadline {
                bail!("{mode}: the ClusterIP never answered");
            }
            thread::sleep(Duration::from_millis(200));
        }
        for kind in KINDS {
            eprintln!("throughput: {mode} {kind} ...");
            // Direct and ClusterIP alternate, ROUNDS times, ending with direct: each
            // ClusterIP run is divided by the mean of the direct runs on either side, so
            // drift on the machine cancels; the median of the rounds is the figure.
            let mut direct_runs = vec![load(client_pod.netns(), &cgroups[0], direct, kind, secs)?];
            let mut vip_runs = Vec::new();
            let mut ratios = Vec::new();
            let per_s = |v: &Value| v["per_s"].as_f64().unwrap_or(0.0);
            for _ in 0..ROUNDS {
                let c = load(client_pod.netns(), &cgroups[0], vip, kind, secs)?;
                let d = load(client_pod.netns(), &cgroups[0], direct, kind, secs)?;
                let around = (per_s(&d) + per_s(direct_runs.last().unwrap_or(&d))) / 2.0;
                ratios.push(per_s(&c) / around);
                vip_runs.push(c);
                direct_runs.push(d);
            }
            let ratio = median(&ratios);
            let summary = |runs: &[Value]| {
                let field = |k: &str| {
                    median(
                        &runs
                            .iter()
                            .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                            .collect::<Vec<_>>(),
                    )
                };
                json!({"per_s": field("per_s"), "p50_us": field("p50_us"), "p99_us": field("p99_us"), "runs": runs})
            };
            let (d, c) = (summary(&direct_runs), summary(&vip_runs));
            eprintln!(
                "throughput:   direct {:.0}/s, ClusterIP {:.0}/s, ratio {ratio:.3} (rounds {ratios:.3?})",
                d["per_s"].as_f64().unwrap_or(0.0),
                c["per_s"].as_f64().unwrap_or(0.0)
            );
            results.push(json!({"mode": mode, "kind": kind, "direct": d, "cluster_ip": c, "ratio_to_direct": ratio, "round_ratios": ratios}));
        }
        api.delete_service("bench");
        for p in proxies {
            drop(p);
        }
        drop(pins);
        // Let the next mode's proxies start on a clean node (they remove other modes' rules too).
        thread::sleep(Duration::from_secs(1));
    }
    Ok(
        json!({"benchmark": "throughput", "seconds_per_measurement": secs, "rounds": ROUNDS, "client_connections": 2, "results": results}),
    )
}

/// Direct/ClusterIP pairs per mode and load.
const ROUNDS: usize = 3;

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
