//! CertificateSigningRequests (`certificates.k8s.io/v1`): the strategy (the requestor is
//! the authenticated user, the spec never changes, `/approval` writes only the approval
//! conditions and `/status` everything else), validation (`spec.request` must be a PEM
//! PKCS#10 request whose signature verifies), and the admission checks upstream runs:
//! approving needs `approve` and writing a certificate `sign` on the `signers` resource
//! named by the request's signerName, and `kube-apiserver-client` refuses `system:masters`.
//! `request` parses requests, `signers` holds what each built-in signer allows;
//! `bootstrap_token` authenticates bootstrap tokens; the controllers that approve and sign
//! live in `controllers::csr`.

pub mod access_review;
pub mod bootstrap_token;
pub mod policy;
pub mod request;
pub mod signers;
pub mod table;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    App,
    authn::{SYSTEM_MASTERS, UserInfo},
    meta,
    rbac::Attributes,
    request::{ResourceRequest, Verb},
    resources::ResourceType,
    status::{ApiError, Cause},
};

pub const GROUP: &str = "certificates.k8s.io";
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// The shortest `spec.expirationSeconds` upstream accepts (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Every usage string the API accepts (upstream's KeyUsage constants).
pub const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

pub fn is_csr(rt: &ResourceType) -> bool {
    rt.group == GROUP && rt.kind == "CertificateSigningRequest" && rt.custom.is_none()
}

/// The decoded `spec.request` bytes (the JSON form carries them base64-encoded).
pub fn request_bytes(obj: &Value) -> Option<Vec<u8>> {
    let text = obj["spec"]["request"].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Create admission: the requestor fields are the authenticated user's, whatever the body
/// said, and (upstream's CertificateSubjectRestriction) `kube-apiserver-client` may not be
/// asked for a `system:masters` certificate.
pub fn admit_create(user: &UserInfo, r: &ResourceRequest, body: &mut Value) -> Result<(), ApiError> {
    if !is_csr(r.resource) || r.subresource.is_some() {
        return Ok(());
    }
    if !body["spec"].is_object() {
        body["spec"] = json!({});
    }
    let spec = &mut body["spec"];
    spec["username"] = json!(user.name);
    if user.uid.is_empty() {
        if let Some(m) = spec.as_object_mut() {
            m.remove("uid");
        }
    } else {
        spec["uid"] = json!(user.uid);
    }
    spec["groups"] = json!(user.groups);
    // We carry no extra attributes for any user, so none are recorded.
    if let Some(m) = spec.as_object_mut() {
        m.remove("extra");
    }
    if body["spec"]["signerName"] == KUBE_APISERVER_CLIENT
        && let Some(req) = request_bytes(body).and_then(|b| request::parse_pem(&b).ok())
        && req.organizations.iter().any(|o| o == SYSTEM_MASTERS)
    {
        let name = meta::name(body).unwrap_or_default();
        return Err(ApiError::forbidden(format!(
            "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed"
        )));
    }
    Ok(())
}

/// Update admission for `/approval` (verb `approve`) and `/status` (verb `sign`) on the
/// `signers` resource named by the stored request's signerName, or `<domain>/*`.
pub async fn admit_write(app: &App, user: &UserInfo, r: &ResourceRequest) -> Result<(), ApiError> {
    if !is_csr(r.resource) || !matches!(r.verb, Verb::Update | Verb::Patch) {
        return Ok(());
    }
    let (verb, doing) = match r.subresource.as_deref() {
        Some("approval") => ("approve", "approve"),
        Some("status") => ("sign", "sign"),
        _ => return Ok(()),
    };
    let name = r.name.as_deref().unwrap_or_default();
    let stored = app.registry.get(r.resource, None, name).await?;
    let signer = stored["spec"]["signerName"].as_str().unwrap_or_default().to_owned();
    if signer_allowed(app, user, verb, &signer).await {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to {doing} requests with signerName \"{signer}\""
    )))
}

/// Whether `user` may `verb` (approve, sign) requests for `signer`.
pub async fn signer_allowed(app: &App, user: &UserInfo, verb: &str, signer: &str) -> bool {
    if user.in_group(SYSTEM_MASTERS) {
        return true;
    }
    let wildcard = signer.split_once('/').map(|(domain, _)| format!("{domain}/*"));
    for name in std::iter::once(signer.to_owned()).chain(wildcard) {
        let attrs = Attributes {
            verb,
            group: GROUP,
            resource: "signers".into(),
            namespace: None,
            name: Some(&name),
        };
        if app.authz.rbac.allows(user, &attrs).await {
            return true;
        }
    }
    false
}

/// Update rules: the spec never changes; the main resource keeps the stored status,
/// `/approval` changes only the conditions and `/status` everything but the Approved and
/// Denied conditions. Conditions get their timestamps when they come without.
pub fn prepare_update(old: &Value, new: &mut Value, subresource: Option<&str>) {
    let mut status = old.get("status").cloned().unwrap_or_else(|| json!({}));
    match subresource {
        Some("approval") => {
            status["conditions"] = new["status"]["conditions"].clone();
        }
        Some("status") => {
            let mut incoming = new.get("status").cloned().unwrap_or_else(|| json!({}));
            let approval = |c: &&Value| matches!(c["type"].as_str(), Some("Approved" | "Denied"));
            let kept: Vec<Value> = conditions(old).iter().filter(approval).cloned().collect();
            let others: Vec<Value> = conditions(new).iter().filter(|c| !approval(c)).cloned().collect();
            incoming["conditions"] = json!(kept.into_iter().chain(others).collect::<Vec<_>>());
            status = incoming;
        }
        _ => {}
    }
    if subresource.is_some() {
        let mut merged = old.clone();
        for field in ["labels", "annotations"] {
            if let Some(v) = meta::metadata(new).and_then(|m| m.get(field)).cloned() {
                meta::metadata_mut(&mut merged).insert(field.into(), v);
            }
        }
        if let Some(rv) = meta::metadata(new).and_then(|m| m.get("resourceVersion")).cloned() {
            meta::metadata_mut(&mut merged).insert("resourceVersion".into(), rv);
        }
        *new = merged;
    }
    new["spec"] = old["spec"].clone();
    let now = meta::now_rfc3339();
    if let Some(list) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in list {
            for field in ["lastUpdateTime", "lastTransitionTime"] {
                if c.get(field).is_none_or(Value::is_null) {
                    c[field] = json!(now);
                }
            }
        }
    }
    if status.get("conditions").is_some_and(Value::is_null)
        && let Some(m) = status.as_object_mut()
    {
        m.remove("conditions");
    }
    new["status"] = status;
}

fn conditions(obj: &Value) -> &[Value] {
    obj["status"]["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Field rules; on create the spec, on every write the conditions and certificate.
pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if old.is_none() {
        validate_spec(obj, causes);
    }
    validate_status(obj, old, causes);
}

fn validate_spec(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    match spec["request"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.request")),
        Some(_) => match request_bytes(obj) {
            None => causes.push(Cause::invalid("spec.request", "Invalid value: not base64")),
            Some(bytes) => {
                if let Err(e) = request::parse_pem(&bytes) {
                    causes.push(Cause::invalid(
                        "spec.request",
                        format!("Invalid value: []byte{{...{} bytes}}: {e}", bytes.len()),
                    ));
                }
            }
        },
    }
    match spec["signerName"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.signerName")),
        Some(s) if !signer_name_ok(s) => causes.push(Cause::invalid(
            "spec.signerName",
            format!(
                "Invalid value: {s:?}: must be a fully qualified domain and path of the form 'example.com/signer-name'"
            ),
        )),
        Some(_) => {}
    }
    match spec["usages"].as_array() {
        None => causes.push(Cause::required("spec.usages")),
        Some(list) if list.is_empty() => causes.push(Cause::required("spec.usages")),
        Some(list) => {
            let mut seen = Vec::new();
            for (i, u) in list.iter().enumerate() {
                let u = u.as_str().unwrap_or_default();
                if !USAGES.contains(&u) {
                    causes.push(Cause::not_supported(
                        format!("spec.usages[{i}]"),
                        format!(
                            "Unsupported value: {u:?}: supported values: {}",
                            USAGES.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                } else if seen.contains(&u) {
                    causes.push(Cause::duplicate(
                        format!("spec.usages[{i}]"),
                        format!("Duplicate value: {u:?}"),
                    ));
                }
                seen.push(u);
            }
        }
    }
    if let Some(secs) = spec.get("expirationSeconds").filter(|v| !v.is_null()) {
        match secs.as_i64() {
            Some(s) if s >= MIN_EXPIRATION_SECONDS => {}
            _ => causes.push(Cause::invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {secs}: may not specify a duration less than 600 seconds (10 minutes)"),
            )),
        }
    }
}

fn signer_name_ok(s: &str) -> bool {
    let Some((domain, path)) = s.split_once('/') else {
        return false;
    };
    !path.is_empty()
        && path.len() <= 571
        && domain.contains('.')
        && domain.len() <= 253
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn validate_status(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let list = conditions(obj);
    let mut types: Vec<&str> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let at = format!("status.conditions[{i}]");
        let ty = c["type"].as_str().unwrap_or_default();
        if ty.is_empty() {
            causes.push(Cause::required(format!("{at}.type")));
            continue;
        }
        if types.contains(&ty) {
            causes.push(Cause::duplicate(
                format!("{at}.type"),
                format!("Duplicate value: {ty:?}"),
            ));
        }
        types.push(ty);
        if matches!(ty, "Approved" | "Denied") && c["status"] != "True" {
            causes.push(Cause::not_supported(
                format!("{at}.status"),
                format!("Unsupported value: {}: supported values: \"True\"", c["status"]),
            ));
        }
    }
    if types.contains(&"Approved") && types.contains(&"Denied") {
        causes.push(Cause::invalid(
            "status.conditions",
            "Invalid value: Approved and Denied conditions are mutually exclusive",
        ));
    }
    if let Some(old) = old {
        for ty in ["Approved", "Denied", "Failed"] {
            let had = conditions(old).iter().any(|c| c["type"] == ty);
            if had && !types.contains(&ty) {
                causes.push(Cause::invalid(
                    "status.conditions",
                    format!("Forbidden: updates may not remove a condition of type {ty:?}"),
                ));
            }
        }
        let before = old["status"]["certificate"].as_str().unwrap_or_default();
        let after = obj["status"]["certificate"].as_str().unwrap_or_default();
        if !before.is_empty() && before != after {
            causes.push(Cause::invalid(
                "status.certificate",
                "Forbidden: updates may not modify existing certificate content",
            ));
        }
    }
    if let Some(cert) = obj["status"]["certificate"].as_str().filter(|c| !c.is_empty()) {
        let pem_ok = base64::engine::general_purpose::STANDARD
            .decode(cert)
            .ok()
            .and_then(|b| pem::parse_many(b).ok())
            .is_some_and(|blocks| !blocks.is_empty() && blocks.iter().all(|b| b.tag() == "CERTIFICATE"));
        if !pem_ok {
            causes.push(Cause::invalid(
                "status.certificate",
                "Invalid value: must contain at least one CERTIFICATE PEM block and nothing else",
            ));
        } else if !types.contains(&"Approved") {
            causes.push(Cause::invalid(
                "status.certificate",
                "Forbidden: certificate can only be set once the request is Approved",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
