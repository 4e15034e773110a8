//! Applies the proxy's shipped manifest (`proxy/deploy/rudder-proxy.yaml`) through the API,
//! with the cluster's values written into its ConfigMap, as an operator would edit it.

use anyhow::{Context, Result};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{CLUSTER_CIDR, Layout, SERVICE_CIDR};

pub const PROXY_MANIFEST: &str = include_str!("../../../proxy/deploy/rudder-proxy.yaml");

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
    let ar = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
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

pub async fn deploy_proxy(client: &Client, mode: &str, layout: &Layout) -> Result<()> {
    for mut doc in documents(PROXY_MANIFEST)? {
        if doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "rudder-proxy" {
            doc["data"] = json!({
                "mode": mode,
                "clusterCIDR": CLUSTER_CIDR,
                "serviceClusterIPRange": SERVICE_CIDR,
                "apiServerHost": layout.host_ip().to_string(),
                "apiServerPort": "6443",
            });
        }
        apply(client, &doc).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_manifest_parses_into_its_objects() {
        let docs = documents(PROXY_MANIFEST).expect("parses");
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "DaemonSet"
            ]
        );
    }
}
