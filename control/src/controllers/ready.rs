//! A cache's readiness that any number of tasks can await at once.
//!
//! kube-runtime's `Store::wait_until_ready` polls a oneshot receiver, and a oneshot
//! receiver keeps the waker of the last task that polled it. Two reconciles that waited
//! for the same cache together (every controller reconciles all its objects on start) left
//! one of them asleep for good: its object was never reconciled again, because later
//! triggers for it queue behind the reconcile still running. The failover test found it as
//! a ReplicaSet that ignored a scale-up for 180 s after the controllers changed hands.
//!
//! [`Ready`] polls the store's future from one place (a `Shared` future wakes every
//! task that waits on it), so a reconcile may wait as before.

use std::hash::Hash;

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use kube::{Resource, runtime::reflector::Store};

/// Resolves once every store it was built from has had its first list; `false` when a
/// store's writer went away before that (the controller is stopping).
#[derive(Clone)]
pub struct Ready(Shared<BoxFuture<'static, bool>>);

impl Ready {
    pub fn of<K>(store: &Store<K>) -> Self
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let store = store.clone();
        Self(async move { store.wait_until_ready().await.is_ok() }.boxed().shared())
    }

    /// All of `parts`.
    pub fn all(parts: impl IntoIterator<Item = Ready>) -> Self {
        let parts: Vec<Ready> = parts.into_iter().collect();
        Self(
            async move {
                futures::future::join_all(parts.iter().map(Ready::wait))
                    .await
                    .into_iter()
                    .all(|ok| ok)
            }
            .boxed()
            .shared(),
        )
    }

    pub async fn wait(&self) -> bool {
        self.0.clone().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::runtime::{reflector, watcher};

    use super::Ready;

    /// Many waiters at once, as the reconciles of a starting controller are: every one
    /// wakes. The store's own `wait_until_ready` woke only the last to poll it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_concurrent_waiter_wakes_when_the_store_is_ready() {
        let (pods, mut pods_writer) = reflector::store::<Pod>();
        let (maps, mut maps_writer) = reflector::store::<ConfigMap>();
        let ready = Ready::all([Ready::of(&pods), Ready::of(&maps)]);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let ready = ready.clone();
                tokio::spawn(async move { ready.wait().await })
            })
            .collect();
        // Let every waiter poll (and register) before the stores become ready.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "nothing is ready yet");
        pods_writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "one store is not ready yet");
        maps_writer.apply_watcher_event(&watcher::Event::InitDone);
        for w in waiters {
            let woke = tokio::time::timeout(Duration::from_secs(5), w).await;
            assert!(matches!(woke, Ok(Ok(true))), "a waiter was left asleep: {woke:?}");
        }
    }

    #[tokio::test]
    async fn a_writer_gone_before_its_first_list_is_not_ready() {
        let (pods, writer) = reflector::store::<Pod>();
        let ready = Ready::of(&pods);
        drop(writer);
        assert!(!ready.wait().await);
    }
}
