//! RBAC escalation prevention, as upstream's Role and binding storage does it: a user may
//! write a Role or ClusterRole only with rules they already hold (or with the `escalate`
//! verb on it), and bind a role only when they hold its rules (or have `bind` on it).
//! Without this, anyone allowed to create Roles and RoleBindings could grant themselves
//! anything.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    App,
    authn::{SYSTEM_MASTERS, UserInfo},
    rbac::{Attributes, rule_matches},
    request::ResourceRequest,
    status::ApiError,
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Checks a Role, ClusterRole, RoleBinding or ClusterRoleBinding `obj` that `user` wants
/// to create or write (for a PATCH, the patched object about to be stored: the admission
/// chain calls this last); anything else passes.
pub async fn admit(app: &App, user: &UserInfo, req: &ResourceRequest, obj: &Value) -> Result<(), ApiError> {
    if req.resource.group != RBAC_GROUP || req.subresource.is_some() || user.in_group(SYSTEM_MASTERS) {
        return Ok(());
    }
    let plural = req.resource.plural;
    let namespace = match plural {
        "roles" | "rolebindings" => req.namespace.as_deref(),
        "clusterroles" | "clusterrolebindings" => None,
        _ => return Ok(()),
    };
    let name = obj["metadata"]["name"]
        .as_str()
        .or(req.name.as_deref())
        .unwrap_or_default();
    let rbac = &app.authz.rbac;
    let requested = match plural {
        "roles" | "clusterroles" => {
            if may(app, user, "escalate", plural, namespace, name).await {
                return Ok(());
            }
            if plural == "clusterroles" && !obj["aggregationRule"].is_null() {
                let held = rbac.rules_for(user, None).await;
                if !uncovered(&held, &full_authority()).is_empty() {
                    return Err(forbidden(
                        plural,
                        name,
                        "must have cluster-admin privileges to use the aggregationRule",
                    ));
                }
                return Ok(());
            }
            obj["rules"].as_array().cloned().unwrap_or_default()
        }
        _ => {
            let role_ref = &obj["roleRef"];
            let kind = role_ref["kind"].as_str().unwrap_or_default();
            let role_name = role_ref["name"].as_str().unwrap_or_default();
            let role_plural = match kind {
                "Role" => "roles",
                "ClusterRole" => "clusterroles",
                // Validation names the field; nothing to grant here.
                _ => return Ok(()),
            };
            if may(app, user, "bind", role_plural, namespace, role_name).await {
                return Ok(());
            }
            match rbac.role_rules(kind, namespace, role_name).await {
                Some(rules) => rules,
                None => return Err(ApiError::not_found(RBAC_GROUP, role_plural, role_name)),
            }
        }
    };
    let held = rbac.rules_for(user, namespace).await;
    let missing = uncovered(&held, &requested);
    if missing.is_empty() {
        return Ok(());
    }
    let groups = user
        .groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    Err(forbidden(
        plural,
        name,
        &format!(
            "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            describe(&missing)
        ),
    ))
}

/// Whether RBAC grants `verb` (`escalate` or `bind`) on the role `name`.
async fn may(app: &App, user: &UserInfo, verb: &str, plural: &str, namespace: Option<&str>, name: &str) -> bool {
    let attrs = Attributes {
        verb,
        group: RBAC_GROUP,
        resource: plural.to_owned(),
        namespace,
        name: Some(name),
    };
    app.authz.rbac.allows(user, &attrs).await
}

fn forbidden(plural: &str, name: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!("{plural}.{RBAC_GROUP} {name:?} is forbidden: {why}"))
}

/// Everything, as upstream's check for who may write an aggregating ClusterRole.
fn full_authority() -> Vec<Value> {
    vec![
        serde_json::json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
        serde_json::json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
    ]
}

/// One permission of a rule broken down: a verb on one group/resource/name, or on one
/// non-resource URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    Resource {
        group: String,
        resource: String,
        name: Option<String>,
        verb: String,
    },
    Url {
        url: String,
        verb: String,
    },
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn atoms(rule: &Value) -> Vec<Atom> {
    let verbs = strings(&rule["verbs"]);
    let mut out = Vec::new();
    let names = strings(&rule["resourceNames"]);
    let names: Vec<Option<String>> = if names.is_empty() {
        vec![None]
    } else {
        names.into_iter().map(Some).collect()
    };
    for group in strings(&rule["apiGroups"]) {
        for resource in strings(&rule["resources"]) {
            for name in &names {
                for verb in &verbs {
                    out.push(Atom::Resource {
                        group: group.clone(),
                        resource: resource.clone(),
                        name: name.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    for url in strings(&rule["nonResourceURLs"]) {
        for verb in &verbs {
            out.push(Atom::Url {
                url: url.clone(),
                verb: verb.clone(),
            });
        }
    }
    out
}

fn covers(owner: &Value, atom: &Atom) -> bool {
    match atom {
        Atom::Resource {
            group,
            resource,
            name,
            verb,
        } => rule_matches(
            owner,
            &Attributes {
                verb,
                group,
                resource: resource.clone(),
                namespace: None,
                name: name.as_deref(),
            },
        ),
        Atom::Url { url, verb } => {
            strings(&owner["verbs"]).iter().any(|v| v == "*" || v == verb)
                && strings(&owner["nonResourceURLs"])
                    .iter()
                    .any(|u| u == "*" || u == url || u.strip_suffix('*').is_some_and(|prefix| url.starts_with(prefix)))
        }
    }
}

/// The permissions of `requested` that no rule of `held` grants (upstream's `Covers`).
fn uncovered(held: &[Value], requested: &[Value]) -> Vec<Atom> {
    let mut missing: Vec<Atom> = requested
        .iter()
        .flat_map(atoms)
        .filter(|a| !held.iter().any(|h| covers(h, a)))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Missing permissions as upstream prints rules, one line per group/resource/name with
/// its verbs.
fn describe(missing: &[Atom]) -> String {
    let mut resources: BTreeMap<(&str, &str, Option<&str>), Vec<&str>> = BTreeMap::new();
    let mut urls: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for atom in missing {
        match atom {
            Atom::Resource {
                group,
                resource,
                name,
                verb,
            } => resources
                .entry((group, resource, name.as_deref()))
                .or_default()
                .push(verb),
            Atom::Url { url, verb } => urls.entry(url).or_default().push(verb),
        }
    }
    let quoted = |v: &[&str]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
    let mut lines: Vec<String> = resources
        .into_iter()
        .map(|((group, resource, name), verbs)| {
            let names = name.map(|n| format!(", ResourceNames:[{n:?}]")).unwrap_or_default();
            format!(
                "{{APIGroups:[{group:?}], Resources:[{resource:?}]{names}, Verbs:[{}]}}",
                quoted(&verbs)
            )
        })
        .collect();
    lines.extend(
        urls.into_iter()
            .map(|(url, verbs)| format!("{{NonResourceURLs:[{url:?}], Verbs:[{}]}}", quoted(&verbs))),
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn held_rules_cover_what_they_grant_and_nothing_more() {
        let held = vec![
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}),
            json!({"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]}),
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app"], "verbs": ["get"]}),
            json!({"nonResourceURLs": ["/healthz", "/logs/*"], "verbs": ["get"]}),
        ];
        let ok = [
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}),
            json!({"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["create", "escalate"]}),
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app"], "verbs": ["get"]}),
            json!({"nonResourceURLs": ["/healthz", "/logs/kube"], "verbs": ["get"]}),
            json!({"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]}),
        ];
        for rule in &ok {
            assert_eq!(uncovered(&held, std::slice::from_ref(rule)), [], "{rule}");
        }
        let too_much = [
            (
                json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}),
                1,
            ),
            (
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}),
                2,
            ),
            // Every configmap is more than one named configmap.
            (
                json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}),
                1,
            ),
            (
                json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app", "db"], "verbs": ["get"]}),
                1,
            ),
            // A wildcard is only covered by a wildcard.
            (json!({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}), 1),
            (json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}), 1),
            (
                json!({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}),
                1,
            ),
            (json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}), 1),
            (json!({"nonResourceURLs": ["/healthz"], "verbs": ["post"]}), 1),
        ];
        for (rule, n) in &too_much {
            assert_eq!(uncovered(&held, std::slice::from_ref(rule)).len(), *n, "{rule}");
        }
        assert!(uncovered(&full_authority(), &too_much.map(|(r, _)| r)).is_empty());
        assert_eq!(uncovered(&[], &[]), []);
    }

    #[test]
    fn missing_permissions_read_like_upstreams_rules() {
        let missing = uncovered(
            &[],
            &[
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}),
                json!({"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["delete"]}),
                json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}),
            ],
        );
        assert_eq!(
            describe(&missing),
            "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\"]}\n\
             {APIGroups:[\"apps\"], Resources:[\"deployments\"], ResourceNames:[\"web\"], Verbs:[\"delete\"]}\n\
             {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
        );
    }
}
