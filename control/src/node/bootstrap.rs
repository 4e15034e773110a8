//! TLS bootstrapping, as the kubelet's `--bootstrap-kubeconfig` does it: when the agent's
//! `--kubeconfig` holds no usable client certificate for `system:node:<name>`, a new key is
//! made, a CertificateSigningRequest for the node (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`) is sent with the bootstrap credentials
//! (usually a bootstrap token), and once the certificate is issued the kubeconfig is written
//! with it; the agent then runs as the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{Api, PostParams};

use crate::apiserver::{
    certificates::KUBELET_CLIENT,
    pki::{self, Credential},
};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("reading the bootstrap kubeconfig {path}: {reason}")]
    BootstrapKubeconfig { path: PathBuf, reason: String },
    #[error("generating the node's key or request: {0}")]
    Generate(String),
    #[error("the API server refused the CertificateSigningRequest: {0}")]
    Api(#[source] kube::Error),
    #[error("CertificateSigningRequest {name} was {how}: {message}")]
    Refused {
        name: String,
        how: &'static str,
        message: String,
    },
    #[error("no certificate for CertificateSigningRequest {name} after {waited:?}")]
    Timeout { name: String, waited: Duration },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: pki::PkiError,
    },
}

/// Whether `kubeconfig` holds a client certificate for `system:node:<node>` that is valid
/// now (what lets the agent skip bootstrapping, as the kubelet does).
pub fn has_valid_client_cert(kubeconfig: &Path, node: &str) -> bool {
    let Ok(config) = kube::config::Kubeconfig::read_from(kubeconfig) else {
        return false;
    };
    let Some(data) = config
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| a.client_certificate_data.clone())
    else {
        return false;
    };
    let Ok(pem_bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return false;
    };
    let Ok(block) = pem::parse(pem_bytes) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(block.contents()) else {
        return false;
    };
    let cn_ok = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .is_some_and(|cn| cn == format!("system:node:{node}"));
    cn_ok && cert.validity().is_valid()
}

/// A fresh P-256 key and a PKCS#10 request for `CN=system:node:<node>, O=system:nodes`.
/// Returns `(request PEM, key PEM)`.
pub fn node_request(node: &str) -> Result<(String, String), BootstrapError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| BootstrapError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| BootstrapError::Generate(e.to_string()))?;
    Ok((request, key.serialize_pem()))
}

/// Makes sure `kubeconfig` holds a node certificate, bootstrapping one through
/// `bootstrap_kubeconfig` when it does not. Waits up to `wait` for the certificate.
pub async fn ensure_kubeconfig(
    bootstrap_kubeconfig: &Path,
    kubeconfig: &Path,
    node: &str,
    wait: Duration,
) -> Result<(), BootstrapError> {
    if has_valid_client_cert(kubeconfig, node) {
        return Ok(());
    }
    let bad = |reason: String| BootstrapError::BootstrapKubeconfig {
        path: bootstrap_kubeconfig.to_path_buf(),
        reason,
    };
    let raw = kube::config::Kubeconfig::read_from(bootstrap_kubeconfig).map_err(|e| bad(e.to_string()))?;
    let cluster = raw
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| bad("no cluster".into()))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| bad("the cluster has no server".into()))?;
    let ca_pem = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| bad("certificate-authority-data is not base64 PEM".into()))?,
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| bad(format!("{file}: {e}")))?,
        (None, None) => return Err(bad("the cluster has no certificate authority".into())),
    };
    let config = kube::Config::from_custom_kubeconfig(raw, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;

    let (request_pem, key_pem) = node_request(node)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, request_pem.as_bytes());
    let name = format!(
        "node-csr-{}",
        digest.as_ref()[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let csr = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.into_bytes()),
            signer_name: KUBELET_CLIENT.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client);
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(BootstrapError::Api)?;
    tracing::info!(csr = %name, node, "waiting for the node's client certificate");
    let deadline = tokio::time::Instant::now() + wait;
    let cert_pem = loop {
        match api.get(&name).await {
            Ok(current) => {
                let status = current.status.unwrap_or_default();
                for c in status.conditions.unwrap_or_default() {
                    let how = match c.type_.as_str() {
                        "Denied" => "denied",
                        "Failed" => "failed",
                        _ => continue,
                    };
                    return Err(BootstrapError::Refused {
                        name,
                        how,
                        message: c.message.unwrap_or_default(),
                    });
                }
                if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                    break String::from_utf8_lossy(&cert.0).into_owned();
                }
            }
            Err(e) => tracing::warn!(csr = %name, error = %e, "reading the CertificateSigningRequest"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BootstrapError::Timeout { name, waited: wait });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let user = format!("system:node:{node}");
    pki::write_kubeconfig(
        kubeconfig,
        &server,
        &ca_pem,
        "rudder",
        &user,
        Credential::ClientCert { cert_pem, key_pem },
    )
    .map_err(|source| BootstrapError::Write {
        path: kubeconfig.to_path_buf(),
        source,
    })?;
    tracing::info!(node, kubeconfig = %kubeconfig.display(), "node client certificate written");
    Ok(())
}
