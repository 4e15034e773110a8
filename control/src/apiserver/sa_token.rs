//! Bound ServiceAccount tokens: the TokenRequest API (`serviceaccounts/{name}/token`) that
//! issues them, and the per-request check that what a token is bound to still exists.
//!
//! A token names its ServiceAccount and, optionally, the Pod, Secret or Node it is bound to,
//! each with a UID. It authenticates only while all of them exist with those UIDs (deleted
//! at most [`DELETION_GRACE_SECS`] ago), so deleting a pod revokes the tokens mounted into
//! it, and re-creating a ServiceAccount under the same name does not revive old tokens.

use serde_json::{Value, json};

use super::{
    App,
    authn::{Authenticated, AuthnError, BoundRef, ServiceAccountClaims, UserInfo, unix_now},
    registry::Registry,
    resources::{self, ResourceType},
    status::{ApiError, Cause},
};

/// As upstream: a token bound to an object whose deletion started longer ago than this
/// stops working, so a pod shutting down gracefully keeps its credentials for a while.
pub const DELETION_GRACE_SECS: u64 = 60;
/// Upstream's minimum `expirationSeconds`.
pub const MIN_EXPIRATION_SECS: i64 = 600;
/// Upstream's cap on `expirationSeconds` (2^32).
pub const MAX_EXPIRATION_SECS: i64 = 1 << 32;
pub const DEFAULT_EXPIRATION_SECS: i64 = 3600;
/// The lifetime kubelets ask for. Upstream (`--service-account-extend-token-expiration`)
/// then issues a token valid for a year but reports 3607 s, so the kubelet refreshes it
/// in time while clients that never re-read the file keep working until the pod goes.
pub const KUBELET_EXPIRATION_SECS: i64 = 3607;
pub const EXTENDED_EXPIRATION_SECS: u64 = 365 * 24 * 3600;

fn served(plural: &str) -> Result<&'static ResourceType, ApiError> {
    resources::find("", "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

/// Who is calling, as [`super::authn::Authenticator::authenticate`] says, with a
/// ServiceAccount token also checked against the store.
pub async fn authenticate(
    app: &App,
    peer_cert_der: Option<&[u8]>,
    authorization_header: Option<&str>,
) -> Result<Option<UserInfo>, AuthnError> {
    let detailed = match app.authn.authenticate_detailed(peer_cert_der, authorization_header) {
        // Neither the token file nor a ServiceAccount token: maybe a bootstrap token.
        Err(AuthnError::InvalidBearerToken) => {
            let token = super::certificates::bootstrap_token::from_header(authorization_header)
                .ok_or(AuthnError::InvalidBearerToken)?;
            let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            return match super::certificates::bootstrap_token::authenticate(&app.registry, token, now).await {
                Ok(user) => Ok(Some(user)),
                Err(why) => {
                    tracing::debug!(%why, "bootstrap token refused");
                    Err(AuthnError::InvalidBearerToken)
                }
            };
        }
        other => other?,
    };
    let Some(Authenticated { user, service_account }) = detailed else {
        return Ok(None);
    };
    if let Some(claims) = service_account {
        still_bound(&app.registry, &claims, unix_now())
            .await
            .map_err(AuthnError::RevokedServiceAccountToken)?;
    }
    Ok(Some(user))
}

/// Ok when the token's ServiceAccount and bound object exist with the token's UIDs; else
/// why not, for the log (the client only sees 401).
pub async fn still_bound(registry: &Registry, claims: &ServiceAccountClaims, now: u64) -> Result<(), String> {
    let ns = claims.namespace.as_str();
    let sa = BoundRef {
        name: claims.name.clone(),
        uid: claims.uid.clone(),
    };
    check_exists(registry, "serviceaccounts", Some(ns), &sa, now).await?;
    if let Some(pod) = &claims.pod {
        check_exists(registry, "pods", Some(ns), pod, now).await?;
    }
    if let Some(secret) = &claims.secret {
        check_exists(registry, "secrets", Some(ns), secret, now).await?;
    }
    // With a pod, the node claim only records where the pod ran (as upstream).
    if let (None, Some(node)) = (&claims.pod, &claims.node) {
        check_exists(registry, "nodes", None, node, now).await?;
    }
    Ok(())
}

async fn check_exists(
    registry: &Registry,
    plural: &str,
    ns: Option<&str>,
    want: &BoundRef,
    now: u64,
) -> Result<(), String> {
    let rt = served(plural).map_err(|e| e.message)?;
    let what = match ns {
        Some(ns) => format!("{plural} {ns}/{}", want.name),
        None => format!("{plural} {}", want.name),
    };
    let obj = match registry.get(rt, ns, &want.name).await {
        Ok(obj) => obj,
        Err(e) if e.reason == "NotFound" => return Err(format!("{what} no longer exists")),
        Err(e) => {
            // Fail closed: a token is not honoured while its binding cannot be checked.
            tracing::warn!(error = %e.message, %what, "checking a ServiceAccount token's binding");
            return Err(format!("{what} could not be read: {}", e.message));
        }
    };
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    if uid != want.uid {
        return Err(format!(
            "{what} has UID {uid}, the token was issued for UID {} (deleted and re-created)",
            want.uid
        ));
    }
    if let Some(deleted) = obj["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    {
        let since = i64::try_from(now).unwrap_or(i64::MAX) - deleted.as_second();
        if since > DELETION_GRACE_SECS as i64 {
            return Err(format!("{what} is being deleted since {since}s"));
        }
    }
    Ok(())
}

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        "TokenRequest",
        "authentication.k8s.io",
        name,
        vec![Cause::invalid(field, message)],
    )
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: the created TokenRequest.
pub async fn token_request(
    app: &App,
    user: &UserInfo,
    ns: &str,
    name: &str,
    mut body: Value,
) -> Result<Value, ApiError> {
    let sa = app.registry.get(served("serviceaccounts")?, Some(ns), name).await?;
    let tokens = app
        .authn
        .service_accounts()
        .ok_or_else(|| ApiError::internal("ServiceAccount tokens are not configured"))?;
    let spec = &body["spec"];
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECS,
        v => v.as_i64().ok_or_else(|| {
            invalid(
                name,
                "spec.expirationSeconds",
                format!("Invalid value: {v}: must be an integer"),
            )
        })?,
    };
    if seconds < MIN_EXPIRATION_SECS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > MAX_EXPIRATION_SECS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"),
        ));
    }
    let mut audiences = Vec::new();
    for (i, a) in spec["audiences"].as_array().into_iter().flatten().enumerate() {
        match a.as_str() {
            Some(a) if !a.is_empty() => audiences.push(a.to_owned()),
            _ => {
                return Err(invalid(
                    name,
                    &format!("spec.audiences[{i}]"),
                    format!("Invalid value: {a}: must be a non-empty string"),
                ));
            }
        }
    }
    if audiences.is_empty() {
        audiences = tokens.api_audiences().to_vec();
    }
    let now = unix_now();
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    let mut claims = ServiceAccountClaims::new(ns, name, sa_uid, audiences.clone(), now, seconds as u64);
    let bound = &spec["boundObjectRef"];
    let bound_pod = if bound.is_null() {
        None
    } else {
        bind(app, &mut claims, bound, name).await?
    };
    if let Some(node) = user.is_node() {
        // NodeRestriction: a node asks only for tokens of pods running on it.
        let on_this_node = bound_pod
            .as_ref()
            .is_some_and(|p| p["spec"]["nodeName"].as_str() == Some(node));
        let has_uid = bound["uid"].as_str().is_some_and(|u| !u.is_empty());
        if !on_this_node || !has_uid {
            return Err(ApiError::forbidden(format!(
                "serviceaccounts \"{name}\" is forbidden: node \"{node}\" may only request tokens bound (with a uid) \
                 to a pod scheduled on it"
            )));
        }
    }
    if bound_pod.is_some() && seconds == KUBELET_EXPIRATION_SECS && audiences == tokens.api_audiences() {
        claims.warn_after = Some(claims.expires_at);
        claims.expires_at = now + EXTENDED_EXPIRATION_SECS;
    }
    let token = tokens
        .issue(&claims)
        .map_err(|e| ApiError::internal(format!("issuing a token: {e}")))?;
    let expires = jiff::Timestamp::from_second(i64::try_from(now).unwrap_or(0) + seconds)
        .map_err(|e| ApiError::internal(format!("expiry out of range: {e}")))?;
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenRequest");
    body["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    body["spec"]["audiences"] = json!(audiences);
    body["spec"]["expirationSeconds"] = json!(seconds);
    body["status"] = json!({"token": token, "expirationTimestamp": expires.to_string()});
    Ok(body)
}

/// Fills the claims for `spec.boundObjectRef`; returns the pod when bound to one.
async fn bind(
    app: &App,
    claims: &mut ServiceAccountClaims,
    bound: &Value,
    sa_name: &str,
) -> Result<Option<Value>, ApiError> {
    let kind = bound["kind"].as_str().unwrap_or_default();
    let api_version = bound["apiVersion"].as_str().unwrap_or_default();
    let name = bound["name"].as_str().unwrap_or_default();
    let want_uid = bound["uid"].as_str().unwrap_or_default();
    if api_version != "v1" {
        return Err(invalid(
            sa_name,
            "spec.boundObjectRef.apiVersion",
            format!("Unsupported value: {api_version:?}: supported values: \"v1\""),
        ));
    }
    let plural = match kind {
        "Pod" => "pods",
        "Secret" => "secrets",
        "Node" => "nodes",
        _ => {
            return Err(invalid(
                sa_name,
                "spec.boundObjectRef.kind",
                format!("Unsupported value: {kind:?}: supported values: \"Pod\", \"Secret\", \"Node\""),
            ));
        }
    };
    if name.is_empty() {
        return Err(invalid(sa_name, "spec.boundObjectRef.name", "Required value".into()));
    }
    let ns = (kind != "Node").then_some(claims.namespace.as_str());
    let obj = app.registry.get(served(plural)?, ns, name).await?;
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    if !want_uid.is_empty() && want_uid != uid {
        return Err(ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "the UID in the bound object reference ({want_uid}) does not match the UID in record ({uid}). \
                 The object might have been deleted and then recreated"
            ),
            details: None,
        });
    }
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::bad_request(format!(
            "cannot bind a token to {kind} \"{name}\": it is being deleted"
        )));
    }
    let bound_ref = BoundRef {
        name: name.to_owned(),
        uid,
    };
    match kind {
        "Pod" => {
            let pod_sa = obj["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            if pod_sa != sa_name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{}/{sa_name}\" to pod running with different \
                     serviceaccount name \"{pod_sa}\"",
                    claims.namespace
                )));
            }
            claims.pod = Some(bound_ref);
            // Where the pod runs, as upstream records it (informational for a pod token).
            if let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
                && let Ok(n) = app.registry.get(served("nodes")?, None, node).await
            {
                claims.node = Some(BoundRef {
                    name: node.to_owned(),
                    uid: n["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                });
            }
            Ok(Some(obj))
        }
        "Secret" => {
            claims.secret = Some(bound_ref);
            Ok(None)
        }
        _ => {
            claims.node = Some(bound_ref);
            Ok(None)
        }
    }
}
