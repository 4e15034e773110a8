//! What the three built-in signers issue, as upstream's csrsigning controller checks it:
//! a request that breaks its signer's rules gets a `Failed` condition, never a certificate.

use super::{
    KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING, MIN_EXPIRATION_SECONDS, request::CertificateRequest,
};

/// `kube-controller-manager --cluster-signing-duration`'s default: one year.
pub const DEFAULT_MAX_SECONDS: i64 = 365 * 24 * 3600;

pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";

/// Whether `signer` is one of ours.
pub fn is_built_in(signer: &str) -> bool {
    matches!(signer, KUBE_APISERVER_CLIENT | KUBELET_CLIENT | KUBELET_SERVING)
}

/// How long the certificate lives: the requested seconds (at least 600) capped by `max`.
pub fn validity_seconds(requested: Option<i64>, max: i64) -> i64 {
    match requested {
        Some(s) => s.max(MIN_EXPIRATION_SECONDS).min(max),
        None => max,
    }
}

/// Ok when `signer` may issue what `req` asks with `usages`; else the reason for the
/// `Failed` condition's message.
pub fn check(signer: &str, req: &CertificateRequest, usages: &[String]) -> Result<(), String> {
    match signer {
        KUBE_APISERVER_CLIENT => only_usages(
            usages,
            &["digital signature", "key encipherment", "client auth"],
            "client auth",
        ),
        KUBELET_CLIENT => kubelet_client(req, usages),
        KUBELET_SERVING => kubelet_serving(req, usages),
        other => Err(format!("signer {other:?} is not handled here")),
    }
}

/// Upstream's ValidateKubeletClientCSR.
pub fn kubelet_client(req: &CertificateRequest, usages: &[String]) -> Result<(), String> {
    node_subject(req)?;
    if !(req.dns_names.is_empty() && req.ip_addresses.is_empty() && req.emails.is_empty() && req.uris.is_empty()) {
        return Err("DNS, email, IP and URI subjectAltNames are not allowed".into());
    }
    only_usages(
        usages,
        &["digital signature", "key encipherment", "client auth"],
        "client auth",
    )
}

/// Upstream's ValidateKubeletServingCSR.
pub fn kubelet_serving(req: &CertificateRequest, usages: &[String]) -> Result<(), String> {
    node_subject(req)?;
    if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if !req.emails.is_empty() || !req.uris.is_empty() {
        return Err("email and URI subjectAltNames are not allowed".into());
    }
    only_usages(
        usages,
        &["digital signature", "key encipherment", "server auth"],
        "server auth",
    )
}

fn node_subject(req: &CertificateRequest) -> Result<(), String> {
    if req.organizations != [NODES_GROUP] {
        return Err(format!("subject organization is not {NODES_GROUP}"));
    }
    if !req.common_name.starts_with(NODE_USER_PREFIX) || req.common_name.len() == NODE_USER_PREFIX.len() {
        return Err(format!("subject common name does not begin with {NODE_USER_PREFIX}"));
    }
    Ok(())
}

fn only_usages(usages: &[String], allowed: &[&str], required: &str) -> Result<(), String> {
    if let Some(bad) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        return Err(format!("usage {bad:?} is not allowed, only {}", allowed.join(", ")));
    }
    if !usages.iter().any(|u| u == required) {
        return Err(format!("usage {required:?} is required"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::certificates::request::KeyType;

    fn req(cn: &str, orgs: &[&str], dns: &[&str]) -> CertificateRequest {
        CertificateRequest {
            common_name: cn.into(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: vec![],
            emails: vec![],
            uris: vec![],
            subject_der: vec![],
            key_type: KeyType::EcdsaP256,
            public_key: vec![],
        }
    }

    fn u(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubelet_signers_want_node_subjects_and_their_usages() {
        let node = req("system:node:n1", &["system:nodes"], &[]);
        let client = u(&["digital signature", "client auth"]);
        assert_eq!(check(KUBELET_CLIENT, &node, &client), Ok(()));
        assert!(check(KUBELET_CLIENT, &req("alice", &["system:nodes"], &[]), &client).is_err());
        assert!(check(KUBELET_CLIENT, &req("system:node:n1", &[], &[]), &client).is_err());
        assert!(check(KUBELET_CLIENT, &node, &u(&["server auth"])).is_err());
        assert!(
            check(
                KUBELET_CLIENT,
                &req("system:node:n1", &["system:nodes"], &["n1"]),
                &client
            )
            .is_err()
        );
        let serving = req("system:node:n1", &["system:nodes"], &["n1.example"]);
        assert_eq!(
            check(KUBELET_SERVING, &serving, &u(&["server auth", "key encipherment"])),
            Ok(())
        );
        assert!(check(KUBELET_SERVING, &node, &u(&["server auth"])).is_err());
        assert!(check(KUBE_APISERVER_CLIENT, &req("alice", &[], &[]), &client).is_ok());
        assert!(check("example.com/other", &node, &client).is_err());
    }

    #[test]
    fn validity_honours_the_request_within_bounds() {
        assert_eq!(validity_seconds(None, DEFAULT_MAX_SECONDS), DEFAULT_MAX_SECONDS);
        assert_eq!(validity_seconds(Some(3600), DEFAULT_MAX_SECONDS), 3600);
        assert_eq!(validity_seconds(Some(10), DEFAULT_MAX_SECONDS), 600);
        assert_eq!(validity_seconds(Some(10 * DEFAULT_MAX_SECONDS), 7200), 7200);
    }
}
