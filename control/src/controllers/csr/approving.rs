//! Approves node client certificates as upstream's csrapproving controller does: a
//! `kube-apiserver-client-kubelet` request for `system:node:<name>` in `system:nodes`, with
//! client usages and no SANs, is approved when a SubjectAccessReview for its requestor
//! allows `create` on `certificatesigningrequests/selfnodeclient` (a node renewing its own
//! certificate: the requestor is the subject) or `certificatesigningrequests/nodeclient`
//! (e.g. a bootstrap token). Anything else is left for a person or another approver.

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    certificates::v1::CertificateSigningRequest,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::apiserver::certificates::{KUBELET_CLIENT, request, signers};

/// The subresources whose `create` permission approves, in the order they are asked.
pub fn recognizers(csr: &CertificateSigningRequest) -> Vec<(&'static str, &'static str)> {
    let spec = &csr.spec;
    if spec.signer_name != KUBELET_CLIENT
        || super::has_condition(csr, "Approved")
        || super::has_condition(csr, "Denied")
        || super::has_certificate(csr)
    {
        return vec![];
    }
    let Ok(req) = request::parse_pem(&spec.request.0) else {
        return vec![];
    };
    if signers::kubelet_client(&req, spec.usages.as_deref().unwrap_or_default()).is_err() {
        return vec![];
    }
    let mut out = Vec::new();
    if spec.username.as_deref() == Some(req.common_name.as_str()) {
        out.push((
            "selfnodeclient",
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        ));
    }
    out.push((
        "nodeclient",
        "Auto approving kubelet client certificate after SubjectAccessReview.",
    ));
    out
}

async fn allowed(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, kube::Error> {
    let spec = &csr.spec;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            uid: spec.uid.clone(),
            groups: spec.groups.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Runs until `shutdown`.
pub async fn run(client: kube::Client, shutdown: impl std::future::Future<Output = ()>) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    super::for_each_request(client.clone(), shutdown, "csrapproving", |csr| {
        let (api, client) = (api.clone(), client.clone());
        async move {
            let name = csr.metadata.name.clone().unwrap_or_default();
            for (subresource, message) in recognizers(&csr) {
                if !allowed(&client, &csr, subresource).await? {
                    continue;
                }
                tracing::info!(csr = %name, subresource, "auto-approving");
                let patch = json!({"status": {"conditions": [
                    {"type": "Approved", "status": "True", "reason": "AutoApproved", "message": message}
                ]}});
                api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                return Ok(());
            }
            Ok(())
        }
    })
    .await;
}
