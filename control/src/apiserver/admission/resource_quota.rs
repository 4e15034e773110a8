//! The ResourceQuota admission plugin: a create is charged against every quota of its
//! namespace that matches it, and refused (403) when a quota's `status.hard` would be
//! exceeded. The charge is written into the quota's `status.used` with compare-and-swap
//! before the object is stored, as upstream does, so two creates racing for the last slot
//! cannot both pass: the loser's write conflicts, and it re-checks against the winner's
//! usage. The quota controller later recomputes `used` from what really exists (a create
//! that failed after its charge is given back then). Dry runs check but never charge.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Attributes, Operation};
use crate::{
    apiserver::{App, filter::ObjectFilter, meta, registry::Scope, resources, status::ApiError},
    quota::usage::{self, ResourceList},
};

/// Charge attempts before giving up under constant contention.
const ATTEMPTS: usize = 20;

pub async fn validate(app: &App, attrs: &Attributes<'_>, obj: &Value, _old: Option<&Value>) -> Result<(), ApiError> {
    let req = attrs.req;
    let rt = req.resource;
    if attrs.operation != Operation::Create || req.subresource.is_some() || !rt.namespaced {
        return Ok(());
    }
    let Some(ns) = req.namespace.as_deref() else {
        return Ok(());
    };
    let quotas_rt = resources::find("", "v1", "resourcequotas").ok_or_else(|| ApiError::internal("resourcequotas"))?;
    let name = meta::name(obj).unwrap_or_default();
    let forbidden = |why: String| ApiError::forbidden(format!("{} {name:?} is forbidden: {why}", rt.group_resource()));
    let delta = usage::usage(rt.group, rt.plural, obj);
    let filter = ObjectFilter::from_query(quotas_rt, None, None)?;
    let scope = Scope {
        rt: quotas_rt,
        namespace: Some(ns),
        filter: &filter,
    };
    // Quotas already charged by an earlier attempt: a conflict on a later quota must not
    // charge these twice.
    let mut charged: BTreeSet<String> = BTreeSet::new();
    for _ in 0..ATTEMPTS {
        let quotas = app.registry.list(&scope, None, None, None, false).await?.items;
        let mut writes = Vec::new();
        for quota in &quotas {
            let qname = meta::name(quota).unwrap_or_default().to_owned();
            if charged.contains(&qname) || !usage::quota_matches(quota, rt.group, rt.plural, obj) {
                continue;
            }
            let hard = usage::parse_list(&quota["status"]["hard"]);
            if rt.group.is_empty()
                && rt.plural == "pods"
                && let Some(missing) = usage::missing_constraints(obj, &hard)
            {
                return Err(forbidden(format!("failed quota: {qname}: {missing}")));
            }
            let interesting: Vec<&String> = hard.keys().filter(|k| delta.contains_key(*k)).collect();
            if interesting.is_empty() {
                continue;
            }
            let used = usage::parse_list(&quota["status"]["used"]);
            let unknown: Vec<&str> = interesting
                .iter()
                .filter(|k| !used.contains_key(k.as_str()))
                .map(|k| k.as_str())
                .collect();
            if !unknown.is_empty() {
                return Err(forbidden(format!(
                    "status unknown for quota: {qname}, resources: {}",
                    unknown.join(",")
                )));
            }
            let mut new_used = used.clone();
            let mut exceeded = Vec::new();
            for k in interesting {
                let (add, have, limit) = (delta[k], used[k], hard[k]);
                let total = have.add(&add);
                if !add.is_zero() && !add.is_negative() && total > limit {
                    exceeded.push(k.clone());
                }
                new_used.insert(k.clone(), total);
            }
            if !exceeded.is_empty() {
                let mask = |l: &ResourceList| -> ResourceList {
                    exceeded.iter().filter_map(|k| Some((k.clone(), *l.get(k)?))).collect()
                };
                return Err(forbidden(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    usage::pretty(&mask(&delta)),
                    usage::pretty(&mask(&used)),
                    usage::pretty(&mask(&hard))
                )));
            }
            writes.push((qname, quota, new_used));
        }
        if attrs.dry_run || writes.is_empty() {
            return Ok(());
        }
        let mut conflicted = false;
        for (qname, quota, new_used) in writes {
            let mut updated = quota.clone();
            updated["status"]["used"] = merge_used(&quota["status"]["used"], &new_used);
            match app
                .registry
                .update(quotas_rt, Some(ns), &qname, updated, Some("status"))
                .await
            {
                Ok(_) => {
                    charged.insert(qname);
                }
                Err(e) if e.reason == "Conflict" => {
                    conflicted = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if !conflicted {
            return Ok(());
        }
    }
    Err(ApiError {
        code: 409,
        reason: "Conflict",
        message: format!(
            "{} {name:?} could not be charged to its namespace's quotas: too many concurrent writes, try again",
            rt.group_resource()
        ),
        details: None,
    })
}

/// `status.used` with the charged entries replaced and the rest kept as written.
fn merge_used(old: &Value, new_used: &ResourceList) -> Value {
    let mut out = old.as_object().cloned().unwrap_or_default();
    for (k, q) in new_used {
        out.insert(k.clone(), json!(q.to_string()));
    }
    Value::Object(out)
}
