//! Keeps the [`Index`] current: kube-rs reflectors of Services, EndpointSlices and Pods, and
//! a task that rebuilds the index from their caches after changes. Rebuilding whole (not
//! patching) keeps the index a pure function of the caches; changes arriving together are
//! folded into one rebuild.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use hickory_proto::rr::Name;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::{index::Index, server::SharedIndex};

/// Changes within this window share one rebuild.
const SETTLE: Duration = Duration::from_millis(20);

fn reflect<K>(client: &Client, changed: Arc<Notify>) -> reflector::Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields are most of a small object and nothing a name needs.
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

fn serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// Starts the watches and the rebuild task; `ready` turns true once every cache has listed.
pub fn start(client: &Client, zone: Name, index: SharedIndex) -> watch::Receiver<bool> {
    let changed = Arc::new(Notify::new());
    let services = reflect::<Service>(client, Arc::clone(&changed));
    let slices = reflect::<EndpointSlice>(client, Arc::clone(&changed));
    let pods = reflect::<Pod>(client, Arc::clone(&changed));
    let (ready_tx, ready_rx) = watch::channel(false);
    tokio::spawn(async move {
        let synced = async {
            services.wait_until_ready().await?;
            slices.wait_until_ready().await?;
            pods.wait_until_ready().await
        };
        if synced.await.is_err() {
            tracing::error!("the watches stopped before their first list");
            return;
        }
        loop {
            let (s, e, p) = (services.state(), slices.state(), pods.state());
            let built = Index::build(
                zone.clone(),
                serial(),
                s.iter().map(|o| &**o),
                e.iter().map(|o| &**o),
                p.iter().map(|o| &**o),
            );
            tracing::debug!(services = built.services.len(), "index rebuilt");
            match index.write() {
                Ok(mut i) => *i = Arc::new(built),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(built),
            }
            ready_tx.send_replace(true);
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
        }
    });
    ready_rx
}
