//! `rudder-proxy run --config FILE`: kube-proxy's own `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`, YAML or JSON), so the `config.conf` of kubeadm's
//! `kube-proxy` ConfigMap works unchanged.
//!
//! The file is read field by field against the v1alpha1 type's field list (upstream
//! `k8s.io/kube-proxy/config/v1alpha1/types.go`): a field that type does not have, or a
//! value of the wrong shape, is refused naming its path. Zero values mean "the default", as
//! kube-proxy's defaulting treats them (kubeadm writes every field, most as `0s`, `""` or
//! `null`). Fields we do not act on are accepted, and the ones set to anything but their
//! zero value are collected in [`FileConfig::ignored`] for one warning at start.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Map, Value};

use super::config::{Bind, NodePortAddress, parse_bind_address, parse_duration, parse_nodeport_address};
use crate::{
    dataplane::Mode,
    model::{IpNet, parse_cidr},
};

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// kube-proxy's ports for the two servers, appended when an address has none.
const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not YAML or JSON: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown field \"{name}\" at {path}")]
    UnknownField { name: String, path: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigFileError {
    ConfigFileError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// One mode's section (`iptables`, `ipvs`, `nftables`): what we use of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeSection {
    pub sync_period: Option<Duration>,
    pub min_sync_period: Option<Duration>,
    pub masquerade_all: Option<bool>,
}

/// What a `KubeProxyConfiguration` asks of us. `None`: the field is unset or at its zero
/// value, so the flag's value (or its default) stays.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    pub mode: Option<Mode>,
    pub cluster_cidr: Option<Vec<IpNet>>,
    pub hostname_override: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub healthz_bind_address: Option<Bind>,
    pub metrics_bind_address: Option<Bind>,
    pub nodeport_addresses: Option<Vec<NodePortAddress>>,
    pub oom_score_adj: Option<i32>,
    pub iptables: ModeSection,
    pub ipvs: ModeSection,
    /// `ipvs.scheduler`; empty means kube-proxy's default (rr).
    pub ipvs_scheduler: Option<crate::dataplane::ipvs::Scheduler>,
    pub nftables: ModeSection,
    /// Fields set to something we do not implement, by path (with why, where useful).
    pub ignored: Vec<String>,
}

impl FileConfig {
    /// The section kube-proxy reads for `mode`: its own for ipvs and nftables, the
    /// iptables one for every other mode (upstream's conversion does the same; ebpf is ours).
    pub fn section(&self, mode: Mode) -> &ModeSection {
        match mode {
            Mode::Ipvs => &self.ipvs,
            Mode::Nftables => &self.nftables,
            Mode::Iptables | Mode::Ebpf => &self.iptables,
        }
    }
}

pub fn load(path: &Path) -> Result<FileConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigFileError::Syntax { message, .. } => ConfigFileError::Syntax {
            path: path.to_owned(),
            message,
        },
        other => other,
    })
}

/// Parses a `KubeProxyConfiguration` (YAML, of which JSON is a subset).
pub fn parse(text: &str) -> Result<FileConfig, ConfigFileError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| ConfigFileError::Syntax {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let mut top = Obj::new("", value)?;
    let mut out = FileConfig::default();
    let ignored = &mut Vec::new();

    for (key, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        match top.string(key)? {
            Some(v) if v == want => {}
            Some(v) => return Err(invalid(key, format!("{v:?} is not {want:?}"))),
            None => return Err(invalid(key, format!("missing (must be {want:?})"))),
        }
    }

    out.mode = match top.string("mode")?.as_deref() {
        None | Some("") => None,
        Some("iptables") => Some(Mode::Iptables),
        Some("ipvs") => Some(Mode::Ipvs),
        Some("nftables") => Some(Mode::Nftables),
        Some("ebpf") => Some(Mode::Ebpf),
        Some(other) => {
            return Err(invalid(
                "mode",
                format!("unknown mode {other:?} (iptables, ipvs, nftables, ebpf, or empty for the default)"),
            ));
        }
    };

    out.cluster_cidr = match top.string("clusterCIDR")? {
        Some(s) if !s.trim().is_empty() => Some(cidrs("clusterCIDR", &s)?),
        _ => None,
    };
    out.hostname_override = top.string("hostnameOverride")?.filter(|s| !s.trim().is_empty());

    // bindAddress decides the family of the servers' default addresses; as the node's
    // primary IP (its other meaning upstream) we do not use it.
    let bind_ip = match top.string("bindAddress")?.filter(|s| !s.is_empty()) {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(s) => {
            let ip: IpAddr = s
                .trim()
                .parse()
                .map_err(|_| invalid("bindAddress", format!("{s:?} is not an IP address")))?;
            if !ip.is_unspecified() {
                ignored.push("bindAddress (as the node's primary IP)".to_owned());
            }
            ip
        }
    };
    out.healthz_bind_address = server_address(&mut top, "healthzBindAddress", HEALTHZ_PORT, bind_ip, false)?;
    out.metrics_bind_address = server_address(&mut top, "metricsBindAddress", METRICS_PORT, bind_ip, true)?;
    // We always exit when a server cannot listen (kube-proxy does so only with this true).
    top.bool("bindAddressHardFail")?;
    ignore_true(&mut top, "enableProfiling", ignored)?;
    ignore_nonempty(&mut top, "showHiddenMetricsForVersion", ignored)?;
    ignore_true(&mut top, "windowsRunAsService", ignored)?;
    ignore_nonempty(&mut top, "portRange", ignored)?;
    ignore_duration(&mut top, "configSyncPeriod", ignored)?;

    if let Some(gates) = top.take("featureGates") {
        let Value::Object(map) = gates else {
            return Err(invalid(
                "featureGates",
                "must be a map of feature names to true or false",
            ));
        };
        let mut set = Vec::new();
        for (name, v) in map {
            match v {
                Value::Bool(b) => set.push(format!("{name}={b}")),
                other => {
                    return Err(invalid(
                        &format!("featureGates.{name}"),
                        format!("{other} is not true or false"),
                    ));
                }
            }
        }
        if !set.is_empty() {
            ignored.push(format!("featureGates ({})", set.join(", ")));
        }
    }

    let mut cc = top.object("clientConnection")?;
    out.kubeconfig = cc.string("kubeconfig")?.filter(|s| !s.is_empty()).map(PathBuf::from);
    ignore_nonempty(&mut cc, "acceptContentTypes", ignored)?;
    ignore_nonempty(&mut cc, "contentType", ignored)?;
    if cc.number("qps")?.is_some_and(|q| q != 0.0) {
        ignored.push(cc.field("qps"));
    }
    ignore_int(&mut cc, "burst", 0..=i64::from(i32::MAX), ignored)?;
    cc.finish()?;

    logging(top.object("logging")?, ignored)?;

    out.iptables = {
        let mut s = top.object("iptables")?;
        let section = mode_section(&mut s, true)?;
        masquerade_bit(&mut s, ignored)?;
        if s.bool("localhostNodePorts")? == Some(true) {
            ignored.push(s.field("localhostNodePorts"));
        }
        ignore_true(&mut s, "snatNodeInternalIP", ignored)?;
        s.finish()?;
        section
    };
    out.nftables = {
        let mut s = top.object("nftables")?;
        let section = mode_section(&mut s, true)?;
        masquerade_bit(&mut s, ignored)?;
        s.finish()?;
        section
    };
    out.ipvs = {
        let mut s = top.object("ipvs")?;
        let section = mode_section(&mut s, false)?;
        if let Some(name) = s.string("scheduler")?.filter(|n| !n.is_empty()) {
            let scheduler = <crate::dataplane::ipvs::Scheduler as clap::ValueEnum>::from_str(&name, false)
                .map_err(|_| invalid(&s.field("scheduler"), format!("{name:?} is not one of rr, lc, sh, mh")))?;
            out.ipvs_scheduler = Some(scheduler);
        }
        if let Some(list) = s.strings("excludeCIDRs")? {
            for c in &list {
                cidrs(&s.field("excludeCIDRs"), c)?;
            }
            if !list.is_empty() {
                ignored.push(s.field("excludeCIDRs"));
            }
        }
        ignore_true(&mut s, "strictARP", ignored)?;
        for key in ["tcpTimeout", "tcpFinTimeout", "udpTimeout"] {
            ignore_duration(&mut s, key, ignored)?;
        }
        s.finish()?;
        section
    };

    let mut winkernel = top.object("winkernel")?;
    for key in ["networkName", "sourceVip", "rootHnsEndpointName"] {
        ignore_nonempty(&mut winkernel, key, ignored)?;
    }
    for key in ["enableDSR", "forwardHealthCheckVip"] {
        ignore_true(&mut winkernel, key, ignored)?;
    }
    winkernel.finish()?;

    // We tell cluster traffic by clusterCIDR, kube-proxy's default way.
    match top.string("detectLocalMode")?.as_deref() {
        None | Some("" | "ClusterCIDR") => {}
        Some(m @ ("NodeCIDR" | "BridgeInterface" | "InterfaceNamePrefix")) => {
            ignored.push(format!(
                "detectLocalMode ({m}; rudder-proxy detects local traffic by clusterCIDR)"
            ));
        }
        Some(other) => {
            return Err(invalid(
                "detectLocalMode",
                format!("unknown mode {other:?} (ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix)"),
            ));
        }
    }
    let mut detect = top.object("detectLocal")?;
    for key in ["bridgeInterface", "interfaceNamePrefix"] {
        ignore_nonempty(&mut detect, key, ignored)?;
    }
    detect.finish()?;

    if let Some(list) = top.strings("nodePortAddresses")? {
        let mut addresses = Vec::new();
        for (i, s) in list.iter().enumerate() {
            // kube-proxy's keywords, spelled out as the CIDRs they stand for.
            let expanded: &[&str] = match s.trim() {
                "all" => &["0.0.0.0/0", "::/0"],
                "localhost" => &["127.0.0.0/8", "::1/128"],
                other => &[other],
            };
            for item in expanded {
                addresses.push(
                    parse_nodeport_address(item)
                        .map_err(|reason| invalid(&format!("nodePortAddresses[{i}]"), reason))?,
                );
            }
        }
        out.nodeport_addresses = (!addresses.is_empty()).then_some(addresses);
    }

    out.oom_score_adj = top
        .int("oomScoreAdj", -1000..=1000)?
        .map(|v| i32::try_from(v).unwrap_or_default());

    let mut ct = top.object("conntrack")?;
    ignore_int(&mut ct, "maxPerCore", 0..=i64::from(i32::MAX), ignored)?;
    ignore_int(&mut ct, "min", 0..=i64::from(i32::MAX), ignored)?;
    for key in [
        "tcpEstablishedTimeout",
        "tcpCloseWaitTimeout",
        "udpTimeout",
        "udpStreamTimeout",
    ] {
        ignore_duration(&mut ct, key, ignored)?;
    }
    ignore_true(&mut ct, "tcpBeLiberal", ignored)?;
    ct.finish()?;

    // Removed from the type in later releases; older kubeadm ConfigMaps still carry them.
    for key in ["udpIdleTimeout", "resourceContainer"] {
        if top.take(key).is_some() {
            ignored.push(format!("{key} (removed from kube-proxy)"));
        }
    }

    top.finish()?;
    out.ignored = std::mem::take(ignored);
    Ok(out)
}

/// `syncPeriod`, `minSyncPeriod` (zero: the default) and `masqueradeAll`.
fn mode_section(s: &mut Obj, has_masquerade_all: bool) -> Result<ModeSection, ConfigFileError> {
    let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero());
    let section = ModeSection {
        sync_period: nonzero(s.duration("syncPeriod")?),
        min_sync_period: nonzero(s.duration("minSyncPeriod")?),
        masquerade_all: if has_masquerade_all {
            s.bool("masqueradeAll")?
        } else {
            None
        },
    };
    if let (Some(min), Some(max)) = (section.min_sync_period, section.sync_period)
        && min > max
    {
        return Err(invalid(
            &s.field("minSyncPeriod"),
            format!("{min:?} is longer than {} ({max:?})", s.field("syncPeriod")),
        ));
    }
    Ok(section)
}

/// Our masquerade mark is kube-proxy's default, bit 14 (0x4000).
fn masquerade_bit(s: &mut Obj, ignored: &mut Vec<String>) -> Result<(), ConfigFileError> {
    if s.int("masqueradeBit", 0..=31)?.is_some_and(|b| b != 14) {
        ignored.push(format!("{} (the mark is bit 14)", s.field("masqueradeBit")));
    }
    Ok(())
}

/// `healthzBindAddress`/`metricsBindAddress`: `ip:port`, `:port`, or an IP alone (the
/// default port appended); empty: the default for `bind_ip`'s family.
fn server_address(
    top: &mut Obj,
    key: &str,
    port: u16,
    bind_ip: IpAddr,
    loopback: bool,
) -> Result<Option<Bind>, ConfigFileError> {
    match top.string(key)?.filter(|s| !s.trim().is_empty()) {
        None if bind_ip.is_ipv4() => Ok(None),
        None => {
            let ip = if loopback {
                Ipv6Addr::LOCALHOST
            } else {
                Ipv6Addr::UNSPECIFIED
            };
            Ok(Some(Bind(Some(SocketAddr::new(IpAddr::V6(ip), port)))))
        }
        Some(s) => {
            if let Ok(ip) = s.trim().parse::<IpAddr>() {
                return Ok(Some(Bind(Some(SocketAddr::new(ip, port)))));
            }
            parse_bind_address(&s).map(Some).map_err(|reason| invalid(key, reason))
        }
    }
}

fn cidrs(field: &str, s: &str) -> Result<Vec<IpNet>, ConfigFileError> {
    s.split(',')
        .map(|c| parse_cidr(c).map_err(|e| invalid(field, e.to_string())))
        .collect()
}

fn logging(mut l: Obj, ignored: &mut Vec<String>) -> Result<(), ConfigFileError> {
    if let Some(f) = l.string("format")?
        && !matches!(f.as_str(), "" | "text")
    {
        ignored.push(format!("{} ({f})", l.field("format")));
    }
    // A duration string or, as component-base also takes, a number of nanoseconds.
    if let Some(v) = l.take("flushFrequency") {
        let field = l.field("flushFrequency");
        match v {
            Value::Number(n) if n.as_u64().is_some() => {}
            Value::String(s) => {
                go_duration(&field, &s)?;
            }
            other => return Err(invalid(&field, format!("{other} is not a duration"))),
        }
    }
    ignore_int(&mut l, "verbosity", 0..=i64::from(u32::MAX), ignored)?;
    if let Some(v) = l.take("vmodule") {
        match v {
            Value::Array(a) if a.is_empty() => {}
            Value::Array(_) => ignored.push(l.field("vmodule")),
            other => return Err(invalid(&l.field("vmodule"), format!("{other} is not a list"))),
        }
    }
    let mut options = l.object("options")?;
    for format in ["text", "json"] {
        let mut o = options.object(format)?;
        ignore_true(&mut o, "splitStream", ignored)?;
        // A quantity ("0", "64Ki") or a number.
        match o.take("infoBufferSize") {
            None | Some(Value::String(_) | Value::Number(_)) => {}
            Some(other) => {
                return Err(invalid(
                    &o.field("infoBufferSize"),
                    format!("{other} is not a quantity"),
                ));
            }
        }
        o.finish()?;
    }
    options.finish()?;
    l.finish()
}

fn go_duration(field: &str, s: &str) -> Result<Duration, ConfigFileError> {
    parse_duration(s).map_err(|e| {
        // The parser's message quotes the value too; say it once.
        let quoted = format!("{s:?}");
        let reason = e
            .strip_prefix(quoted.as_str())
            .unwrap_or(&e)
            .trim_start_matches([':', ' ']);
        invalid(field, format!("invalid duration {quoted}: {reason}"))
    })
}

fn ignore_true(o: &mut Obj, key: &str, ignored: &mut Vec<String>) -> Result<(), ConfigFileError> {
    if o.bool(key)? == Some(true) {
        ignored.push(o.field(key));
    }
    Ok(())
}

fn ignore_nonempty(o: &mut Obj, key: &str, ignored: &mut Vec<String>) -> Result<(), ConfigFileError> {
    if o.string(key)?.is_some_and(|s| !s.is_empty()) {
        ignored.push(o.field(key));
    }
    Ok(())
}

fn ignore_duration(o: &mut Obj, key: &str, ignored: &mut Vec<String>) -> Result<(), ConfigFileError> {
    if o.duration(key)?.is_some_and(|d| !d.is_zero()) {
        ignored.push(o.field(key));
    }
    Ok(())
}

fn ignore_int(
    o: &mut Obj,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    ignored: &mut Vec<String>,
) -> Result<(), ConfigFileError> {
    if o.int(key, range)?.is_some_and(|v| v != 0) {
        ignored.push(o.field(key));
    }
    Ok(())
}

/// One object of the file, its fields taken one by one; what is left at [`Obj::finish`]
/// is a field the type does not have. A JSON `null` reads as absent, as in Go.
struct Obj {
    path: String,
    map: Map<String, Value>,
}

impl Obj {
    fn new(path: &str, value: Value) -> Result<Self, ConfigFileError> {
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_owned(),
                map,
            }),
            Value::Null => Ok(Self {
                path: path.to_owned(),
                map: Map::new(),
            }),
            other => Err(invalid(
                if path.is_empty() { "the document" } else { path },
                format!("must be a map of fields, not {other}"),
            )),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn object(&mut self, key: &str) -> Result<Obj, ConfigFileError> {
        let field = self.field(key);
        Obj::new(&field, self.take(key).unwrap_or(Value::Null))
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(&self.field(key), format!("{other} is not a string"))),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(invalid(&self.field(key), format!("{other} is not true or false"))),
        }
    }

    fn number(&mut self, key: &str) -> Result<Option<f64>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_f64().is_some() => Ok(n.as_f64()),
            Some(other) => Err(invalid(&self.field(key), format!("{other} is not a number"))),
        }
    }

    fn int(&mut self, key: &str, range: std::ops::RangeInclusive<i64>) -> Result<Option<i64>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if range.contains(&v) => Ok(Some(v)),
                _ => Err(invalid(
                    &self.field(key),
                    format!("{n} is not an integer from {} to {}", range.start(), range.end()),
                )),
            },
            Some(other) => Err(invalid(&self.field(key), format!("{other} is not an integer"))),
        }
    }

    /// A Go duration string (`30s`, `1m30s`), as `metav1.Duration` takes it.
    fn duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => go_duration(&self.field(key), &s).map(Some),
            Some(other) => Err(invalid(
                &self.field(key),
                format!("{other} is not a duration (a string such as \"30s\")"),
            )),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(invalid(
                        &format!("{}[{i}]", self.field(key)),
                        format!("{other} is not a string"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(invalid(&self.field(key), format!("{other} is not a list"))),
        }
    }

    fn finish(self) -> Result<(), ConfigFileError> {
        match self.map.into_iter().next() {
            None => Ok(()),
            Some((name, _)) => Err(ConfigFileError::UnknownField {
                path: if self.path.is_empty() {
                    name.clone()
                } else {
                    format!("{}.{name}", self.path)
                },
                name,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM_CONFIGMAP: &str = include_str!("testdata/kubeadm-kube-proxy-configmap.yaml");

    fn kubeadm_data(key: &str) -> String {
        let cm: Value = serde_saphyr::from_str(KUBEADM_CONFIGMAP).expect("the fixture parses");
        cm["data"][key].as_str().expect("the key").to_owned()
    }

    fn doc(body: &str) -> String {
        format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}")
    }

    fn err(body: &str) -> String {
        parse(&doc(body)).expect_err("must be refused").to_string()
    }

    #[test]
    fn kubeadms_configmap_reads_unchanged() {
        let c = parse(&kubeadm_data("config.conf")).expect("kubeadm's config.conf parses");
        assert_eq!(c.mode, None, "mode \"\" means the default");
        assert_eq!(c.cluster_cidr, Some(vec!["10.244.0.0/16".parse().unwrap()]));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf")));
        assert_eq!(c.hostname_override, None);
        assert_eq!((c.healthz_bind_address, c.metrics_bind_address), (None, None));
        assert_eq!(c.nodeport_addresses, None);
        let section = c.section(Mode::Nftables);
        assert_eq!(
            (section.sync_period, section.min_sync_period),
            (None, None),
            "0s periods mean the defaults"
        );
        assert!(
            c.ignored.is_empty(),
            "kubeadm's defaults ask for nothing we lack: {:?}",
            c.ignored
        );
        // Its kubeconfig.conf (server, CA file, service account token file) is one our
        // client reads.
        let kc = kube::config::Kubeconfig::from_yaml(&kubeadm_data("kubeconfig.conf")).expect("kubeconfig.conf");
        let user = kc.auth_infos[0].auth_info.as_ref().expect("a user");
        assert_eq!(
            user.token_file.as_deref(),
            Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
    }

    #[test]
    fn json_reads_like_yaml() {
        let c = parse(
            r#"{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                "mode": "ipvs", "ipvs": {"syncPeriod": "10s", "minSyncPeriod": "2s"},
                "clusterCIDR": "10.244.0.0/16,fd00:10:244::/56"}"#,
        )
        .expect("JSON parses");
        assert_eq!(c.mode, Some(Mode::Ipvs));
        assert_eq!(c.cluster_cidr.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.section(Mode::Ipvs).sync_period, Some(Duration::from_secs(10)));
        assert_eq!(c.section(Mode::Ipvs).min_sync_period, Some(Duration::from_secs(2)));
        assert_eq!(c.section(Mode::Nftables).sync_period, None);
    }

    #[test]
    fn modes_map_to_ours() {
        for (name, mode) in [
            ("iptables", Some(Mode::Iptables)),
            ("ipvs", Some(Mode::Ipvs)),
            ("nftables", Some(Mode::Nftables)),
            ("ebpf", Some(Mode::Ebpf)),
            ("", None),
        ] {
            assert_eq!(parse(&doc(&format!("mode: \"{name}\""))).unwrap().mode, mode, "{name}");
        }
        assert!(err("mode: userspace").starts_with("mode: unknown mode \"userspace\""));
        assert!(err("mode: kernelspace").contains("unknown mode"));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        assert_eq!(err("conntrack:\n  foo: 1"), "unknown field \"foo\" at conntrack.foo");
        assert_eq!(err("foo: bar"), "unknown field \"foo\" at foo");
        assert_eq!(err("syncPeriod: 1s"), "unknown field \"syncPeriod\" at syncPeriod");
        assert_eq!(
            err("logging:\n  options:\n    text:\n      bufferSize: 1"),
            "unknown field \"bufferSize\" at logging.options.text.bufferSize"
        );
        // Field names are case-sensitive, as in kube-proxy's strict decoding.
        assert_eq!(
            err("ClusterCIDR: 10.0.0.0/8"),
            "unknown field \"ClusterCIDR\" at ClusterCIDR"
        );
        // A null unknown field is still unknown.
        assert_eq!(
            err("ipvs:\n  schedular: null"),
            "unknown field \"schedular\" at ipvs.schedular"
        );
    }

    #[test]
    fn invalid_values_are_refused_naming_the_field() {
        let e = err("iptables:\n  syncPeriod: 5x");
        assert!(e.starts_with("iptables.syncPeriod: invalid duration \"5x\""), "{e}");
        let e = err("nftables:\n  minSyncPeriod: 30");
        assert!(e.starts_with("nftables.minSyncPeriod: 30 is not a duration"), "{e}");
        let e = err("clusterCIDR: 10.244.0.0/33");
        assert!(e.starts_with("clusterCIDR: \"10.244.0.0/33\" is not a CIDR"), "{e}");
        let e = err("healthzBindAddress: nowhere:1");
        assert!(e.starts_with("healthzBindAddress: "), "{e}");
        let e = err("oomScoreAdj: -1001");
        assert!(
            e.starts_with("oomScoreAdj: -1001 is not an integer from -1000 to 1000"),
            "{e}"
        );
        let e = err("iptables:\n  masqueradeBit: 32");
        assert!(e.starts_with("iptables.masqueradeBit: "), "{e}");
        let e = err("nodePortAddresses: [primary, ten]");
        assert!(e.starts_with("nodePortAddresses[1]: \"ten\" is not a CIDR"), "{e}");
        let e = err("featureGates:\n  Foo: yes please");
        assert!(e.starts_with("featureGates.Foo: "), "{e}");
        let e = err("iptables:\n  syncPeriod: 10s\n  minSyncPeriod: 1m");
        assert!(
            e.starts_with("iptables.minSyncPeriod: 60s is longer than iptables.syncPeriod"),
            "{e}"
        );
        let e = err("iptables: [1]");
        assert!(e.starts_with("iptables: must be a map of fields"), "{e}");
        let e = parse("kind: KubeProxyConfiguration").unwrap_err().to_string();
        assert!(e.starts_with("apiVersion: missing"), "{e}");
        let e = parse("apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("apiVersion: \"kubeproxy.config.k8s.io/v1beta1\" is not"),
            "{e}"
        );
        let e = parse("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kind: "), "{e}");
    }

    #[test]
    fn fields_we_lack_are_listed_when_set() {
        let c = parse(&doc("conntrack:\n  maxPerCore: 32768\n  tcpBeLiberal: true\nipvs:\n  strictARP: true\n  scheduler: lc\nfeatureGates:\n  Foo: true\nudpIdleTimeout: 250ms\ndetectLocalMode: NodeCIDR\niptables:\n  masqueradeBit: 14\nnftables:\n  masqueradeBit: 13"))
            .expect("parses");
        assert_eq!(
            c.ignored,
            [
                "featureGates (Foo=true)",
                "nftables.masqueradeBit (the mark is bit 14)",
                "ipvs.strictARP",
                "detectLocalMode (NodeCIDR; rudder-proxy detects local traffic by clusterCIDR)",
                "conntrack.maxPerCore",
                "conntrack.tcpBeLiberal",
                "udpIdleTimeout (removed from kube-proxy)",
            ]
        );
        assert_eq!(
            c.ipvs_scheduler,
            Some(crate::dataplane::ipvs::Scheduler::LeastConnection)
        );
    }

    #[test]
    fn an_unknown_ipvs_scheduler_is_refused_naming_the_field() {
        let err = parse(&doc("ipvs:\n  scheduler: wlc2"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("ipvs.scheduler") && err.contains("wlc2"), "{err}");
    }

    #[test]
    fn server_addresses_follow_kube_proxys_defaults() {
        let c = parse(&doc("bindAddress: \"::\"")).unwrap();
        assert_eq!(c.healthz_bind_address, Some(Bind(Some("[::]:10256".parse().unwrap()))));
        assert_eq!(c.metrics_bind_address, Some(Bind(Some("[::1]:10249".parse().unwrap()))));
        let c = parse(&doc("healthzBindAddress: 127.0.0.1\nmetricsBindAddress: 0.0.0.0:9999")).unwrap();
        assert_eq!(
            c.healthz_bind_address,
            Some(Bind(Some("127.0.0.1:10256".parse().unwrap())))
        );
        assert_eq!(
            c.metrics_bind_address,
            Some(Bind(Some("0.0.0.0:9999".parse().unwrap())))
        );
        let c = parse(&doc("bindAddress: 10.0.0.5")).unwrap();
        assert_eq!(c.ignored, ["bindAddress (as the node's primary IP)"]);
        let c = parse(&doc("nodePortAddresses: [all]")).unwrap();
        assert_eq!(c.nodeport_addresses.map(|a| a.len()), Some(2));
    }
}
