//! The ServiceAccounts controller, as kube-controller-manager's `serviceaccount-controller`:
//! every active namespace has a ServiceAccount named `default`, re-created if deleted. The
//! ServiceAccount admission plugin refuses pods whose ServiceAccount does not exist, and
//! pods that name none run as `default`, so without this no such pod could be created.

use std::{sync::Arc, time::Duration};

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, ResourceExt,
    api::PostParams,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};

pub const DEFAULT: &str = "default";

#[derive(Debug, thiserror::Error)]
#[error("creating serviceaccount {namespace}/default: {source}")]
pub struct Error {
    namespace: String,
    source: kube::Error,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    tracing::info!("serviceaccounts controller starting");
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            accounts,
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT}")),
            |sa| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "serviceaccounts reconcile");
            }
        })
        .await;
    tracing::info!("serviceaccounts controller stopped");
}

fn error_policy(ns: Arc<Namespace>, e: &Error, _: Arc<Client>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %e, "ensuring the default ServiceAccount failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    let name = ns.name_any();
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced((*client).clone(), &name);
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(DEFAULT.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => tracing::debug!(namespace = %name, "created the default ServiceAccount"),
        // Already there (the usual case), or the namespace began terminating meanwhile.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 || e.code == 404 => {}
        Err(source) => {
            return Err(Error {
                namespace: name,
                source,
            });
        }
    }
    Ok(Action::await_change())
}
