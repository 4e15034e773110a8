//! RBAC: Roles, ClusterRoles and their bindings, kept in memory from a store watch so
//! each request is decided without reading the store, and a new binding applies at once.

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::RwLock;

use crate::store::{Event, ListOptions, Store};

use super::authn::UserInfo;

const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// What is being asked, in RBAC's terms.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    /// `pods`, or `pods/status` for a subresource.
    pub resource: String,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

#[derive(Default)]
struct State {
    /// Every RBAC object by storage key.
    objects: HashMap<String, Value>,
}

/// The RBAC authorizer with its watch-fed cache.
#[derive(Clone)]
pub struct Rbac {
    state: Arc<RwLock<State>>,
}

impl Rbac {
    /// Loads every RBAC object and keeps following changes in the background.
    pub async fn start(store: Arc<dyn Store>) -> Result<Self, crate::store::StoreError> {
        let page = store
            .list(ListOptions {
                prefix: PREFIX.into(),
                start_after: None,
                limit: None,
                revision: None,
            })
            .await?;
        let mut state = State::default();
        for kv in &page.items {
            if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                state.objects.insert(kv.key.clone(), v);
            }
        }
        let state = Arc::new(RwLock::new(state));
        let rbac = Self {
            state: Arc::clone(&state),
        };
        let mut after = page.revision;
        tokio::spawn(async move {
            loop {
                let mut events = match store.watch(PREFIX, after).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Falling behind compaction: reload everything and carry on.
                        tracing::warn!(error = %e, "RBAC watch failed; reloading");
                        if let Ok(page) = store
                            .list(ListOptions {
                                prefix: PREFIX.into(),
                                start_after: None,
                                limit: None,
                                revision: None,
                            })
                            .await
                        {
                            let mut s = state.write().await;
                            s.objects = page
                                .items
                                .iter()
                                .filter_map(|kv| serde_json::from_slice(&kv.value).ok().map(|v| (kv.key.clone(), v)))
                                .collect();
                            after = page.revision;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                };
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { break };
                    after = event.revision();
                    let mut s = state.write().await;
                    match event {
                        Event::Put { kv, .. } => {
                            if let Ok(v) = serde_json::from_slice(&kv.value) {
                                s.objects.insert(kv.key, v);
                            }
                        }
                        Event::Delete { prev, .. } => {
                            s.objects.remove(&prev.key);
                        }
                        Event::Progress { .. } => {}
                    }
                }
            }
        });
        Ok(rbac)
    }

    /// True when some binding of `user` grants `attrs`.
    pub async fn allows(&self, user: &UserInfo, attrs: &Attributes<'_>) -> bool {
        let state = self.state.read().await;
        state.rules_for(user, attrs.namespace).any(|r| rule_matches(r, attrs))
    }

    /// Every PolicyRule `user` holds in `namespace` (ClusterRoleBindings, plus that
    /// namespace's RoleBindings), or cluster-wide only (`None`): what upstream's escalation
    /// check compares a new Role or binding against.
    pub async fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<Value> {
        let state = self.state.read().await;
        state.rules_for(user, namespace).cloned().collect()
    }

    /// The rules of the Role (in `namespace`) or ClusterRole a roleRef names; `None` when
    /// it does not exist.
    pub async fn role_rules(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Vec<Value>> {
        let state = self.state.read().await;
        let role = state.role(kind, namespace, name)?;
        Some(role["rules"].as_array().cloned().unwrap_or_default())
    }
}

impl State {
    fn role(&self, kind: &str, ns: Option<&str>, name: &str) -> Option<&Value> {
        let key = match (kind, ns) {
            ("ClusterRole", _) => format!("{PREFIX}clusterroles/{name}"),
            ("Role", Some(ns)) => format!("{PREFIX}roles/{ns}/{name}"),
            _ => return None,
        };
        self.objects.get(&key)
    }

    fn rules_for<'s>(&'s self, user: &'s UserInfo, namespace: Option<&'s str>) -> impl Iterator<Item = &'s Value> + 's {
        let cluster_prefix = format!("{PREFIX}clusterrolebindings/");
        let namespaced_prefix = format!("{PREFIX}rolebindings/");
        self.objects
            .iter()
            .filter(move |(key, binding)| {
                let cluster_wide = key.starts_with(&cluster_prefix);
                let namespaced = key.starts_with(&namespaced_prefix);
                (cluster_wide
                    || (namespaced && namespace.is_some() && binding["metadata"]["namespace"].as_str() == namespace))
                    && binding["subjects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| subject_matches(s, user))
            })
            .filter_map(move |(_, binding)| {
                let role_ref = &binding["roleRef"];
                self.role(
                    role_ref["kind"].as_str().unwrap_or_default(),
                    binding["metadata"]["namespace"].as_str(),
                    role_ref["name"].as_str().unwrap_or_default(),
                )
            })
            .flat_map(|role| role["rules"].as_array().into_iter().flatten())
    }
}

fn subject_matches(subject: &Value, user: &UserInfo) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            user.service_account() == Some((subject["namespace"].as_str().unwrap_or_default(), name))
        }
        _ => false,
    }
}

fn contains(list: &Value, want: &str) -> bool {
    list.as_array().into_iter().flatten().any(|v| v == "*" || v == want)
}

/// One PolicyRule against the request, with RBAC's wildcards.
pub fn rule_matches(rule: &Value, attrs: &Attributes<'_>) -> bool {
    if !contains(&rule["verbs"], attrs.verb) || !contains(&rule["apiGroups"], attrs.group) {
        return false;
    }
    let resources = &rule["resources"];
    let resource_ok = contains(resources, &attrs.resource)
        || attrs
            .resource
            .split_once('/')
            .is_some_and(|(_, sub)| contains(resources, &format!("*/{sub}")));
    if !resource_ok {
        return false;
    }
    match rule["resourceNames"].as_array().filter(|n| !n.is_empty()) {
        None => true,
        Some(names) => attrs.name.is_some_and(|n| names.iter().any(|v| v == n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(verb: &'a str, group: &'a str, resource: &str, name: Option<&'a str>) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource: resource.into(),
            namespace: Some("default"),
            name,
        }
    }

    #[test]
    fn wildcards_and_resource_names() {
        let rule = json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/status"]});
        assert!(rule_matches(&rule, &attrs("get", "", "pods", Some("a"))));
        assert!(rule_matches(&rule, &attrs("list", "", "pods/status", None)));
        assert!(!rule_matches(&rule, &attrs("delete", "", "pods", Some("a"))));
        assert!(!rule_matches(&rule, &attrs("get", "apps", "pods", None)));
        let all = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]});
        assert!(rule_matches(
            &all,
            &attrs("deletecollection", "apps", "deployments", None)
        ));
        let named = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["x"]});
        assert!(rule_matches(&named, &attrs("get", "", "configmaps", Some("x"))));
        assert!(!rule_matches(&named, &attrs("get", "", "configmaps", Some("y"))));
        assert!(!rule_matches(&named, &attrs("get", "", "configmaps", None)));
    }
}
