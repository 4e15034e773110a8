//! Who may do what: `system:masters` may do anything; node identities get exactly what a
//! kubelet needs for its own Node and pods (upstream's node authorizer plus
//! NodeRestriction): Secrets, ConfigMaps, PVCs and ServiceAccounts (and their tokens) only
//! when a pod bound to the node uses them (`node_graph`); everyone else goes through RBAC.

use serde_json::{Value, json};

use super::{
    authn::{SYSTEM_MASTERS, UserInfo},
    filter::ObjectFilter,
    node_graph::{self, Referenced},
    rbac::{Attributes, Rbac},
    registry::{Registry, Scope},
    request::{ResourceRequest, Verb},
    resources,
    status::ApiError,
};

pub struct Authorizer {
    pub rbac: Rbac,
}

/// A node's own decision, before RBAC is asked.
enum NodeDecision {
    Allow,
    Deny(String),
    NoOpinion,
    /// No pod of the node uses the object: as upstream, RBAC may still allow it; if it
    /// does not, the refusal says why.
    Unrelated(String),
}

impl Authorizer {
    pub async fn authorize(&self, user: &UserInfo, req: &ResourceRequest, registry: &Registry) -> Result<(), ApiError> {
        if user.in_group(SYSTEM_MASTERS) {
            return Ok(());
        }
        let resource = match &req.subresource {
            Some(sub) => format!("{}/{sub}", req.resource.plural),
            None => req.resource.plural.to_owned(),
        };
        let attrs = Attributes {
            verb: req.verb.as_str(),
            group: req.resource.group,
            resource,
            // As upstream's RequestInfo: `/api/v1/namespaces/{name}` is in namespace {name},
            // so a RoleBinding there covers the Namespace object itself.
            namespace: match (req.resource.group, req.resource.plural) {
                ("", "namespaces") => req.name.as_deref(),
                _ => req.namespace.as_deref(),
            },
            name: req.name.as_deref(),
        };
        let mut why = String::new();
        if let Some(node) = user.is_node() {
            match node_decision(node, req, registry).await? {
                NodeDecision::Allow => return Ok(()),
                NodeDecision::Deny(why) => return Err(forbidden(user, &attrs, &why)),
                NodeDecision::NoOpinion => {}
                NodeDecision::Unrelated(reason) => why = reason,
            }
        }
        if self.rbac.allows(user, &attrs).await {
            return Ok(());
        }
        Err(forbidden(user, &attrs, &why))
    }
}

/// The path kubectl's `auth can-i` POSTs to.
pub const SELF_SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

impl Authorizer {
    /// A SelfSubjectAccessReview: would `user` be allowed what `spec.resourceAttributes`
    /// describes? Decided by the same authorizer as real requests (node rules included).
    pub async fn self_subject_access_review(
        &self,
        user: &UserInfo,
        review: &Value,
        registry: &Registry,
    ) -> Result<Value, ApiError> {
        let spec = &review["spec"];
        let ra = &spec["resourceAttributes"];
        let text = |key: &str| ra[key].as_str().filter(|s| !s.is_empty());
        let (allowed, reason) = if user.in_group(SYSTEM_MASTERS) {
            (true, String::new())
        } else if ra.is_object() {
            let verb = text("verb").unwrap_or_default();
            let group = text("group").unwrap_or_default();
            let plural = text("resource").unwrap_or_default();
            let served = resources::RESOURCES
                .iter()
                .find(|r| r.group == group && r.plural == plural);
            let verb_kind = match verb {
                "get" => Some(Verb::Get),
                "list" => Some(Verb::List),
                "watch" => Some(Verb::Watch),
                "create" => Some(Verb::Create),
                "update" => Some(Verb::Update),
                "patch" => Some(Verb::Patch),
                "delete" => Some(Verb::Delete),
                "deletecollection" => Some(Verb::DeleteCollection),
                _ => None,
            };
            match (served, verb_kind) {
                (Some(rt), Some(verb)) => {
                    let req = ResourceRequest {
                        verb,
                        resource: rt,
                        namespace: text("namespace").filter(|_| rt.namespaced).map(str::to_owned),
                        name: text("name").map(str::to_owned),
                        subresource: text("subresource").map(str::to_owned),
                        query: Default::default(),
                    };
                    match self.authorize(user, &req, registry).await {
                        Ok(()) => (true, String::new()),
                        Err(e) if e.code == 403 => (false, e.message),
                        Err(e) => return Err(e),
                    }
                }
                // Verbs such as `bind` or `escalate`, or types this server does not serve:
                // RBAC alone decides, as upstream's authorizer would for them.
                _ => {
                    let resource = match text("subresource") {
                        Some(sub) => format!("{plural}/{sub}"),
                        None => plural.to_owned(),
                    };
                    let attrs = Attributes {
                        verb,
                        group,
                        resource,
                        namespace: text("namespace"),
                        name: text("name"),
                    };
                    (self.rbac.allows(user, &attrs).await, String::new())
                }
            }
        } else {
            (false, "non-resource URLs are only allowed to system:masters".to_owned())
        };
        let mut status = json!({"allowed": allowed});
        if !reason.is_empty() {
            status["reason"] = json!(reason);
        }
        Ok(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }))
    }
}

/// NodeRestriction for creates, which the authorizer cannot judge without the body: a
/// node may register only its own Node and create only its own Lease.
pub fn admit_create(user: &UserInfo, req: &ResourceRequest, obj: &Value) -> Result<(), ApiError> {
    let Some(node) = user.is_node() else { return Ok(()) };
    let own = match (req.resource.group, req.resource.plural) {
        ("", "nodes") => "Node",
        ("coordination.k8s.io", "leases") if req.namespace.as_deref() == Some("kube-node-lease") => "Lease",
        _ => return Ok(()),
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name == node {
        return Ok(());
    }
    let attrs = Attributes {
        verb: req.verb.as_str(),
        group: req.resource.group,
        resource: req.resource.plural.to_owned(),
        namespace: req.namespace.as_deref(),
        name: Some(name),
    };
    Err(forbidden(
        user,
        &attrs,
        &format!("node \"{node}\" may only create its own {own}"),
    ))
}

fn forbidden(user: &UserInfo, a: &Attributes<'_>, why: &str) -> ApiError {
    let (resource, sub) = match a.resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), format!(" subresource \"{s}\"")),
        None => (a.resource.clone(), String::new()),
    };
    let group_resource = if a.group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{}", a.group)
    };
    let target = match a.name {
        Some(n) => format!("{group_resource} \"{n}\""),
        None => group_resource,
    };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_owned(),
    };
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    };
    ApiError::forbidden(format!(
        "{target} is forbidden: User \"{}\" cannot {} resource \"{resource}\"{sub} in API group \"{}\"{scope}{why}",
        user.name, a.verb, a.group
    ))
}

async fn node_decision(node: &str, req: &ResourceRequest, registry: &Registry) -> Result<NodeDecision, ApiError> {
    let read = matches!(req.verb, Verb::Get | Verb::List | Verb::Watch);
    let sub = req.subresource.as_deref();
    let own_name = req.name.as_deref() == Some(node);
    Ok(match (req.resource.group, req.resource.plural) {
        ("", "nodes") if read => NodeDecision::Allow,
        ("", "nodes") if req.verb == Verb::Create => NodeDecision::Allow,
        ("", "nodes") if own_name && matches!(req.verb, Verb::Update | Verb::Patch) => NodeDecision::Allow,
        ("", "nodes") => NodeDecision::Deny(format!("node \"{node}\" may only modify its own Node object")),
        ("", "pods") if read && !matches!(sub, Some("log" | "exec" | "attach" | "portforward")) => NodeDecision::Allow,
        ("", "pods") => {
            let Some(name) = req.name.as_deref() else {
                return Ok(NodeDecision::Deny(
                    "nodes may not create or delete collections of pods".into(),
                ));
            };
            let pod = registry.get(req.resource, req.namespace.as_deref(), name).await;
            let bound_here = pod.as_ref().is_ok_and(|p| p["spec"]["nodeName"] == node);
            let allowed_verb = match req.verb {
                Verb::Update | Verb::Patch => sub == Some("status"),
                Verb::Delete => true,
                _ => false,
            };
            if bound_here && allowed_verb {
                NodeDecision::Allow
            } else {
                NodeDecision::Deny(format!(
                    "node \"{node}\" can only update the status of, or delete, pods bound to it"
                ))
            }
        }
        ("coordination.k8s.io", "leases") if req.namespace.as_deref() == Some("kube-node-lease") => {
            if own_name || req.verb == Verb::Create || read {
                NodeDecision::Allow
            } else {
                NodeDecision::Deny(format!("node \"{node}\" may only use its own Lease"))
            }
        }
        ("", "events") | ("events.k8s.io", "events")
            if matches!(req.verb, Verb::Create | Verb::Update | Verb::Patch) =>
        {
            NodeDecision::Allow
        }
        // Tokens for the ServiceAccounts its pods run as (which pod, and that the token is
        // bound to it, the TokenRequest handler checks: NodeRestriction).
        ("", "serviceaccounts") if sub == Some("token") => {
            if req.verb == Verb::Create {
                related(node, req, Referenced::ServiceAccount, req.name.as_deref(), registry).await?
            } else {
                NodeDecision::Unrelated(format!("node \"{node}\" may only create ServiceAccount tokens"))
            }
        }
        ("", plural @ ("secrets" | "configmaps" | "persistentvolumeclaims" | "serviceaccounts")) if sub.is_none() => {
            let kind = Referenced::from_plural(plural).ok_or_else(|| ApiError::internal(plural.to_owned()))?;
            if read {
                related(node, req, kind, single_name(req), registry).await?
            } else {
                NodeDecision::Unrelated(format!("node \"{node}\" may only read {plural}"))
            }
        }
        ("certificates.k8s.io", "certificatesigningrequests")
            if sub.is_none() && (read || req.verb == Verb::Create) =>
        {
            NodeDecision::Allow
        }
        // Upstream's graph reaches a volume through its claim; a node reads any volume here
        // (it learns where its pods' claims are bound).
        ("", "persistentvolumes") if read => NodeDecision::Allow,
        ("", "services" | "endpoints" | "namespaces") | ("discovery.k8s.io", "endpointslices") if read => {
            NodeDecision::Allow
        }
        _ => NodeDecision::NoOpinion,
    })
}

/// The one object a read names: its URL name, or a list/watch narrowed to one name by
/// `fieldSelector=metadata.name=<name>` (how kubelets watch a single Secret).
fn single_name(req: &ResourceRequest) -> Option<&str> {
    if let Some(name) = req.name.as_deref() {
        return Some(name);
    }
    let selector = req.query.get("fieldSelector")?;
    let value = selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="))?;
    (!value.is_empty() && !value.contains(',')).then_some(value)
}

/// Allow when a pod bound to `node` in the request's namespace uses the `kind` object
/// `name` (upstream's graph authorizer).
async fn related(
    node: &str,
    req: &ResourceRequest,
    kind: Referenced,
    name: Option<&str>,
    registry: &Registry,
) -> Result<NodeDecision, ApiError> {
    let (Some(ns), Some(name)) = (req.namespace.as_deref(), name) else {
        return Ok(NodeDecision::Unrelated(format!(
            "node \"{node}\" may only read single objects its pods use, by name"
        )));
    };
    let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods"))?;
    let filter = ObjectFilter::from_query(pods, None, Some(&format!("spec.nodeName={node}")))?;
    let scope = Scope {
        rt: pods,
        namespace: Some(ns),
        filter: &filter,
    };
    let page = registry.list(&scope, None, None, None, false).await?;
    Ok(
        if page.items.iter().any(|pod| node_graph::references(pod, kind, name)) {
            NodeDecision::Allow
        } else {
            NodeDecision::Unrelated(format!("no relationship found between node \"{node}\" and this object"))
        },
    )
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// The default ClusterRoles and bindings (a subset of upstream's bootstrap policy).
pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    const READ: &[&str] = &["get", "list", "watch"];
    const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
    let all_read_write: Vec<&str> = READ.iter().chain(WRITE).copied().collect();
    let workloads = [
        "pods",
        "pods/log",
        "pods/eviction",
        "poddisruptionbudgets",
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "services",
        "endpoints",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "events",
        "deployments",
        "replicasets",
        "daemonsets",
        "statefulsets",
        "jobs",
        "cronjobs",
        "endpointslices",
        "leases",
    ];
    let mut viewable: Vec<&str> = workloads.iter().copied().filter(|r| *r != "secrets").collect();
    // As upstream, revisions are history written by controllers: readable, not editable.
    viewable.push("controllerrevisions");
    let groups = [
        "",
        "apps",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "policy",
        "batch",
    ];
    let role = |name: &str, rules: Vec<Value>| json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules});
    let binding = |name: &str, role: &str, kind: &str, subject: &str| {
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
        })
    };
    let mut policy = vec![
        (
            "clusterroles",
            role("cluster-admin", vec![rule(&["*"], &["*"], &["*"])]),
        ),
        // As upstream, `view` leaves out Secrets: reading one grants whatever it holds.
        ("clusterroles", role("view", vec![rule(&groups, &viewable, READ)])),
        (
            "clusterroles",
            role(
                "edit",
                vec![
                    rule(&groups, &workloads, &all_read_write),
                    rule(&["apps"], &["controllerrevisions"], READ),
                ],
            ),
        ),
        (
            "clusterroles",
            role(
                "admin",
                vec![
                    rule(&groups, &workloads, &all_read_write),
                    rule(&["apps"], &["controllerrevisions"], READ),
                    rule(
                        &["rbac.authorization.k8s.io"],
                        &["roles", "rolebindings"],
                        &all_read_write,
                    ),
                ],
            ),
        ),
        (
            "clusterroles",
            role(
                "system:node-proxier",
                vec![
                    rule(&[""], &["services", "endpoints", "nodes"], READ),
                    rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                    rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
                ],
            ),
        ),
        (
            "clusterroles",
            role("system:kube-scheduler", vec![rule(&["*"], &["*"], &["*"])]),
        ),
        (
            "clusterroles",
            role("system:kube-controller-manager", vec![rule(&["*"], &["*"], &["*"])]),
        ),
        (
            "clusterrolebindings",
            binding("cluster-admin", "cluster-admin", "Group", SYSTEM_MASTERS),
        ),
        (
            "clusterrolebindings",
            binding(
                "system:node-proxier",
                "system:node-proxier",
                "User",
                "system:kube-proxy",
            ),
        ),
        (
            "clusterrolebindings",
            binding(
                "system:kube-scheduler",
                "system:kube-scheduler",
                "User",
                "system:kube-scheduler",
            ),
        ),
        (
            "clusterrolebindings",
            binding(
                "system:kube-controller-manager",
                "system:kube-controller-manager",
                "User",
                "system:kube-controller-manager",
            ),
        ),
    ];
    policy.extend(super::certificates::policy::bootstrap_policy());
    policy
}
