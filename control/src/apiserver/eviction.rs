//! `POST pods/{name}/eviction`: a delete that respects PodDisruptionBudgets, as upstream's
//! EvictionREST. A pod no budget covers is deleted; one covered by a budget that allows a
//! disruption is recorded in the budget's `status.disruptedPods` with the allowance
//! decremented (a compare-and-swap on the budget, so two evictions never spend one
//! allowance), then deleted; otherwise 429 TooManyRequests with the budget's numbers,
//! which `kubectl drain` retries.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    dryrun,
    filter::ObjectFilter,
    meta,
    registry::{DeleteOptions, Registry, Scope},
    resources::{self, ResourceType},
    selector::LabelSelector,
    status::{ApiError, Cause, Details},
};

/// Upstream's message for a refused eviction; clients match on it.
pub const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Upstream's bound on `status.disruptedPods`: evictions the controller has not yet seen.
const MAX_DISRUPTED_PODS: usize = 2000;

/// How often an eviction re-reads a budget that another writer changed under it.
const CONFLICT_RETRIES: u32 = 20;

/// Evicts `ns/name` as the Eviction `body` asks. `registry` is already the dry-run registry
/// when the query asked for one; the body's `deleteOptions.dryRun` may ask too.
pub async fn evict(
    registry: &Arc<Registry>,
    query_dry_run: bool,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let (opts, body_dry_run) = read_eviction(name, body)?;
    let registry = if body_dry_run && !query_dry_run {
        registry.dry_run()
    } else {
        Arc::clone(registry)
    };
    let dry_run = body_dry_run || query_dry_run;
    let pods = rt("", "v1", "pods")?;
    let pod = registry.get(pods, Some(ns), name).await?;
    if can_ignore_budgets(&pod) {
        delete_pod(&registry, ns, &pod, with_resource_version(opts, &pod), dry_run).await?;
        return Ok(success());
    }
    let budget = match matching_budgets(&registry, ns, &pod).await?.as_slice() {
        [] => {
            delete_pod(&registry, ns, &pod, opts, dry_run).await?;
            return Ok(success());
        }
        [one] => one.clone(),
        _ => {
            return Err(ApiError::internal(
                "Internal error occurred: This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    if !is_ready(&pod) {
        let always_allow = budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        let healthy_enough =
            int(&budget, "currentHealthy") >= int(&budget, "desiredHealthy") && int(&budget, "desiredHealthy") > 0;
        // An unready pod does not count as healthy: taking it spends no allowance.
        if always_allow || healthy_enough {
            delete_pod(&registry, ns, &pod, with_resource_version(opts, &pod), dry_run).await?;
            return Ok(success());
        }
    }
    spend_allowance(&registry, ns, name, budget, dry_run).await?;
    delete_pod(&registry, ns, &pod, opts, dry_run).await?;
    Ok(success())
}

fn rt(group: &str, version: &str, plural: &str) -> Result<&'static ResourceType, ApiError> {
    resources::find(group, version, plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

/// The Eviction's delete options and whether they ask for a dry run. The body may leave out
/// apiVersion and kind (kube-rs does): the subresource says what it is.
fn read_eviction(name: &str, body: &Value) -> Result<(DeleteOptions, bool), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the Eviction body must be an object"));
    }
    match body["apiVersion"].as_str() {
        None | Some("policy/v1" | "policy/v1beta1") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "an Eviction of apiVersion policy/v1 or policy/v1beta1 is expected, not {other:?}"
            )));
        }
    }
    if body["kind"].as_str().is_some_and(|k| k != "Eviction") {
        return Err(ApiError::bad_request(format!(
            "an Eviction is expected, not a {}",
            body["kind"].as_str().unwrap_or_default()
        )));
    }
    if meta::name(body).is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options = &body["deleteOptions"];
    if options.is_null() {
        return Ok((DeleteOptions::default(), false));
    }
    if !options.is_object() {
        return Err(ApiError::bad_request("deleteOptions of the Eviction must be an object"));
    }
    let mut dry_run = false;
    for v in options["dryRun"].as_array().into_iter().flatten() {
        dry_run |= dryrun::requested(v.as_str().filter(|v| !v.is_empty()), "DeleteOptions")?;
    }
    Ok((DeleteOptions::from_body(options, None, None)?, dry_run))
}

/// Pods that are not running (yet, or any more) or already going may go whatever a
/// budget says: they are not counted as healthy.
fn can_ignore_budgets(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || meta::deletion_timestamp(pod).is_some()
}

/// Deletes only the pod as read, so one that changed meanwhile (became ready, say) is
/// looked at again rather than deleted on a stale decision.
fn with_resource_version(mut opts: DeleteOptions, pod: &Value) -> DeleteOptions {
    if opts.precondition_resource_version.is_none() {
        opts.precondition_resource_version = meta::resource_version(pod).map(str::to_owned);
    }
    opts
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn int(budget: &Value, field: &str) -> i64 {
    budget["status"][field].as_i64().unwrap_or(0)
}

/// The budgets in the pod's namespace whose selector matches it. A null selector matches
/// nothing, an empty one every pod (policy/v1); an unreadable one is skipped, as upstream.
async fn matching_budgets(registry: &Registry, ns: &str, pod: &Value) -> Result<Vec<Value>, ApiError> {
    let pdbs = rt("policy", "v1", "poddisruptionbudgets")?;
    let filter = ObjectFilter::from_query(pdbs, None, None)?;
    let scope = Scope {
        rt: pdbs,
        namespace: Some(ns),
        filter: &filter,
    };
    let page = registry.list(&scope, None, None, None, false).await?;
    let labels = meta::labels(pod);
    Ok(page
        .items
        .into_iter()
        .filter(|b| LabelSelector::from_label_selector_json(&b["spec"]["selector"]).is_ok_and(|s| s.matches(&labels)))
        .collect())
}

/// A 429 whose cause says why, as upstream's.
fn too_many_requests(cause: String) -> ApiError {
    ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: REFUSED.to_owned(),
        details: Some(Box::new(Details {
            causes: vec![Cause {
                field: String::new(),
                reason: "DisruptionBudget",
                message: cause,
            }],
            ..Details::default()
        })),
    }
}

/// Upstream's checkAndDecrement, retried on a newer budget when another writer (the
/// controller or a concurrent eviction) got in first.
async fn spend_allowance(
    registry: &Registry,
    ns: &str,
    pod_name: &str,
    mut budget: Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let pdbs = rt("policy", "v1", "poddisruptionbudgets")?;
    let budget_name = meta::name(&budget).unwrap_or_default().to_owned();
    for _ in 0..CONFLICT_RETRIES {
        let generation = budget["metadata"]["generation"].as_i64().unwrap_or(0);
        if budget["status"]["observedGeneration"].as_i64().unwrap_or(0) < generation {
            return Err(too_many_requests(format!(
                "The disruption budget {budget_name} is still being processed by the server."
            )));
        }
        let allowed = int(&budget, "disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::forbidden(format!(
                "poddisruptionbudgets.policy {budget_name:?} is forbidden: pdb disruptions allowed is negative"
            )));
        }
        let pending = budget["status"]["disruptedPods"].as_object().map_or(0, |m| m.len());
        if pending > MAX_DISRUPTED_PODS {
            return Err(ApiError::forbidden(format!(
                "poddisruptionbudgets.policy {budget_name:?} is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller"
            )));
        }
        if allowed == 0 {
            return Err(too_many_requests(format!(
                "The disruption budget {budget_name} needs {} healthy pods and has {} currently",
                int(&budget, "desiredHealthy"),
                int(&budget, "currentHealthy")
            )));
        }
        // A dry run checks, and spends nothing.
        if dry_run {
            return Ok(());
        }
        let mut spent = budget.clone();
        spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !spent["status"]["disruptedPods"].is_object() {
            spent["status"]["disruptedPods"] = json!({});
        }
        spent["status"]["disruptedPods"][pod_name] = json!(meta::now_rfc3339());
        if allowed == 1 {
            set_insufficient(&mut spent);
        }
        // The budget's resourceVersion rides along: the write is a compare-and-swap.
        match registry
            .update(pdbs, Some(ns), &budget_name, spent, Some("status"))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => {
                budget = registry.get(pdbs, Some(ns), &budget_name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError {
        code: 409,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled on poddisruptionbudgets.policy {budget_name:?}: the budget kept changing; try again"
        ),
        details: None,
    })
}

/// The DisruptionAllowed condition once the last allowance is spent, as upstream's
/// UpdateDisruptionAllowedCondition.
fn set_insufficient(budget: &mut Value) {
    let generation = budget["status"]["observedGeneration"].clone();
    let now = meta::now_rfc3339();
    let status = &mut budget["status"];
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    let fresh = json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": "", "observedGeneration": generation, "lastTransitionTime": now});
    match conditions.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
        Some(c) => {
            if c["status"] != "False" {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!("False");
            c["reason"] = json!("InsufficientPods");
            c["message"] = json!("");
            c["observedGeneration"] = generation;
        }
        None => conditions.push(fresh),
    }
}

/// Marks the pod with the DisruptionTarget condition (as upstream does since 1.26, so its
/// controller can tell an eviction from a failure), then deletes it.
async fn delete_pod(
    registry: &Arc<Registry>,
    ns: &str,
    pod: &Value,
    mut opts: DeleteOptions,
    dry_run: bool,
) -> Result<(), ApiError> {
    let pods = rt("", "v1", "pods")?;
    let name = meta::name(pod).unwrap_or_default().to_owned();
    let terminal = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let stale_precondition = opts
        .precondition_resource_version
        .as_deref()
        .is_some_and(|rv| Some(rv) != meta::resource_version(pod));
    if !dry_run && !terminal && !stale_precondition && meta::deletion_timestamp(pod).is_none() {
        let mut marked = pod.clone();
        let condition = json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting", "lastTransitionTime": meta::now_rfc3339()});
        if !marked["status"]["conditions"].is_array() {
            marked["status"]["conditions"] = json!([]);
        }
        if let Some(conditions) = marked["status"]["conditions"].as_array_mut() {
            conditions.retain(|c| c["type"] != "DisruptionTarget");
            conditions.push(condition);
        }
        let (updated, _) = registry.update(pods, Some(ns), &name, marked, Some("status")).await?;
        // Our own write moved the resourceVersion the delete is pinned to.
        if opts.precondition_resource_version.is_some() {
            opts.precondition_resource_version = meta::resource_version(&updated).map(str::to_owned);
        }
    }
    registry.delete(pods, Some(ns), &name, &opts).await?;
    Ok(())
}

/// What a successful eviction answers (201 Created).
fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_budget_cause() {
        let status =
            too_many_requests("The disruption budget web needs 2 healthy pods and has 2 currently".into()).to_status();
        assert_eq!(status["code"], 429);
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(status["message"], REFUSED);
        assert_eq!(status["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert!(status["details"]["causes"][0].get("field").is_none());
    }

    #[test]
    fn eviction_bodies_are_checked() {
        assert!(read_eviction("a", &json!({"metadata": {"name": "a"}})).is_ok());
        assert!(read_eviction("a", &json!({"apiVersion": "policy/v1beta1", "kind": "Eviction"})).is_ok());
        assert_eq!(
            read_eviction("a", &json!({"metadata": {"name": "b"}}))
                .err()
                .map(|e| e.code),
            Some(400)
        );
        assert_eq!(
            read_eviction("a", &json!({"apiVersion": "v1", "kind": "Pod"}))
                .err()
                .map(|e| e.code),
            Some(400)
        );
        let (opts, dry) = read_eviction(
            "a",
            &json!({"deleteOptions": {"gracePeriodSeconds": 0, "dryRun": ["All"]}}),
        )
        .expect("valid");
        assert_eq!(opts.grace_period_seconds, Some(0));
        assert!(dry);
    }

    #[test]
    fn not_running_pods_ignore_budgets() {
        assert!(can_ignore_budgets(&json!({"status": {"phase": "Pending"}})));
        assert!(can_ignore_budgets(&json!({"status": {"phase": "Succeeded"}})));
        assert!(can_ignore_budgets(
            &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}})
        ));
        assert!(!can_ignore_budgets(&json!({"status": {"phase": "Running"}})));
    }
}
