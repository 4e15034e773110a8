//! A pod's `/etc/resolv.conf`, as the kubelet writes it for the pod's `dnsPolicy`:
//!
//! - `ClusterFirst` (the default): the cluster DNS, the namespace's search path before the
//!   host's, `ndots:5`; a hostNetwork pod gets `Default` instead, as does every pod when the
//!   node has no cluster DNS;
//! - `ClusterFirstWithHostNet`: `ClusterFirst` even with hostNetwork;
//! - `Default`: the node's own resolv.conf;
//! - `None`: only the pod's `dnsConfig`.
//!
//! `dnsConfig` is merged on top of any of them (nameservers and searches appended, options
//! replacing those of the same name), as in the kubelet's `getPodDNS`.

use k8s_openapi::api::core::v1::PodSpec;

/// The kubelet's limits (the resolver's own).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(str::to_owned)),
                // The last `search` (or `domain`) line wins, as in the resolver.
                Some("search" | "domain") => conf.searches = words.map(str::to_owned).collect(),
                Some("options") => conf.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        conf
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// `spec`'s resolv.conf in namespace `ns`, given the node's cluster DNS and domain and its
/// own resolv.conf.
pub fn for_pod(spec: &PodSpec, ns: &str, cluster_dns: Option<&str>, cluster_domain: &str, host: &str) -> ResolvConf {
    let host = ResolvConf::parse(host);
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut conf = match (policy, cluster_dns) {
        ("None", _) => ResolvConf::default(),
        (_, Some(dns)) if cluster_first => {
            let d = cluster_domain.trim_end_matches('.');
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_owned()];
            push_unique(&mut searches, host.searches.clone());
            ResolvConf {
                nameservers: vec![dns.to_owned()],
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        _ => host,
    };
    if let Some(extra) = &spec.dns_config {
        push_unique(&mut conf.nameservers, extra.nameservers.clone().unwrap_or_default());
        push_unique(&mut conf.searches, extra.searches.clone().unwrap_or_default());
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else { continue };
            let rendered = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_owned(),
            };
            conf.options.retain(|existing| option_name(existing) != name);
            conf.options.push(rendered);
        }
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    conf
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOST: &str = "# host\nnameserver 192.168.1.1\nnameserver 192.168.1.2\nsearch corp.example\noptions edns0\n";

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = json!([]);
        serde_json::from_value(v).unwrap()
    }

    fn conf(v: serde_json::Value, dns: Option<&str>) -> String {
        for_pod(&spec(v), "shop", dns, "cluster.local", HOST).render()
    }

    #[test]
    fn every_dns_policy() {
        let cluster = "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n";
        let host = "search corp.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions edns0\n";
        let cases = [
            (json!({}), Some("10.96.0.10"), cluster),
            (json!({"dnsPolicy": "ClusterFirst"}), Some("10.96.0.10"), cluster),
            // Without a cluster DNS, ClusterFirst is the node's.
            (json!({"dnsPolicy": "ClusterFirst"}), None, host),
            (
                json!({"dnsPolicy": "ClusterFirst", "hostNetwork": true}),
                Some("10.96.0.10"),
                host,
            ),
            (
                json!({"dnsPolicy": "ClusterFirstWithHostNet", "hostNetwork": true}),
                Some("10.96.0.10"),
                cluster,
            ),
            (json!({"dnsPolicy": "Default"}), Some("10.96.0.10"), host),
            (
                json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}),
                Some("10.96.0.10"),
                "search a.example\nnameserver 1.2.3.4\noptions ndots:2 rotate\n",
            ),
            (json!({"dnsPolicy": "None"}), Some("10.96.0.10"), ""),
            // dnsConfig on top of ClusterFirst: appended, options replaced by name.
            (
                json!({"dnsConfig": {"nameservers": ["1.2.3.4", "10.96.0.10"], "searches": ["b.example", "svc.cluster.local"], "options": [{"name": "ndots", "value": "1"}, {"name": "edns0"}]}}),
                Some("10.96.0.10"),
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example b.example\nnameserver 10.96.0.10\nnameserver 1.2.3.4\noptions ndots:1 edns0\n",
            ),
            // Four nameservers are more than the resolver reads.
            (
                json!({"dnsPolicy": "Default", "dnsConfig": {"nameservers": ["1.1.1.1", "8.8.8.8"]}}),
                None,
                "search corp.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\nnameserver 1.1.1.1\noptions edns0\n",
            ),
        ];
        for (spec, dns, want) in cases {
            assert_eq!(conf(spec.clone(), dns), want, "{spec} with cluster DNS {dns:?}");
        }
    }
}
