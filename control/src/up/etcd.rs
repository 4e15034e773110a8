//! `rudder up --store etcd`: a three-member etcd cluster on loopback (Debian's
//! `etcd-server` binary), so that two API servers can share one store and their embedded
//! scheduler and controllers elect a leader, on one machine.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{Layout, host};
use crate::store::etcd_testing::ETCD_BINARY;

pub const MEMBERS: usize = 3;

/// One member's ports, chosen free at start.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free loopback port for etcd")?
        .port())
}

/// Starts the members (in the cluster's control cgroup, so teardown kills them) and
/// returns them with the client URLs, once the cluster answers a read through each
/// member.
pub async fn start(layout: &Layout, cgroup: &Path) -> Result<(Vec<(String, Child, PathBuf)>, Vec<String>)> {
    let binary = std::env::var_os("RUDDER_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| ETCD_BINARY.into());
    if !binary.exists() {
        bail!("{} not found: install Debian's etcd-server", binary.display());
    }
    let members = (1..=MEMBERS)
        .map(|k| {
            Ok(Member {
                name: format!("etcd-{k}"),
                client_url: format!("http://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for m in &members {
        let data = layout.data_dir.join("etcd").join(&m.name);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let log = layout.logs().join(format!("{}.log", m.name));
        let mut cmd = Command::new(&binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("rudder-{}", layout.name)]);
        let child =
            host::spawn(&mut cmd, None, cgroup, &log).with_context(|| format!("starting etcd member {}", m.name))?;
        children.push((format!("etcd member {}", m.name), child, log));
    }
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in &urls {
        loop {
            for (name, child, log) in &mut children {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("{name} exited ({status}); its log is {}", log.display());
                }
            }
            // A read through each member succeeds only once the cluster has a leader.
            if let Ok(mut client) = etcd_client::Client::connect([url.as_str()], None).await
                && client.get("/rudder-up-probe", None).await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the etcd cluster did not answer through {url} within 60 s; logs are in {}",
                    layout.logs().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok((children, urls))
}
