//! ServiceAccount: every new pod runs as a ServiceAccount (`default` unless it names one),
//! which must exist; unless the pod or the ServiceAccount opts out
//! (`automountServiceAccountToken: false`), every container mounts the API credentials
//! (`kube-api-access-<random>`: a bound token, the cluster CA and the namespace) at
//! [`TOKEN_DIR`]; and a pod without `imagePullSecrets` gets the ServiceAccount's.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Attributes, Operation};
use crate::apiserver::{App, meta, resources, status::ApiError};

/// Where containers find the credentials (what client libraries read in a cluster).
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The projected volume's name before its random suffix.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// Pods the node agent runs from its own manifests; their spec must stay as written.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const DEFAULT: &str = "default";

pub async fn admit(app: &App, attrs: &Attributes<'_>, obj: &mut Value, _old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.operation != Operation::Create || !attrs.is_main("", "pods") {
        return Ok(());
    }
    if obj["metadata"]["annotations"][MIRROR_ANNOTATION].is_string() {
        return Ok(());
    }
    let ns = attrs.namespace().unwrap_or(DEFAULT).to_owned();
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return Ok(());
    }
    let name = spec["serviceAccountName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT)
        .to_owned();
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);
    let Some(sa) = lookup(app, &ns, &name).await? else {
        return Err(super::forbidden(
            attrs,
            obj,
            format!("error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"),
        ));
    };
    let spec = &mut obj["spec"];
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        mount_token(spec, &meta::random_suffix());
    }
    let pod_has_pull_secrets = spec["imagePullSecrets"].as_array().is_some_and(|a| !a.is_empty());
    if let Some(secrets) = sa["imagePullSecrets"].as_array().filter(|a| !a.is_empty())
        && !pod_has_pull_secrets
    {
        let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s["name"]})).collect();
        spec["imagePullSecrets"] = Value::Array(refs);
    }
    Ok(())
}

/// The ServiceAccount, if it exists. `default` is made by the serviceaccounts controller
/// moments after its namespace, so, as upstream, a missing `default` is looked for again
/// before the pod is refused: upstream tries for 1-2 s; we allow 2.5-5 s, since a
/// loaded two-core machine can take longer than that to run the controller.
async fn lookup(app: &App, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let rt = resources::find("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("serviceaccounts"))?;
    let attempts = if name == DEFAULT { 25 } else { 1 };
    let pause = Duration::from_millis(100 + rand::random_range(0..100));
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
        }
        match app.registry.get(rt, Some(ns), name).await {
            Ok(sa) => return Ok(Some(sa)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The projected volume upstream's plugin adds: a token bound to the pod, the cluster CA
/// from `kube-root-ca.crt` and the namespace.
pub fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Mounts the token volume into every container and init container that does not already
/// mount something at [`TOKEN_DIR`]; adds the volume (named with `suffix` unless the pod
/// already has one) when any container mounts it.
pub fn mount_token(spec: &mut Value, suffix: &str) {
    let existing = spec["volumes"]
        .as_array()
        .and_then(|vs| {
            vs.iter()
                .filter_map(|v| v["name"].as_str())
                .find(|n| n.starts_with(VOLUME_PREFIX))
        })
        .map(str::to_owned);
    let volume = existing.clone().unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_DIR});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let mounts = &mut c["volumeMounts"];
            if mounts
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == TOKEN_DIR))
            {
                continue;
            }
            match mounts.as_array_mut() {
                Some(ms) => ms.push(mount.clone()),
                None => *mounts = json!([mount.clone()]),
            }
            needed = true;
        }
    }
    if needed && existing.is_none() {
        match spec["volumes"].as_array_mut() {
            Some(vs) => vs.push(token_volume(&volume)),
            None => spec["volumes"] = json!([token_volume(&volume)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_the_token_once() {
        let mut spec = json!({
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "own", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_DIR}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "mine", "emptyDir": {}}],
        });
        mount_token(&mut spec, "abcde");
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
        assert_eq!(spec["containers"][0]["volumeMounts"][1]["mountPath"], TOKEN_DIR);
        assert_eq!(spec["containers"][0]["volumeMounts"][1]["readOnly"], true);
        assert_eq!(
            spec["containers"][1]["volumeMounts"].as_array().map(Vec::len),
            Some(1),
            "a container with its own mount there keeps it"
        );
        assert_eq!(spec["volumes"][2]["name"], "kube-api-access-abcde");
        assert_eq!(spec["volumes"][2]["projected"]["defaultMode"], 420);
        assert_eq!(
            spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["path"],
            "token"
        );
    }

    #[test]
    fn no_volume_when_every_container_has_its_own() {
        let mut spec = json!({"containers": [{"name": "a", "volumeMounts": [{"name": "x", "mountPath": TOKEN_DIR}]}]});
        mount_token(&mut spec, "abcde");
        assert!(spec["volumes"].is_null());
    }
}
