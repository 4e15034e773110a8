//! A container's environment and command line, as the kubelet computes them: service
//! variables first, then `envFrom`, then `env` (later wins), each `env` value expanded
//! against what came before it, then `command` and `args` expanded against the result.
//! Pure: the ConfigMaps and Secrets it reads are fetched by the caller.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::expand::expand;

/// Why a container cannot be started with its configuration (the kubelet reports these as
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {name}: unsupported fieldPath {path:?}")]
    FieldPath { name: String, path: String },
    #[error("env {name}: {what} is not supported by this node agent")]
    Unsupported { name: String, what: &'static str },
    #[error(
        "container {0} has no command: the process runtime runs host binaries and has no image entrypoint to fall back on"
    )]
    NoCommand(String),
}

/// What the node knows about a pod that its spec does not say.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub pod_ip: String,
    pub host_ip: String,
    /// `KUBERNETES_SERVICE_HOST` and friends: the lowest-precedence variables.
    pub service_env: Vec<(String, String)>,
}

/// ConfigMap and Secret data the pod refers to, by name (Secret values decoded).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    pub secrets: HashMap<String, BTreeMap<String, String>>,
}

impl Sources {
    /// The ConfigMap and Secret names a container's env refers to (to fetch before [`env`]).
    pub fn wanted(container: &Container) -> (Vec<String>, Vec<String>) {
        let (mut cms, mut secrets) = (Vec::new(), Vec::new());
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for var in container.env.iter().flatten() {
            if let Some(src) = &var.value_from {
                if let Some(r) = &src.config_map_key_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &src.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
        cms.sort();
        cms.dedup();
        secrets.sort();
        secrets.dedup();
        (cms, secrets)
    }
}

/// An ordered environment where a later `set` replaces an earlier value in place.
#[derive(Debug, Default)]
struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn set(&mut self, name: &str, value: String) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name.to_owned(), value)),
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

/// The container's environment, in order.
pub fn env(
    pod: &Pod,
    container: &Container,
    ctx: &PodContext,
    sources: &Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = Env::default();
    for (k, v) in &ctx.service_env {
        env.set(k, v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| env.set(&format!("{prefix}{k}"), v.clone())),
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| env.set(&format!("{prefix}{k}"), v.clone())),
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = value_of(var, pod, &namespace, ctx, sources, &env)? {
            env.set(&var.name, value);
        }
    }
    Ok(env.vars)
}

/// One `env` entry's value; `None` for an optional reference that is absent (the variable
/// is then not set at all, as upstream does).
fn value_of(
    var: &EnvVar,
    pod: &Pod,
    namespace: &str,
    ctx: &PodContext,
    sources: &Sources,
    env: &Env,
) -> Result<Option<String>, ConfigError> {
    let Some(src) = &var.value_from else {
        let raw = var.value.as_deref().unwrap_or("");
        return Ok(Some(expand(raw, |n| env.get(n))));
    };
    if let Some(r) = &src.config_map_key_ref {
        return match sources.config_maps.get(&r.name) {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if r.optional == Some(true) => Ok(None),
                None => Err(ConfigError::ConfigMapKey {
                    namespace: namespace.into(),
                    name: r.name.clone(),
                    key: r.key.clone(),
                }),
            },
            None if r.optional == Some(true) => Ok(None),
            None => Err(ConfigError::ConfigMapNotFound(r.name.clone())),
        };
    }
    if let Some(r) = &src.secret_key_ref {
        return match sources.secrets.get(&r.name) {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if r.optional == Some(true) => Ok(None),
                None => Err(ConfigError::SecretKey {
                    namespace: namespace.into(),
                    name: r.name.clone(),
                    key: r.key.clone(),
                }),
            },
            None if r.optional == Some(true) => Ok(None),
            None => Err(ConfigError::SecretNotFound(r.name.clone())),
        };
    }
    if let Some(f) = &src.field_ref {
        return field(pod, ctx, &f.field_path)
            .map(Some)
            .ok_or_else(|| ConfigError::FieldPath {
                name: var.name.clone(),
                path: f.field_path.clone(),
            });
    }
    Err(ConfigError::Unsupported {
        name: var.name.clone(),
        what: "resourceFieldRef",
    })
}

/// The downward API's `fieldRef` paths the kubelet supports for env.
pub fn field(pod: &Pod, ctx: &PodContext, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let bracketed = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(rest.to_owned())
    };
    if let Some(key) = bracketed("metadata.labels") {
        return Some(
            meta.labels
                .as_ref()
                .and_then(|l| l.get(&key).cloned())
                .unwrap_or_default(),
        );
    }
    if let Some(key) = bracketed("metadata.annotations") {
        return Some(
            meta.annotations
                .as_ref()
                .and_then(|l| l.get(&key).cloned())
                .unwrap_or_default(),
        );
    }
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.clone(),
        _ => return None,
    })
}

/// `command` + `args`, each expanded against the container's environment.
pub fn argv(container: &Container, env: &[(String, String)]) -> Result<Vec<String>, ConfigError> {
    let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let command = container.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(ConfigError::NoCommand(container.name.clone()));
    }
    Ok(command
        .iter()
        .chain(container.args.iter().flatten())
        .map(|a| expand(a, lookup))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n2", "serviceAccountName": "robot", "containers": [{"name": "c"}]},
        }))
        .expect("pod")
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("container")
    }

    fn ctx() -> PodContext {
        PodContext {
            pod_ip: "10.244.2.5".into(),
            host_ip: "10.250.0.12".into(),
            service_env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
                ("MODE".into(), "service".into()),
            ],
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "settings".into(),
            BTreeMap::from([("MODE".into(), "cm".into()), ("COLOR".into(), "blue".into())]),
        );
        s.secrets
            .insert("creds".into(), BTreeMap::from([("password".into(), "hunter2".into())]));
        s
    }

    #[test]
    fn downward_api_fields() {
        let c = container(json!({"name": "c", "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ]}));
        let env = env(&pod(), &c, &ctx(), &Sources::default()).expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("NS"), Some("shop"));
        assert_eq!(get("NODE"), Some("n2"));
        assert_eq!(get("IP"), Some("10.244.2.5"));
        assert_eq!(get("HOST"), Some("10.250.0.12"));
        assert_eq!(get("SA"), Some("robot"));
        assert_eq!(get("APP"), Some("web"));
    }

    #[test]
    fn precedence_service_then_env_from_then_env() {
        let c = container(json!({"name": "c",
            "envFrom": [{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "creds"}, "prefix": "S_"}],
            "env": [{"name": "COLOR", "value": "red"}]}));
        let env = env(&pod(), &c, &ctx(), &sources()).expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MODE"), Some("cm"), "envFrom overrides service variables");
        assert_eq!(get("COLOR"), Some("red"), "env overrides envFrom");
        assert_eq!(get("S_password"), Some("hunter2"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
    }

    #[test]
    fn values_expand_against_earlier_variables_only() {
        let c = container(json!({"name": "c", "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "URL", "value": "http://$(POD):$(PORT)/"},
            {"name": "PORT", "value": "80"},
            {"name": "AGAIN", "value": "$(PORT)"},
        ], "command": ["/bin/echo", "$(URL)"], "args": ["$(AGAIN)", "$$(PORT)", "$(MISSING)"]}));
        let env = env(&pod(), &c, &ctx(), &Sources::default()).expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("URL").as_deref(), Some("http://web-1:$(PORT)/"));
        assert_eq!(get("AGAIN").as_deref(), Some("80"));
        assert_eq!(
            argv(&c, &env).expect("argv"),
            ["/bin/echo", "http://web-1:$(PORT)/", "80", "$(PORT)", "$(MISSING)"]
        );
    }

    #[test]
    fn missing_sources_fail_unless_optional() {
        let c = container(
            json!({"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}]}),
        );
        assert_eq!(
            env(&pod(), &c, &ctx(), &sources()).unwrap_err().to_string(),
            "couldn't find key nope in ConfigMap shop/settings"
        );
        let c = container(
            json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}}]}),
        );
        assert!(
            env(&pod(), &c, &ctx(), &sources())
                .expect("optional")
                .iter()
                .all(|(k, _)| k != "X")
        );
        let c = container(json!({"name": "c", "envFrom": [{"configMapRef": {"name": "gone"}}]}));
        assert_eq!(
            env(&pod(), &c, &ctx(), &sources()).unwrap_err(),
            ConfigError::ConfigMapNotFound("gone".into())
        );
    }

    #[test]
    fn no_command_is_a_clear_error() {
        let c = container(json!({"name": "web", "image": "nginx"}));
        assert!(argv(&c, &[]).unwrap_err().to_string().contains("no image entrypoint"));
        assert_eq!(
            Sources::wanted(&container(
                json!({"name": "c", "envFrom": [{"configMapRef": {"name": "a"}}, {"configMapRef": {"name": "a"}}]})
            ))
            .0,
            ["a"]
        );
    }
}
