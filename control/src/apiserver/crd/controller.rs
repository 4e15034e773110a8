//! Keeps the catalog of served custom types in step with the stored CRDs, sets their
//! status (NamesAccepted, Established, acceptedNames, storedVersions) and, when a CRD is
//! being deleted, deletes its objects and then lets the CRD go.
//!
//! It watches the store rather than hooking the CRD handlers, so every API server over
//! one store serves the same types; each one's status writes agree, so their
//! compare-and-swap races settle on the same status.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};

use super::{CustomType, definition::CLEANUP_FINALIZER};
use crate::{
    apiserver::{
        meta,
        registry::Registry,
        resources::{self, ResourceType},
        status::ApiError,
    },
    store::{ListOptions, StoreError},
};

fn crd_type() -> Result<&'static ResourceType, ApiError> {
    resources::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("customresourcedefinitions not served"))
}

/// Stops the controller when the server that started it goes away.
pub struct Handle(tokio::task::AbortHandle);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Loads the stored CRDs into the catalog (so a restarted server serves them at once), then
/// follows changes in the background.
pub async fn start(registry: Arc<Registry>) -> Result<Handle, StoreError> {
    let revision = sync(&registry).await.map_err(|e| StoreError::backend_msg(e.message))?;
    let task = tokio::spawn(run(registry, revision));
    Ok(Handle(task.abort_handle()))
}

async fn run(registry: Arc<Registry>, mut revision: i64) {
    let Ok(rt) = crd_type() else { return };
    let prefix = rt.key_prefix(None);
    loop {
        match registry.store.watch(&prefix, revision).await {
            Ok(mut events) => {
                while let Some(event) = events.next().await {
                    match event {
                        Err(_) => break,
                        // Nothing changed: no sync needed.
                        Ok(crate::store::Event::Progress { .. }) => continue,
                        Ok(_) => {}
                    }
                    // One sync covers everything that arrived together.
                    while let Some(Some(Ok(_))) = events.next().now_or_never() {}
                    match sync(&registry).await {
                        Ok(r) => revision = r,
                        Err(e) => tracing::warn!(error = %e.message, "CustomResourceDefinition sync failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "CustomResourceDefinition watch failed"),
        }
        // The watch ended (lagged, compacted, store restarted): resync, then watch again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        match sync(&registry).await {
            Ok(r) => revision = r,
            Err(e) => tracing::warn!(error = %e.message, "CustomResourceDefinition sync failed"),
        }
    }
}

/// What the names check decided for one CRD.
enum Names {
    Accepted,
    Conflict { reason: &'static str, message: String },
}

/// One pass over every CRD; returns the revision it read at.
async fn sync(registry: &Arc<Registry>) -> Result<i64, ApiError> {
    let rt = crd_type()?;
    let page = registry
        .store
        .list(ListOptions {
            prefix: rt.key_prefix(None),
            start_after: None,
            limit: None,
            revision: None,
        })
        .await?;
    let mut crds = page
        .items
        .iter()
        .map(meta::decode_stored)
        .collect::<Result<Vec<_>, _>>()?;
    // The older CRD keeps a contested name, as upstream decides.
    crds.sort_by(|a, b| {
        let key = |o: &Value| {
            (
                o["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                meta::name(o).unwrap_or_default().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut served: Vec<&Value> = Vec::new();
    let mut keep = Vec::new();
    for crd in &crds {
        let name = meta::name(crd).unwrap_or_default().to_owned();
        if meta::deletion_timestamp(crd).is_some() {
            registry.crds.remove(&name);
            if let Err(e) = cleanup(registry, rt, crd).await {
                tracing::warn!(crd = %name, error = %e.message, "could not delete the objects of a CustomResourceDefinition");
            }
            continue;
        }
        let names = check_names(crd, &served);
        if matches!(names, Names::Accepted) {
            registry.crds.set(&name, CustomType::from_crd(crd));
            served.push(crd);
            keep.push(name.clone());
        } else {
            registry.crds.remove(&name);
        }
        let status = desired_status(crd, &names);
        if crd["status"] != status {
            let mut updated = crd.clone();
            updated["status"] = status;
            match registry.update(rt, None, &name, updated, Some("status")).await {
                Ok(_) => {}
                // Someone wrote in between: the watch brings the newer CRD.
                Err(e) if e.reason == "Conflict" || e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(crd = %name, error = %e.message, "could not write CustomResourceDefinition status")
                }
            }
        }
    }
    registry.crds.retain(&keep);
    Ok(page.revision)
}

fn names_of(crd: &Value) -> (Vec<String>, Vec<String>) {
    let n = &crd["spec"]["names"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut resource = vec![s(&n["plural"]), s(&n["singular"])];
    resource.extend(
        n["shortNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned),
    );
    let kinds = vec![s(&n["kind"]), s(&n["listKind"])];
    (
        resource.into_iter().filter(|x| !x.is_empty()).collect(),
        kinds.into_iter().filter(|x| !x.is_empty()).collect(),
    )
}

/// A CRD's names may not collide with those of another served CRD of the same group.
fn check_names(crd: &Value, served: &[&Value]) -> Names {
    let (resource, kinds) = names_of(crd);
    for other in served.iter().filter(|o| o["spec"]["group"] == crd["spec"]["group"]) {
        let (o_resource, o_kinds) = names_of(other);
        if let Some(n) = resource.iter().find(|n| o_resource.contains(n)) {
            return Names::Conflict {
                reason: "PluralConflict",
                message: format!("{n:?} is already in use"),
            };
        }
        if let Some(k) = kinds.iter().find(|k| o_kinds.contains(k)) {
            return Names::Conflict {
                reason: "KindConflict",
                message: format!("{k:?} is already in use"),
            };
        }
    }
    Names::Accepted
}

fn condition(old: &Value, ty: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let previous = old["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == ty));
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(meta::now_rfc3339()),
    };
    json!({"type": ty, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

fn desired_status(crd: &Value, names: &Names) -> Value {
    let old = &crd["status"];
    let mut status = old.clone();
    if !status.is_object() {
        status = json!({});
    }
    let (accepted, established) = match names {
        Names::Accepted => (
            condition(old, "NamesAccepted", true, "NoConflicts", "no conflicts found"),
            condition(
                old,
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ),
        Names::Conflict { reason, message } => (
            condition(old, "NamesAccepted", false, reason, message),
            condition(old, "Established", false, "NotAccepted", "not all names are accepted"),
        ),
    };
    let mut conditions: Vec<Value> = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != "NamesAccepted" && c["type"] != "Established")
        .cloned()
        .collect();
    conditions.push(accepted);
    conditions.push(established);
    status["conditions"] = json!(conditions);
    if matches!(names, Names::Accepted) {
        let n = &crd["spec"]["names"];
        let mut accepted_names =
            json!({"plural": n["plural"], "singular": n["singular"], "kind": n["kind"], "listKind": n["listKind"]});
        for field in ["shortNames", "categories"] {
            if n[field].as_array().is_some_and(|a| !a.is_empty()) {
                accepted_names[field] = n[field].clone();
            }
        }
        status["acceptedNames"] = accepted_names;
    }
    let mut stored: Vec<Value> = old["storedVersions"].as_array().cloned().unwrap_or_default();
    if let Some(v) = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| v["name"].clone())
        && !stored.contains(&v)
    {
        stored.push(v);
    }
    status["storedVersions"] = json!(stored);
    status
}

/// Deletes every object of a CRD that is being deleted, then removes the cleanup
/// finalizer, which lets the CRD itself go.
async fn cleanup(registry: &Arc<Registry>, rt: &'static ResourceType, crd: &Value) -> Result<(), ApiError> {
    let group = crd["spec"]["group"].as_str().unwrap_or_default();
    let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
    if !group.is_empty() && !plural.is_empty() {
        // Every version shares this prefix (`ResourceType::key_prefix`).
        let prefix = format!("/registry/{group}/{plural}/");
        let page = registry
            .store
            .list(ListOptions {
                prefix,
                start_after: None,
                limit: None,
                revision: None,
            })
            .await?;
        for kv in page.items {
            match registry.store.delete(&kv.key, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let finalizers = meta::finalizers(crd);
    if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(());
    }
    let mut updated = crd.clone();
    let rest: Vec<String> = finalizers.into_iter().filter(|f| f != CLEANUP_FINALIZER).collect();
    meta::metadata_mut(&mut updated).insert("finalizers".into(), json!(rest));
    let name = meta::name(crd).unwrap_or_default();
    match registry.update(rt, None, name, updated, None).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "Conflict" || e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
