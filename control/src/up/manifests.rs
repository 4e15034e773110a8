//! Applies the proxy's shipped manifests through the API: the overlay for the mode
//! (`proxy/deploy/overlays/<mode>`, rendered by `kubectl kustomize` into
//! `proxy/deploy/rendered/<mode>.yaml`, which a test keeps equal to a fresh render), with
//! the cluster's values written into its ConfigMap as an operator would: the pod CIDR in
//! `config.conf`, the API server's address in `kubeconfig.conf`.

use anyhow::{Context, Result, bail};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{CLUSTER_CIDR, Layout, SERVICE_CIDR};

/// The rendered overlay of each mode.
pub const PROXY_MANIFESTS: [(&str, &str); 4] = [
    ("ebpf", include_str!("../../../proxy/deploy/rendered/ebpf.yaml")),
    ("nftables", include_str!("../../../proxy/deploy/rendered/nftables.yaml")),
    ("iptables", include_str!("../../../proxy/deploy/rendered/iptables.yaml")),
    ("ipvs", include_str!("../../../proxy/deploy/rendered/ipvs.yaml")),
];

/// The YAML documents of a manifest, as JSON values (comment-only documents dropped).
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in text.split("\n---") {
        let body: String = doc
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        if body.trim().is_empty() {
            continue;
        }
        let v: Value = serde_saphyr::from_str(&body).context("parsing a manifest document")?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Server-side applies one object.
pub async fn apply(client: &Client, obj: &Value) -> Result<()> {
    let api_version = obj["apiVersion"].as_str().context("apiVersion")?;
    let kind = obj["kind"].as_str().context("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    // The served table knows every built-in plural (`storageclasses`, not `storageclasss`).
    let plural = crate::apiserver::resources::by_kind(api_version, kind)
        .map_or_else(|| format!("{}s", kind.to_lowercase()), |r| r.plural.to_owned());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let name = obj["metadata"]["name"].as_str().context("metadata.name")?;
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(name, &PatchParams::apply("rudder-up").force(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// The objects `rudder up` applies for `mode`: the rendered overlay with this cluster's
/// pod CIDR, API server and Service CIDR.
pub fn proxy_objects(mode: &str, api_url: &str) -> Result<Vec<Value>> {
    let Some((_, manifest)) = PROXY_MANIFESTS.iter().find(|(m, _)| *m == mode) else {
        let modes: Vec<&str> = PROXY_MANIFESTS.iter().map(|(m, _)| *m).collect();
        bail!("no manifests for mode {mode:?} (one of {})", modes.join(", "));
    };
    let mut docs = documents(manifest)?;
    for doc in &mut docs {
        match doc["kind"].as_str() {
            Some("ConfigMap") => {
                let data = &mut doc["data"];
                let mut config = yaml(&data["config.conf"], "config.conf")?;
                config["clusterCIDR"] = json!(CLUSTER_CIDR);
                data["config.conf"] = json!(serde_saphyr::to_string(&config)?);
                let mut kubeconfig = yaml(&data["kubeconfig.conf"], "kubeconfig.conf")?;
                kubeconfig["clusters"][0]["cluster"]["server"] = json!(api_url);
                data["kubeconfig.conf"] = json!(serde_saphyr::to_string(&kubeconfig)?);
            }
            Some("DaemonSet") => {
                // Not a KubeProxyConfiguration field: our flag for dropping packets to
                // unallocated ClusterIPs.
                let args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array_mut()
                    .context("the DaemonSet's container args")?;
                args.push(json!(format!("--service-cluster-ip-range={SERVICE_CIDR}")));
            }
            _ => {}
        }
    }
    Ok(docs)
}

fn yaml(text: &Value, key: &str) -> Result<Value> {
    let text = text.as_str().with_context(|| format!("the ConfigMap's {key}"))?;
    serde_saphyr::from_str(text).with_context(|| format!("parsing the ConfigMap's {key}"))
}

pub async fn deploy_proxy(client: &Client, mode: &str, layout: &Layout) -> Result<()> {
    for doc in proxy_objects(mode, &layout.api_url())? {
        apply(client, &doc).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_modes_manifests_parse_into_their_objects() {
        for (mode, _) in PROXY_MANIFESTS {
            let docs = proxy_objects(mode, "https://10.0.0.1:6443").expect("parses");
            let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
            assert_eq!(
                kinds,
                [
                    "ServiceAccount",
                    "ClusterRole",
                    "ClusterRoleBinding",
                    "ConfigMap",
                    "DaemonSet"
                ],
                "{mode}"
            );
            let data = &docs[3]["data"];
            let config: Value = serde_saphyr::from_str(data["config.conf"].as_str().unwrap()).unwrap();
            assert_eq!(
                (config["mode"].as_str(), config["clusterCIDR"].as_str()),
                (Some(mode), Some(CLUSTER_CIDR))
            );
            // What the proxy will read: its own parser accepts the rewritten file.
            let parsed = rudder_proxy::agent::config_file::parse(data["config.conf"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            assert_eq!(parsed.cluster_cidr, Some(vec![CLUSTER_CIDR.parse().unwrap()]));
            assert!(
                data["kubeconfig.conf"]
                    .as_str()
                    .unwrap()
                    .contains("server: https://10.0.0.1:6443")
            );
        }
        assert!(proxy_objects("userspace", "").is_err());
    }
}
