//! The CertificateSigningRequest controllers of kube-controller-manager: `signing` issues
//! certificates for approved requests to the three built-in signers from the cluster CA,
//! `approving` approves node client certificates (`kube-apiserver-client-kubelet`) when a
//! SubjectAccessReview says the requestor may ask for one (upstream's csrapproving).
//! Both watch every request and decide each one on its own, so a restart or a missed
//! event is made good by the next list.

pub mod approving;
pub mod signing;

use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};

fn conditions(csr: &CertificateSigningRequest) -> &[CertificateSigningRequestCondition] {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn has_condition(csr: &CertificateSigningRequest, ty: &str) -> bool {
    conditions(csr).iter().any(|c| c.type_ == ty)
}

fn has_certificate(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// Runs `handle` for every request the watch delivers (again after each re-list), until
/// `shutdown`.
async fn for_each_request<F, Fut>(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()>,
    what: &str,
    mut handle: F,
) where
    F: FnMut(CertificateSigningRequest) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut shutdown => return,
        };
        match next {
            Some(Ok(csr)) => {
                let name = csr.metadata.name.clone().unwrap_or_default();
                if let Err(e) = handle(csr).await {
                    tracing::warn!(controller = what, csr = %name, error = %super::display_chain(&e), "handling a CertificateSigningRequest failed");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(controller = what, error = %super::display_chain(&e), "watching CertificateSigningRequests")
            }
            None => return,
        }
    }
}
