//! The pod network, host-gw style and NAT-less: a bridge (`cbr0`) holding the first
//! address of the node's podCIDR, one network namespace per pod joined to it by a veth,
//! pod addresses from a small file-backed allocator (like CNI's host-local), and a route
//! to every other node's podCIDR through that node's address. Kernel changes go through
//! iproute2, which every node has and whose errors name the cause.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use tokio::process::Command;

pub const BRIDGE: &str = "cbr0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running ip: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("podCIDR {0:?} is not an IPv4 CIDR")]
    BadCidr(String),
    #[error("podCIDR {cidr} has no free address left ({used} in use)")]
    Exhausted { cidr: String, used: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub async fn ip(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("ip").args(args).output().await.map_err(NetError::Spawn)?;
    if !out.status.success() {
        return Err(NetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An IPv4 CIDR, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadCidr(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if prefix > 30 {
            return Err(bad());
        }
        let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix as u32)
    }

    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }

    /// The bridge's address, the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Pod addresses, one file per address in use (named by the address, holding the pod's
/// uid), so a restarted agent knows what it handed out. The next address is the one
/// after the last handed out, so a deleted pod's address is not reused at once (stale
/// conntrack entries and caches would send its old traffic to the new pod).
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn io(&self, source: std::io::Error) -> NetError {
        NetError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// Address → uid of every allocation.
    pub fn allocations(&self) -> BTreeMap<Ipv4Addr, String> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() {
                out.insert(ip, fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// The pod's address: the one it already has, else a new one.
    pub fn allocate(&self, cidr: Cidr, uid: &str) -> Result<Ipv4Addr, NetError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let taken = self.allocations();
        if let Some((ip, _)) = taken.iter().find(|(_, u)| u.as_str() == uid) {
            return Ok(*ip);
        }
        let last = fs::read_to_string(self.dir.join("last"))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        // Usable: .2 .. broadcast-1 (.0 network, .1 gateway).
        let (first, count) = (2u32, cidr.size().saturating_sub(3));
        let start = last
            .map(|l| u32::from(l).wrapping_sub(u32::from(cidr.base)))
            .filter(|off| (first..first + count).contains(off))
            .map_or(0, |off| off - first + 1);
        for i in 0..count {
            let candidate = cidr.nth(first + (start + i) % count);
            if taken.contains_key(&candidate) {
                continue;
            }
            fs::write(self.dir.join(candidate.to_string()), uid).map_err(|e| self.io(e))?;
            fs::write(self.dir.join("last"), candidate.to_string()).map_err(|e| self.io(e))?;
            return Ok(candidate);
        }
        Err(NetError::Exhausted {
            cidr: cidr.to_string(),
            used: taken.len(),
        })
    }

    pub fn release(&self, uid: &str) {
        for (ip, owner) in self.allocations() {
            if owner == uid {
                let _ = fs::remove_file(self.dir.join(ip.to_string()));
            }
        }
    }
}

/// The bridge with the gateway address, and forwarding on: idempotent.
pub async fn ensure_bridge(cidr: Cidr) -> Result<(), NetError> {
    // A bridge without an address of its own takes its ports' lowest MAC, so it changed
    // whenever a pod came or went, and pods that had resolved the gateway sent their
    // packets to a MAC nobody had until their neighbour entry went stale: seconds in which
    // the node could not reach its own pods (seen as failed readiness probes and lost
    // connections in rolling updates). One fixed MAC, from the gateway address.
    let mac = gateway_mac(cidr.gateway());
    match ip(&["link", "show", BRIDGE]).await {
        Err(_) => {
            ip(&["link", "add", BRIDGE, "address", &mac, "type", "bridge"]).await?;
        }
        Ok(shown) if !shown.contains(&format!("link/ether {mac} ")) => {
            ip(&["link", "set", BRIDGE, "address", &mac]).await?;
        }
        Ok(_) => {}
    }
    let addr = format!("{}/{}", cidr.gateway(), cidr.prefix);
    let shown = ip(&["-4", "addr", "show", "dev", BRIDGE]).await?;
    if !shown.contains(&format!("inet {addr}")) {
        ip(&["addr", "add", &addr, "dev", BRIDGE]).await?;
    }
    ip(&["link", "set", BRIDGE, "up"]).await?;
    let fwd = Path::new("/proc/sys/net/ipv4/ip_forward");
    fs::write(fwd, "1").map_err(|source| NetError::Io {
        path: fwd.into(),
        source,
    })?;
    Ok(())
}

/// A locally administered unicast MAC holding the gateway's address.
fn gateway_mac(gateway: Ipv4Addr) -> String {
    let [a, b, c, d] = gateway.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The host side of a pod's veth: short (15 bytes at most) and stable per pod.
pub fn host_veth(uid: &str) -> String {
    let compact: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(11).collect();
    format!("veth{compact}")
}

/// Creates the pod's network namespace, veth and address; idempotent (a half-made
/// sandbox from a crash is removed and made again).
pub async fn create_sandbox(netns: &str, uid: &str, cidr: Cidr, addr: Ipv4Addr) -> Result<(), NetError> {
    let veth = host_veth(uid);
    if Path::new("/run/netns").join(netns).exists() {
        let ok = ip(&["-n", netns, "-4", "addr", "show", "dev", "eth0"])
            .await
            .is_ok_and(|s| s.contains(&format!("inet {addr}/")));
        if ok {
            return Ok(());
        }
        delete_sandbox(netns).await;
    }
    ip(&["netns", "add", netns]).await?;
    let result = async {
        ip(&[
            "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", &veth,
        ])
        .await?;
        ip(&["link", "set", &veth, "master", BRIDGE, "up"]).await?;
        // Hairpin: a pod reaching its own Service may be balanced to itself; the bridge must
        // send that frame back out of the port it came in on (kubelet's hairpin-veth).
        ip(&["link", "set", &veth, "type", "bridge_slave", "hairpin", "on"]).await?;
        ip(&["-n", netns, "link", "set", "lo", "up"]).await?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/{}", cidr.prefix),
            "dev",
            "eth0",
        ])
        .await?;
        ip(&["-n", netns, "link", "set", "eth0", "up"]).await?;
        ip(&[
            "-n",
            netns,
            "route",
            "add",
            "default",
            "via",
            &cidr.gateway().to_string(),
        ])
        .await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        delete_sandbox(netns).await;
    }
    result
}

/// Deletes the pod's network namespace (its veth goes with it).
pub async fn delete_sandbox(netns: &str) {
    if Path::new("/run/netns").join(netns).exists()
        && let Err(e) = ip(&["netns", "delete", netns]).await
    {
        tracing::warn!(netns, error = %e, "deleting pod network namespace");
    }
}

/// Keeps a route to every other node's podCIDR via that node's address; removes routes
/// of nodes that left. `routes` is what this agent installed so far.
pub async fn sync_routes(want: &BTreeMap<String, Ipv4Addr>, routes: &mut BTreeMap<String, Ipv4Addr>) {
    for (cidr, via) in want {
        if routes.get(cidr) == Some(via) {
            continue;
        }
        match ip(&["route", "replace", cidr, "via", &via.to_string()]).await {
            Ok(_) => {
                tracing::info!(%cidr, %via, "route to node pod CIDR");
                routes.insert(cidr.clone(), *via);
            }
            Err(e) => tracing::warn!(%cidr, %via, error = %e, "adding pod CIDR route"),
        }
    }
    let gone: Vec<String> = routes.keys().filter(|c| !want.contains_key(*c)).cloned().collect();
    for cidr in gone {
        let _ = ip(&["route", "del", &cidr]).await;
        routes.remove(&cidr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_gateway() {
        let c = Cidr::parse("10.244.3.7/24").expect("cidr");
        assert_eq!(c.to_string(), "10.244.3.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert!(Cidr::parse("10.244.3.0").is_err());
        assert!(Cidr::parse("fd00::/64").is_err());
    }

    #[test]
    fn ipam_allocates_round_robin_and_remembers() {
        let dir = tempfile::tempdir().expect("tmp");
        let ipam = Ipam::new(dir.path().join("ipam"));
        let cidr = Cidr::parse("10.244.1.0/29").expect("cidr");
        let a = ipam.allocate(cidr, "a").expect("a");
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate(cidr, "a").expect("again"), a, "same pod, same address");
        let b = ipam.allocate(cidr, "b").expect("b");
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        ipam.release("a");
        let c = ipam.allocate(cidr, "c").expect("c");
        assert_eq!(c, Ipv4Addr::new(10, 244, 1, 4), "a freed address is not reused at once");
        for uid in ["d", "e"] {
            ipam.allocate(cidr, uid).expect("fits");
        }
        // .2 was freed; it comes back only once the rest are used.
        assert_eq!(ipam.allocate(cidr, "f").expect("f"), Ipv4Addr::new(10, 244, 1, 2));
        assert!(matches!(ipam.allocate(cidr, "g"), Err(NetError::Exhausted { .. })));
    }

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        assert!(host_veth("6f1c2a9e-1234-4bcd-9f00-aabbccddeeff").len() <= 15);
    }
}
