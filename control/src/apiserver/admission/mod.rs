//! Admission: plugins that may refuse (validating) a write after it was authorized and
//! decoded, before it is stored. Each refusal names the plugin's reason in upstream's
//! words. Plugins see the request's attributes and the object; they also run on dry-run
//! requests, where they must not write anything themselves.

pub mod pod_security;
pub mod pss;
pub mod resource_quota;

use serde_json::Value;

use super::{App, authn::UserInfo, patch::PatchType, request::ResourceRequest, status::ApiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

pub struct Attributes<'a> {
    pub user: &'a UserInfo,
    pub req: &'a ResourceRequest,
    pub operation: Operation,
    pub dry_run: bool,
}

/// Runs the validating plugins in upstream's order (PodSecurity before ResourceQuota, so
/// a refused pod never charges a quota). Returns the warnings for the response.
pub async fn validate_all(
    app: &App,
    attrs: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let warnings = pod_security::evaluate(app, attrs, obj, old).await?;
    resource_quota::validate(app, attrs, obj, old).await?;
    Ok(warnings)
}

/// A create, as the handler decoded it.
pub async fn admit_create(
    app: &App,
    user: &UserInfo,
    req: &ResourceRequest,
    obj: &Value,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    let attrs = Attributes {
        user,
        req,
        operation: Operation::Create,
        dry_run,
    };
    validate_all(app, &attrs, obj, None).await
}

/// Whether updates of this kind concern a plugin here; the others skip reading the
/// current object (Leases and node status are written all the time).
fn updates_matter(req: &ResourceRequest) -> bool {
    req.subresource.is_none()
        && matches!(
            (req.resource.group, req.resource.kind),
            ("", "Pod" | "Namespace" | "ReplicationController")
                | ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
                | ("batch", "Job" | "CronJob")
        )
}

/// A PUT: checked against the current object (a PUT that creates is a create).
pub async fn admit_update(
    app: &App,
    user: &UserInfo,
    req: &ResourceRequest,
    obj: &Value,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    if !updates_matter(req) {
        return Ok(vec![]);
    }
    let name = req.name.as_deref().unwrap_or_default();
    match app.registry.get(req.resource, req.namespace.as_deref(), name).await {
        Ok(old) => {
            let attrs = Attributes {
                user,
                req,
                operation: Operation::Update,
                dry_run,
            };
            validate_all(app, &attrs, obj, Some(&old)).await
        }
        Err(e) if e.reason == "NotFound" => admit_create(app, user, req, obj, dry_run).await,
        Err(e) => Err(e),
    }
}

/// A PATCH: checked on the current object with the patch applied (the registry applies
/// it again; a concurrent writer may slip in between, as for RBAC escalation).
pub async fn admit_patch(
    app: &App,
    user: &UserInfo,
    req: &ResourceRequest,
    patch_type: PatchType,
    patch: &[u8],
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    let name = req.name.as_deref().unwrap_or_default();
    let creates = patch_type == PatchType::Apply && req.subresource.is_none();
    if !updates_matter(req) && !creates {
        return Ok(vec![]);
    }
    let current = match app.registry.get(req.resource, req.namespace.as_deref(), name).await {
        Ok(obj) => Some(obj),
        Err(e) if e.reason == "NotFound" => None,
        Err(e) => return Err(e),
    };
    let base = current.clone().unwrap_or(Value::Null);
    // A patch that does not apply fails in the registry with the right error.
    let Ok(new) = super::patch::apply_patch(req.resource.kind, &base, patch, patch_type) else {
        return Ok(vec![]);
    };
    match current {
        None if creates => admit_create(app, user, req, &new, dry_run).await,
        None => Ok(vec![]),
        Some(_) if !updates_matter(req) => Ok(vec![]),
        Some(old) => {
            let attrs = Attributes {
                user,
                req,
                operation: Operation::Update,
                dry_run,
            };
            validate_all(app, &attrs, &new, Some(&old)).await
        }
    }
}

/// Adds each warning as its own `Warning: 299 - "..."` header, quoted as RFC 7234 asks
/// (kubectl prints them as `Warning: ...`).
pub fn with_warnings<B>(mut resp: http::Response<B>, warnings: &[String]) -> http::Response<B> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(http::header::WARNING, v);
        }
    }
    resp
}
