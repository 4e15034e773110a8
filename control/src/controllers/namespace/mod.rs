//! The namespace controller, as kube-controller-manager's: a deleted Namespace stays
//! (Terminating) while its `spec.finalizers` holds `kubernetes`; this controller deletes
//! every namespaced object of every type discovery lists (built-in and custom), reports
//! progress in the namespace's conditions ([`plan`]), and once nothing is left removes
//! the finalizer through `namespaces/{name}/finalize`, upon which the namespace goes.

pub mod plan;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams},
    discovery::{ApiCapabilities, Discovery, Scope, verbs},
    runtime::{Controller, controller::Action, watcher},
};

use plan::{FINALIZER, Pass};

/// How soon a namespace whose content is still going is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of namespace {namespace}: {source}")]
    Status { namespace: String, source: kube::Error },
    #[error("finalizing namespace {namespace}: {source}")]
    Finalize { namespace: String, source: kube::Error },
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    tracing::info!("namespace controller starting");
    Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "namespace reconcile");
            }
        })
        .await;
    tracing::info!("namespace controller stopped");
}

fn error_policy(ns: Arc<Namespace>, e: &Error, _: Arc<Client>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %crate::controllers::display_chain(e), "namespace deletion failed; retrying");
    Action::requeue(RECHECK)
}

fn spec_finalizers(ns: &Namespace) -> Vec<String> {
    ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default()
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() || !spec_finalizers(&ns).iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let pass = delete_content(&client, &name).await;
    let now = Timestamp::now();
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let conditions = plan::conditions(&current, &pass, now);
    let api: Api<Namespace> = Api::all((*client).clone());
    let mut ns = (*ns).clone();
    if conditions != current {
        ns.status.get_or_insert_with(Default::default).conditions = Some(conditions);
        ns = match api.replace_status(&name, &PostParams::default(), &ns).await {
            Ok(ns) => ns,
            // A newer namespace is on its way to us; or it is gone.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(RECHECK)),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(source) => {
                return Err(Error::Status {
                    namespace: name,
                    source,
                });
            }
        };
    }
    if !pass.done() {
        tracing::debug!(namespace = %name, ?pass, "namespace content remains");
        return Ok(Action::requeue(RECHECK));
    }
    finalize(&client, &mut ns).await?;
    tracing::info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}

/// `PUT namespaces/{name}/finalize` with our finalizer gone; the API server removes the
/// namespace when no finalizer is left. kube-rs has no call for this subresource.
async fn finalize(client: &Client, ns: &mut Namespace) -> Result<(), Error> {
    let name = ns.name_any();
    let rest = plan::without_ours(&spec_finalizers(ns));
    ns.spec.get_or_insert_with(Default::default).finalizers = Some(rest);
    let err = |source| Error::Finalize {
        namespace: name.clone(),
        source,
    };
    let body = serde_json::to_vec(&ns).map_err(|e| err(kube::Error::SerdeError(e)))?;
    let request = http::Request::put(format!("/api/v1/namespaces/{name}/finalize"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| err(kube::Error::HttpError(e)))?;
    match client.request::<Namespace>(request).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// The namespaced types discovery lists that can be listed and deleted, pods first (their
/// graceful termination takes longest, and they use the rest: upstream's ordered deletion).
fn deletable(discovery: &Discovery) -> Vec<(ApiResource, ApiCapabilities)> {
    let mut out: Vec<(ApiResource, ApiCapabilities)> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| {
            caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::DELETE)
        })
        .collect();
    out.sort_by_key(|(ar, _)| !(ar.group.is_empty() && ar.plural == "pods"));
    out
}

fn group_resource(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

/// Deletes what is in `ns` and reports what is left.
async fn delete_content(client: &Client, ns: &str) -> Pass {
    let mut pass = Pass::default();
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            pass.discovery_error = Some(format!("discovery failed: {e}"));
            return pass;
        }
    };
    for (ar, caps) in deletable(&discovery) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let gr = group_resource(&ar);
        let listed = match api.list_metadata(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 405 => continue,
            Err(e) => {
                pass.deletion_errors.push(format!("listing {gr}: {e}"));
                continue;
            }
        };
        if listed.is_empty() {
            continue;
        }
        let deleted = if caps.supports_operation(verbs::DELETE_COLLECTION) {
            api.delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .map(|_| ())
        } else {
            let mut result = Ok(());
            for item in listed.iter().filter(|i| i.metadata.deletion_timestamp.is_none()) {
                match api.delete(&item.name_any(), &DeleteParams::default()).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => result = Err(e),
                    Ok(_) => {}
                }
            }
            result
        };
        if let Err(e) = deleted {
            pass.deletion_errors.push(format!("deleting {gr}: {e}"));
        }
        let left = match api.list_metadata(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                pass.deletion_errors.push(format!("listing {gr}: {e}"));
                continue;
            }
        };
        if !left.is_empty() {
            pass.remaining.insert(gr, left.len());
        }
        for item in &left {
            for f in item.metadata.finalizers.iter().flatten() {
                *pass.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
    }
    pass
}
