//! Signs approved requests to `kube-apiserver-client`, `kube-apiserver-client-kubelet` and
//! `kubelet-serving` with the cluster CA (kube-controller-manager's csrsigning). A request
//! its signer may not issue gets a `Failed` condition (reason `SignerValidationFailure`).

use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::apiserver::{
    certificates::{request, signers},
    pki::Pki,
};

#[derive(Clone)]
pub struct Config {
    /// The CA that signs.
    pub pki: Arc<Pki>,
    /// The longest validity issued (`--cluster-signing-duration`).
    pub max_seconds: i64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("max_seconds", &self.max_seconds)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(pki: Arc<Pki>) -> Self {
        Self {
            pki,
            max_seconds: signers::DEFAULT_MAX_SECONDS,
        }
    }
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// The certificate, PEM.
    Issue(String),
    /// The `Failed` condition's message.
    Fail(String),
}

/// Pure apart from the signing itself.
pub fn decide(config: &Config, csr: &CertificateSigningRequest) -> Decision {
    let spec = &csr.spec;
    if !signers::is_built_in(&spec.signer_name)
        || !super::has_condition(csr, "Approved")
        || super::has_condition(csr, "Denied")
        || super::has_condition(csr, "Failed")
        || super::has_certificate(csr)
    {
        return Decision::Nothing;
    }
    let req = match request::parse_pem(&spec.request.0) {
        Ok(r) => r,
        Err(e) => return Decision::Fail(format!("unable to parse csr: {e}")),
    };
    let usages = spec.usages.clone().unwrap_or_default();
    if let Err(why) = signers::check(&spec.signer_name, &req, &usages) {
        return Decision::Fail(why);
    }
    let seconds = signers::validity_seconds(spec.expiration_seconds.map(i64::from), config.max_seconds);
    match config.pki.sign_request(&req, &usages, time::Duration::seconds(seconds)) {
        Ok(pem) => Decision::Issue(pem),
        Err(e) => Decision::Fail(format!("signing failed: {e}")),
    }
}

/// Runs until `shutdown`.
pub async fn run(client: kube::Client, config: Config, shutdown: impl std::future::Future<Output = ()>) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    super::for_each_request(client, shutdown, "csrsigning", |csr| {
        let (api, config) = (api.clone(), config.clone());
        async move {
            let name = csr.metadata.name.clone().unwrap_or_default();
            let status = match decide(&config, &csr) {
                Decision::Nothing => return Ok(()),
                Decision::Issue(pem) => {
                    tracing::info!(csr = %name, signer = %csr.spec.signer_name, "issuing a certificate");
                    json!({"certificate": base64::engine::general_purpose::STANDARD.encode(pem)})
                }
                Decision::Fail(message) => {
                    tracing::info!(csr = %name, %message, "refusing to sign");
                    let mut conditions: Vec<serde_json::Value> =
                        super::conditions(&csr).iter().filter_map(|c| serde_json::to_value(c).ok()).collect();
                    conditions.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": message}));
                    json!({"conditions": conditions})
                }
            };
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                .await
                .map(|_| ())
        }
    })
    .await;
}
