//! NamespaceLifecycle: nothing is created in a namespace that is being deleted, nothing is
//! written into one that does not exist, and the namespaces the system lives in
//! (`default`, `kube-system`, `kube-public`) cannot be deleted.
//!
//! Upstream runs it first among the mutating plugins, so a write into a missing namespace
//! hears about the namespace before any other plugin looks at the object.

use serde_json::Value;

use super::{Attributes, Operation};
use crate::apiserver::{
    App, meta, resources,
    status::{ApiError, Cause},
};

/// The namespaces upstream's plugin refuses to delete.
pub const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

pub async fn admit(app: &App, attrs: &Attributes<'_>, obj: &mut Value, _old: Option<&Value>) -> Result<(), ApiError> {
    let rt = attrs.req.resource;
    let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
    if is_namespace {
        let name = attrs.req.name.as_deref().unwrap_or_default();
        if attrs.operation == Operation::Delete && IMMORTAL.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        return Ok(());
    }
    let Some(ns) = attrs.namespace() else { return Ok(()) };
    if attrs.operation == Operation::Delete {
        return Ok(());
    }
    let namespaces = resources::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces"))?;
    // The real store, also for a dry run: the namespace is not part of what is tried out.
    let namespace = app.registry.get(namespaces, None, ns).await?;
    let terminating =
        meta::deletion_timestamp(&namespace).is_some() || namespace["status"]["phase"].as_str() == Some("Terminating");
    if attrs.operation == Operation::Create && terminating {
        let mut e = super::forbidden(
            attrs,
            obj,
            format!("unable to create new content in namespace {ns} because it is being terminated"),
        );
        if let Some(d) = e.details.as_mut() {
            d.causes.push(Cause {
                field: "metadata.namespace".into(),
                reason: "NamespaceTerminating",
                message: format!("namespace {ns} is being terminated"),
            });
        }
        return Err(e);
    }
    Ok(())
}
