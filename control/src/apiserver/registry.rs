//! Objects over the store: create, read, update, delete and watch with Kubernetes
//! semantics (resourceVersion, optimistic concurrency, graceful deletion, finalizers,
//! allocation of Service IPs and ports). The HTTP layer calls only this; this is the only
//! code that touches the store.

use std::sync::Arc;

use base64::Engine as _;
use futures::{StreamExt, stream::BoxStream};
use serde_json::{Value, json};

use crate::store::{Event, ListOptions, Revision, Store, StoreError};

use super::{
    admission::{Admission, Nothing},
    allocator::{self, Allocator},
    filter::ObjectFilter,
    ipfamily,
    managed::{self, FieldManager},
    meta,
    resources::{self, ResourceType},
    scale,
    status::{self, ApiError, Cause},
    strategy,
};

pub struct Registry {
    pub store: Arc<dyn Store>,
    pub alloc: Allocator,
    /// The custom types CustomResourceDefinitions define, as this server serves them now.
    pub crds: super::crd::Catalog,
}

/// The Scale view of a Deployment, ReplicaSet or custom object.
fn scale_of(rt: &ResourceType, parent: &Value) -> Value {
    match rt.custom.and_then(|c| c.scale.as_ref()) {
        Some(spec) => super::crd::scale::scale_of(spec, parent),
        None => scale::scale_of(parent),
    }
}

/// Decodes a stored object of `rt` as the client sees it: custom objects in the requested
/// version, Events in the API's own form (both Event APIs share one storage).
fn decode(rt: &ResourceType, kv: &crate::store::KeyValue) -> Result<Value, ApiError> {
    let mut obj = super::events::to_view(rt, meta::decode_stored(kv)?);
    super::crd::to_served_version(rt, &mut obj);
    Ok(obj)
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: Revision,
    pub continue_token: Option<String>,
}

/// What a list or watch reads from.
pub struct Scope<'a> {
    pub rt: &'static ResourceType,
    pub namespace: Option<&'a str>,
    pub filter: &'a ObjectFilter,
}

/// A watch event on the wire: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
    pub revision: Revision,
}

/// The body of a DELETE.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    /// What happens to the object's dependents; `None` keeps what the object asked for
    /// before (its `orphan`/`foregroundDeletion` finalizers), else background.
    pub propagation: Option<Propagation>,
}

/// `propagationPolicy`: who deletes an object's dependents, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes at once; the garbage collector deletes the dependents after.
    Background,
    /// The object stays (finalizer `foregroundDeletion`) until the garbage collector has
    /// deleted the dependents that block it.
    Foreground,
    /// The object stays (finalizer `orphan`) until the garbage collector has removed its
    /// ownerReferences from the dependents, which then live on.
    Orphan,
}

/// The finalizers the garbage collector acts on.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

impl Propagation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Background" => Ok(Self::Background),
            "Foreground" => Ok(Self::Foreground),
            "Orphan" => Ok(Self::Orphan),
            other => Err(ApiError::bad_request(format!(
                "propagationPolicy {other:?} is not one of Foreground, Background, Orphan"
            ))),
        }
    }

    /// The object's finalizers after a delete with this policy: at most one of the two
    /// garbage-collector finalizers, the others kept.
    fn finalizers(self, mut current: Vec<String>) -> Vec<String> {
        current.retain(|f| f != FOREGROUND_FINALIZER && f != ORPHAN_FINALIZER);
        match self {
            Self::Background => {}
            Self::Foreground => current.push(FOREGROUND_FINALIZER.to_owned()),
            Self::Orphan => current.push(ORPHAN_FINALIZER.to_owned()),
        }
        current
    }
}

impl DeleteOptions {
    /// The body's fields win over the query's. `orphanDependents` is the deprecated
    /// spelling of Orphan (true) and Background (false); both together are refused.
    pub fn from_body(
        body: &Value,
        query_grace: Option<i64>,
        query_propagation: Option<&str>,
    ) -> Result<Self, ApiError> {
        let policy = body["propagationPolicy"]
            .as_str()
            .or(query_propagation)
            .map(Propagation::parse)
            .transpose()?;
        let orphan = body["orphanDependents"].as_bool();
        let propagation = match (policy, orphan) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "orphanDependents and propagationPolicy may not both be set",
                ));
            }
            (Some(p), None) => Some(p),
            (None, Some(true)) => Some(Propagation::Orphan),
            (None, Some(false)) => Some(Propagation::Background),
            (None, None) => None,
        };
        Ok(Self {
            grace_period_seconds: body["gracePeriodSeconds"].as_i64().or(query_grace),
            precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
            precondition_resource_version: body["preconditions"]["resourceVersion"].as_str().map(str::to_owned),
            propagation,
        })
    }
}

/// Retrying a write that lost a compare-and-swap race, as upstream's GuaranteedUpdate does
/// for writes the client did not pin to a resourceVersion: each lost round means another
/// write landed, so this makes progress. After the first retries a short random pause
/// spreads racing writers out; a deadline bounds the request.
struct Retry {
    attempt: u32,
    deadline: tokio::time::Instant,
}

impl Retry {
    fn new() -> Self {
        Self {
            attempt: 0,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(30),
        }
    }

    /// Waits before the next attempt; false when it is time to give up.
    async fn again(&mut self) -> bool {
        self.attempt += 1;
        if tokio::time::Instant::now() >= self.deadline {
            return false;
        }
        if self.attempt > 2 {
            let max_micros = 250u64 << self.attempt.min(6);
            tokio::time::sleep(std::time::Duration::from_micros(rand::random_range(0..max_micros))).await;
        }
        true
    }
}

fn parse_rv(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>()
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}: must be an integer")))
}

fn encode_continue(rv: Revision, last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rv, "start": last_key}).to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rv"].as_i64().ok_or_else(bad)?,
        v["start"].as_str().ok_or_else(bad)?.to_owned(),
    ))
}

impl Registry {
    pub async fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        match self.store.get(&rt.key(ns, name)).await? {
            Some(kv) => decode(rt, &kv),
            None => Err(ApiError::not_found(rt.group, rt.plural, name)),
        }
    }

    /// Lists with `limit`/`continue` paging. Pages after the first read at the first page's
    /// revision, so a paged list is one consistent snapshot (410 once that is compacted).
    pub async fn list(
        &self,
        scope: &Scope<'_>,
        limit: Option<usize>,
        continue_token: Option<&str>,
        resource_version: Option<&str>,
        exact: bool,
    ) -> Result<ListPage, ApiError> {
        let prefix = scope.rt.key_prefix(scope.namespace);
        let (mut revision, mut start_after) = match continue_token {
            Some(t) => {
                let (rv, start) = decode_continue(t)?;
                if !start.starts_with(&prefix) {
                    return Err(ApiError::bad_request("continue key does not belong to this list"));
                }
                (Some(rv), Some(start))
            }
            None => (None, None),
        };
        // "0" means any version is fine; an exact revision is only honoured on request
        // (resourceVersionMatch=Exact); otherwise the current state is not older than it.
        if revision.is_none()
            && let Some(rv) = resource_version.filter(|rv| *rv != "0")
        {
            let rv = parse_rv(rv)?;
            if exact {
                revision = Some(rv);
            }
        }
        let mut items = Vec::new();
        loop {
            let want = limit.map(|l| l.saturating_sub(items.len()).max(1));
            let page = self
                .store
                .list(ListOptions { prefix: prefix.clone(), start_after: start_after.clone(), limit: want, revision })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { requested, compacted } if exact && continue_token.is_none() => {
                        ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
                    }
                    StoreError::FutureRevision { requested, current } => ApiError {
                        code: 504,
                        reason: "Timeout",
                        message: format!("Too large resource version: {requested}, current: {current}"),
                        details: None,
                    },
                    StoreError::Compacted { .. } => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => other.into(),
                })?;
            revision = Some(page.revision);
            let last = page.items.last().map(|kv| kv.key.clone());
            for kv in &page.items {
                let obj = decode(scope.rt, kv)?;
                if scope.filter.matches(&obj) {
                    items.push(obj);
                }
            }
            let full = limit.is_some_and(|l| items.len() >= l);
            match (page.more, last) {
                (true, Some(last)) if full => {
                    return Ok(ListPage {
                        items,
                        resource_version: page.revision,
                        continue_token: Some(encode_continue(page.revision, &last)),
                    });
                }
                (true, Some(last)) => start_after = Some(last),
                _ => {
                    return Ok(ListPage {
                        items,
                        resource_version: page.revision,
                        continue_token: None,
                    });
                }
            }
        }
    }

    /// A create by the server itself: no field manager is recorded, no admission.
    pub async fn create(&self, rt: &'static ResourceType, ns: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        self.create_admitted(rt, ns, obj, None, &Nothing).await
    }

    /// A create through admission (`adm` mutates the defaulted object and validates the
    /// validated one, as upstream's create handler and storage do) whose fields `fm` then
    /// owns (`metadata.managedFields`).
    pub async fn create_admitted(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        fm: Option<&FieldManager>,
        adm: &dyn Admission,
    ) -> Result<Value, ApiError> {
        normalize_identity(rt, ns, &mut obj)?;
        {
            let m = meta::metadata_mut(&mut obj);
            for field in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(field);
            }
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
        }
        strategy::default_on_create(rt, &mut obj);
        adm.mutate(&mut obj, None).await?;
        if meta::name(&obj).is_none()
            && let Some(prefix) = meta::str_field(&obj, "generateName").filter(|p| !p.is_empty())
        {
            let name = format!("{prefix}{}", meta::random_suffix());
            meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
        }
        strategy::validate(rt, &obj, None)?;
        if let Some(fm) = fm {
            managed::record_update(rt, None, None, &mut obj, fm);
        }
        adm.validate(&obj, None).await?;
        let name = meta::name(&obj).unwrap_or_default().to_owned();
        let key = rt.key(ns, &name);
        let allocated = if rt.kind == "Service" {
            self.allocate_service(&key, &mut obj).await?
        } else {
            vec![]
        };
        match self.store.create(&key, meta::encode_for_store(&obj)).await {
            Ok(kv) => decode(rt, &kv),
            Err(e) => {
                self.release_allocations(&allocated).await;
                Err(match e {
                    StoreError::AlreadyExists { .. } => ApiError::already_exists(rt.group, rt.plural, &name),
                    other => other.into(),
                })
            }
        }
    }

    /// PUT. `resourceVersion` in the body makes it a compare-and-swap (409 when stale);
    /// without one the write is unconditional, as Kubernetes allows.
    pub async fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
    ) -> Result<(Value, bool), ApiError> {
        self.update_admitted(rt, ns, name, obj, subresource, None, &Nothing)
            .await
    }

    /// PUT through admission (see `create_admitted`), recording what `fm` changed in
    /// `metadata.managedFields`.
    #[allow(clippy::too_many_arguments, reason = "the request's parts, passed through")]
    pub async fn update_admitted(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        fm: Option<&FieldManager>,
        adm: &dyn Admission,
    ) -> Result<(Value, bool), ApiError> {
        normalize_identity(rt, ns, &mut obj)?;
        match meta::name(&obj) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
            None => {
                meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
            }
        }
        let key = rt.key(ns, name);
        let Some(current) = self.store.get(&key).await? else {
            // Upstream lets these be created by PUT; leader election relies on it for Leases.
            if subresource.is_none() && matches!(rt.kind, "Endpoints" | "Lease" | "Event") {
                return Ok((self.create_admitted(rt, ns, obj, fm, adm).await?, true));
            }
            return Err(ApiError::not_found(rt.group, rt.plural, name));
        };
        let pinned = match meta::resource_version(&obj) {
            Some(rv) => Some(parse_rv(rv)?),
            None => None,
        };
        if pinned.is_some_and(|rv| rv != current.mod_revision) {
            return Err(ApiError::conflict(rt.group, rt.plural, name));
        }
        // Without a resourceVersion the write is unconditional: a lost race is retried
        // against the newer object, never reported as a Conflict.
        let mut current = current;
        let mut retry = Retry::new();
        loop {
            let old = decode(rt, &current)?;
            let mut new = obj.clone();
            strategy::prepare_update(rt, &old, &mut new, subresource);
            adm.mutate(&mut new, Some(&old)).await?;
            strategy::validate(rt, &new, Some(&old))?;
            if let Some(fm) = fm {
                managed::record_update(rt, subresource, Some(&old), &mut new, fm);
            }
            adm.validate(&new, Some(&old)).await?;
            match self.write_update(rt, &key, name, &old, new, current.mod_revision).await {
                Err(e) if e.reason == "Conflict" && pinned.is_none() && retry.again().await => {}
                other => return Ok((other?, false)),
            }
            current = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(rt.group, rt.plural, name))?;
        }
    }

    /// Writes an already prepared update with compare-and-swap, or finishes a deletion
    /// when the last finalizer is gone.
    async fn write_update(
        &self,
        rt: &ResourceType,
        key: &str,
        name: &str,
        old: &Value,
        obj: Value,
        expected: Revision,
    ) -> Result<Value, ApiError> {
        if meta::deletion_timestamp(&obj).is_some()
            && meta::finalizers(&obj).is_empty()
            && !awaits_kubelet(rt, &obj)
            && !holds_namespace(rt, &obj)
        {
            let (_, rev) = self
                .store
                .delete(key, Some(expected))
                .await
                .map_err(|e| self.cas_error(rt, name, e))?;
            self.release_allocations(&service_allocations(old)).await;
            let mut gone = obj;
            meta::set_resource_version(&mut gone, rev);
            return Ok(gone);
        }
        let mut obj = obj;
        let (taken, dropped) = if rt.kind == "Service" {
            self.restack_service(key, old, &mut obj).await?
        } else {
            (vec![], vec![])
        };
        match self.store.update(key, meta::encode_for_store(&obj), expected).await {
            Ok(kv) => {
                self.release_allocations(&dropped).await;
                decode(rt, &kv)
            }
            Err(e) => {
                self.release_allocations(&taken).await;
                Err(self.cas_error(rt, name, e))
            }
        }
    }

    fn cas_error(&self, rt: &ResourceType, name: &str, e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { .. } => ApiError::conflict(rt.group, rt.plural, name),
            StoreError::NotFound { .. } => ApiError::not_found(rt.group, rt.plural, name),
            other => other.into(),
        }
    }

    /// PATCH: read, patch, write with compare-and-swap; retried when another writer got
    /// in between, unless the patch itself pins a resourceVersion.
    pub async fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        patch_type: super::patch::PatchType,
        body: &[u8],
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.patch_admitted(rt, ns, name, patch_type, body, subresource, None, &Nothing)
            .await
    }

    /// PATCH through admission (see `create_admitted`), recording field ownership for `fm`;
    /// with a field manager an apply is server-side apply proper (conflicts, removal of
    /// fields the applier gave up).
    #[allow(clippy::too_many_arguments, reason = "the request's parts, passed through")]
    pub async fn patch_admitted(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        patch_type: super::patch::PatchType,
        body: &[u8],
        subresource: Option<&str>,
        fm: Option<&FieldManager>,
        adm: &dyn Admission,
    ) -> Result<Value, ApiError> {
        let key = rt.key(ns, name);
        let mut retry = Retry::new();
        let apply_with = fm.filter(|_| patch_type == super::patch::PatchType::Apply);
        loop {
            let current = self.store.get(&key).await?;
            let Some(current) = current else {
                if let Some(fm) = apply_with
                    && subresource.is_none()
                {
                    let applied = managed::apply(rt, None, None, body, fm)?;
                    return self.create_admitted(rt, ns, applied.object, None, adm).await;
                }
                if patch_type == super::patch::PatchType::Apply && subresource.is_none() {
                    let applied = super::patch::apply_patch(rt.kind, &Value::Null, body, patch_type)
                        .map_err(|e| patch_error(rt, name, e))?;
                    return self.create_admitted(rt, ns, applied, None, adm).await;
                }
                return Err(ApiError::not_found(rt.group, rt.plural, name));
            };
            let old = decode(rt, &current)?;
            let applied = match apply_with {
                Some(fm) => Some(managed::apply(rt, subresource, Some(&old), body, fm)?),
                None => None,
            };
            let mut new = match &applied {
                Some(a) => a.object.clone(),
                None => {
                    super::patch::apply_patch(rt.kind, &old, body, patch_type).map_err(|e| patch_error(rt, name, e))?
                }
            };
            let pinned = match (meta::resource_version(&new), meta::resource_version(&old)) {
                (Some(n), Some(o)) if n != o => return Err(ApiError::conflict(rt.group, rt.plural, name)),
                _ => serde_json::from_slice::<Value>(body)
                    .ok()
                    .is_some_and(|p| p["metadata"]["resourceVersion"].is_string()),
            };
            normalize_identity(rt, ns, &mut new)?;
            if meta::name(&new) != Some(name) {
                return Err(ApiError::bad_request("a patch may not change metadata.name"));
            }
            strategy::prepare_update(rt, &old, &mut new, subresource);
            adm.mutate(&mut new, Some(&old)).await?;
            strategy::validate(rt, &new, Some(&old))?;
            match (&applied, fm) {
                (Some(a), _) => a.finish(&mut new),
                (None, Some(fm)) => managed::record_update(rt, subresource, Some(&old), &mut new, fm),
                (None, None) => {}
            }
            // An apply that changes nothing, not even ownership, writes nothing (upstream
            // keeps the resourceVersion of a no-op apply).
            if applied.is_some() && new == old {
                return Ok(old);
            }
            adm.validate(&new, Some(&old)).await?;
            match self.write_update(rt, &key, name, &old, new, current.mod_revision).await {
                Err(e) if e.reason == "Conflict" && !pinned && retry.again().await => continue,
                other => return other,
            }
        }
    }

    /// GET `.../{name}/scale`.
    pub async fn get_scale(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        Ok(scale_of(rt, &self.get(rt, ns, name).await?))
    }

    /// PUT or PATCH `.../{name}/scale`: `change` turns the current Scale into the wanted
    /// one, whose `spec.replicas` is written to the parent with compare-and-swap. The
    /// wanted Scale's resourceVersion must be the parent's (409 when stale); unless the
    /// request itself named one (`pinned`), a lost race is retried against the newer parent.
    /// `fm` owns the replicas it set (subresource `scale`).
    #[allow(clippy::too_many_arguments, reason = "the request's parts, passed through")]
    pub async fn write_scale(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        pinned: bool,
        change: impl Fn(&Value) -> Result<Value, ApiError>,
        fm: Option<&FieldManager>,
        adm: &dyn Admission,
    ) -> Result<Value, ApiError> {
        let key = rt.key(ns, name);
        let mut retry = Retry::new();
        loop {
            let current = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(rt.group, rt.plural, name))?;
            let old = decode(rt, &current)?;
            let wanted = change(&scale_of(rt, &old))?;
            if let Some(rv) = meta::resource_version(&wanted)
                && parse_rv(rv)? != current.mod_revision
            {
                return Err(ApiError::conflict(rt.group, rt.plural, name));
            }
            let mut new = match rt.custom.and_then(|c| c.scale.as_ref()) {
                Some(spec) => super::crd::scale::apply_to_parent(spec, &old, &wanted, name)?,
                None => scale::apply_to_parent(&old, &wanted, name)?,
            };
            strategy::prepare_update(rt, &old, &mut new, None);
            adm.mutate(&mut new, Some(&old)).await?;
            strategy::validate(rt, &new, Some(&old))?;
            if let Some(fm) = fm {
                managed::record_update(rt, Some("scale"), Some(&old), &mut new, fm);
            }
            adm.validate(&new, Some(&old)).await?;
            match self.write_update(rt, &key, name, &old, new, current.mod_revision).await {
                Err(e) if e.reason == "Conflict" && !pinned && retry.again().await => continue,
                other => return other.map(|parent| scale_of(rt, &parent)),
            }
        }
    }

    /// DELETE. Objects with finalizers, Namespaces, and Pods bound to an existing Node are
    /// marked with `deletionTimestamp` and returned; everything else goes at once.
    pub async fn delete(
        self: &Arc<Self>,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = rt.key(ns, name);
        let Some(current) = self.store.get(&key).await? else {
            return Err(ApiError::not_found(rt.group, rt.plural, name));
        };
        let mut obj = decode(rt, &current)?;
        if opts.precondition_uid.as_deref().is_some_and(|u| u != meta::uid(&obj)) {
            return Err(ApiError::conflict(rt.group, rt.plural, name));
        }
        if let Some(rv) = &opts.precondition_resource_version
            && parse_rv(rv)? != current.mod_revision
        {
            return Err(ApiError::conflict(rt.group, rt.plural, name));
        }
        let graceful_pod =
            rt.kind == "Pod" && opts.grace_period_seconds != Some(0) && self.pod_is_on_a_node(&obj).await?;
        let before = meta::finalizers(&obj);
        // The namespace controller empties a namespace (it holds `spec.finalizers` until
        // then), so the garbage collector's finalizers would only hold it up.
        let finalizers = match opts.propagation {
            Some(p) if rt.kind != "Namespace" => p.finalizers(before.clone()),
            _ => before.clone(),
        };
        let keep = !finalizers.is_empty() || holds_namespace(rt, &obj) || graceful_pod;
        if !keep {
            let (_, rev) = self
                .store
                .delete(&key, Some(current.mod_revision))
                .await
                .map_err(|e| self.cas_error(rt, name, e))?;
            self.release_allocations(&service_allocations(&obj)).await;
            meta::set_resource_version(&mut obj, rev);
            if rt.kind == "Pod" {
                return Ok(obj);
            }
            return Ok(status::success(rt.plural, rt.group, name, meta::uid(&obj)));
        }
        let already_deleting = meta::deletion_timestamp(&obj).is_some();
        if already_deleting && finalizers == before {
            return Ok(obj);
        }
        let m = meta::metadata_mut(&mut obj);
        if finalizers != before {
            m.insert("finalizers".into(), json!(finalizers));
        }
        if already_deleting {
            // A second DELETE may only change how dependents go (as upstream allows).
            let kv = self
                .store
                .update(&key, meta::encode_for_store(&obj), current.mod_revision)
                .await
                .map_err(|e| self.cas_error(rt, name, e))?;
            return decode(rt, &kv);
        }
        m.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
        if graceful_pod {
            let grace = opts
                .grace_period_seconds
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30);
            meta::metadata_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        if rt.kind == "Namespace" {
            obj["status"]["phase"] = json!("Terminating");
        }
        let kv = self
            .store
            .update(&key, meta::encode_for_store(&obj), current.mod_revision)
            .await
            .map_err(|e| self.cas_error(rt, name, e))?;
        decode(rt, &kv)
    }

    pub async fn delete_collection(
        self: &Arc<Self>,
        scope: &Scope<'_>,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self.list(scope, None, None, None, false).await?;
        let mut deleted = Vec::new();
        for obj in page.items {
            let name = meta::name(&obj).unwrap_or_default().to_owned();
            let ns = meta::namespace(&obj).map(str::to_owned);
            match self.delete(scope.rt, ns.as_deref(), &name, opts).await {
                Ok(_) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// `POST pods/{name}/binding`: the scheduler's write.
    pub async fn bind_pod(&self, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let rt = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods not served"))?;
        let node = body["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid("Binding", "", name, vec![status::Cause::required("target.name")]))?;
        let key = rt.key(Some(ns), name);
        let Some(current) = self.store.get(&key).await? else {
            return Err(ApiError::not_found("", "pods", name));
        };
        let mut pod = meta::decode_stored(&current)?;
        if let Some(existing) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\""
                ),
                details: None,
            });
        }
        pod["spec"]["nodeName"] = json!(node);
        mark_scheduled(&mut pod);
        self.store
            .update(&key, meta::encode_for_store(&pod), current.mod_revision)
            .await
            .map_err(|e| self.cas_error(rt, name, e))?;
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
    }

    /// Events after `resource_version` (or, with none or "0", the current objects as
    /// ADDED first), filtered by the scope's selectors. An object that stops matching is
    /// reported DELETED and one that starts matching ADDED, as upstream does.
    pub async fn watch(
        &self,
        scope: &Scope<'_>,
        resource_version: Option<&str>,
    ) -> Result<BoxStream<'static, Result<WatchEvent, ApiError>>, ApiError> {
        let prefix = scope.rt.key_prefix(scope.namespace);
        let rt = scope.rt;
        let filter = scope.filter.clone();
        let (initial, after) = match resource_version.filter(|rv| *rv != "0") {
            Some(rv) => (Vec::new(), parse_rv(rv)?),
            None => {
                let page = self.list(scope, None, None, None, false).await?;
                let events = page
                    .items
                    .into_iter()
                    .map(|o| {
                        Ok(WatchEvent {
                            kind: "ADDED",
                            revision: page.resource_version,
                            object: o,
                        })
                    })
                    .collect::<Vec<_>>();
                (events, page.resource_version)
            }
        };
        let live = match self.store.watch(&prefix, after).await {
            Ok(s) => s,
            Err(StoreError::Compacted { requested, compacted }) => {
                let err = ApiError::gone(format!("too old resource version: {requested} ({compacted})"));
                return Ok(futures::stream::iter([Err(err)]).boxed());
            }
            Err(e) => return Err(e.into()),
        };
        // A watcher the store dropped for lagging just ends: the client re-watches from its
        // last resourceVersion and loses nothing.
        let live =
            live.take_while(|event| futures::future::ready(!matches!(event, Err(StoreError::WatchLagged { .. }))));
        let live = live.filter_map(move |event| {
            let filter = filter.clone();
            async move {
                match event {
                    Err(StoreError::Compacted { requested, compacted }) => Some(Err(ApiError::gone(format!(
                        "too old resource version: {requested} ({compacted})"
                    )))),
                    Err(e) => Some(Err(e.into())),
                    Ok(ev) => translate(rt, &filter, ev).transpose(),
                }
            }
        });
        Ok(futures::stream::iter(initial).chain(live).boxed())
    }

    async fn pod_is_on_a_node(&self, pod: &Value) -> Result<bool, ApiError> {
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return Ok(false);
        };
        let key = resources::find("", "v1", "nodes")
            .map(|rt| rt.key(None, node))
            .unwrap_or_default();
        Ok(self.store.get(&key).await?.is_some())
    }

    /// Allocates the Service's ClusterIP and NodePorts; returns what it took, so a failed
    /// create can give them back.
    async fn allocate_service(&self, owner: &str, svc: &mut Value) -> Result<Vec<Allocation>, ApiError> {
        let mut taken = Vec::new();
        let result = self.allocate_service_inner(owner, svc, &mut taken).await;
        if result.is_err() {
            self.release_allocations(&taken).await;
        }
        result.map(|()| taken)
    }

    async fn allocate_service_inner(
        &self,
        owner: &str,
        svc: &mut Value,
        taken: &mut Vec<Allocation>,
    ) -> Result<(), ApiError> {
        let ty = svc["spec"]["type"].as_str().unwrap_or("ClusterIP").to_owned();
        if ty == "ExternalName" {
            return Ok(());
        }
        let families = ipfamily::resolve(&svc["spec"], &self.alloc.service_cidrs)?;
        if svc["spec"]["clusterIP"] == "None" {
            svc["spec"]["clusterIPs"] = json!(["None"]);
        } else {
            let mut ips = Vec::new();
            for f in &families {
                let requested = f.requested.map(|ip| ip.to_string());
                let ip = self
                    .alloc
                    .allocate_ip(&f.cidr, requested.as_deref(), owner, &f.field)
                    .await?;
                taken.push(Allocation::Ip(ip.to_string()));
                ips.push(ip.to_string());
            }
            svc["spec"]["clusterIP"] = json!(ips[0]);
            svc["spec"]["clusterIPs"] = json!(ips);
        }
        let names: Vec<_> = families.iter().map(|f| allocator::family_name(&f.cidr)).collect();
        svc["spec"]["ipFamilies"] = json!(names);
        if ty == "NodePort" || ty == "LoadBalancer" {
            let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
            // Two protocols on one port number share one NodePort, as upstream does.
            let mut assigned: Vec<(Value, u16)> = Vec::new();
            for (i, p) in ports.iter().enumerate() {
                let requested = p["nodePort"]
                    .as_u64()
                    .filter(|n| *n != 0)
                    .and_then(|n| u16::try_from(n).ok());
                let shared = assigned.iter().find(|(port, _)| *port == p["port"]).map(|(_, n)| *n);
                let port = self
                    .alloc
                    .allocate_node_port(requested.or(shared), owner, &format!("spec.ports[{i}].nodePort"))
                    .await?;
                if !taken.contains(&Allocation::Port(port)) {
                    taken.push(Allocation::Port(port));
                }
                assigned.push((p["port"].clone(), port));
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
            if svc["spec"]["externalTrafficPolicy"] == "Local" && ty == "LoadBalancer" {
                let hc = self
                    .alloc
                    .allocate_node_port(None, owner, "spec.healthCheckNodePort")
                    .await?;
                taken.push(Allocation::Port(hc));
                svc["spec"]["healthCheckNodePort"] = json!(hc);
            }
        }
        Ok(())
    }

    /// An update may change `ipFamilyPolicy`: a Service that becomes dual-stack gets its
    /// second ClusterIP, one that becomes SingleStack drops it (released once the write
    /// lands), as upstream. The primary ClusterIP is immutable. Returns what was newly taken
    /// and what to release after the write.
    async fn restack_service(
        &self,
        owner: &str,
        old: &Value,
        new: &mut Value,
    ) -> Result<(Vec<Allocation>, Vec<Allocation>), ApiError> {
        let old_ips: Vec<String> = old["spec"]["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().filter(|s| !s.is_empty() && *s != "None").map(str::to_owned))
            .collect();
        if old_ips.is_empty() || new["spec"]["type"] == "ExternalName" || new["spec"]["clusterIP"] == "None" {
            return Ok((vec![], vec![]));
        }
        let spec = &mut new["spec"];
        let mut dropped = Vec::new();
        if spec["ipFamilyPolicy"] == "SingleStack"
            && let Some(ips) = spec["clusterIPs"].as_array_mut()
            && ips.len() > 1
        {
            for ip in ips.drain(1..) {
                if let Some(ip) = ip.as_str().filter(|ip| old_ips.iter().any(|o| o == ip)) {
                    dropped.push(Allocation::Ip(ip.to_owned()));
                }
            }
            if let Some(fams) = spec["ipFamilies"].as_array_mut() {
                fams.truncate(1);
            }
        }
        let families = ipfamily::resolve(spec, &self.alloc.service_cidrs)?;
        let mut taken = Vec::new();
        let mut ips = Vec::new();
        for (i, f) in families.iter().enumerate() {
            let requested = f.requested.map(|ip| ip.to_string()).or_else(|| old_ips.get(i).cloned());
            if i == 0 && requested.as_deref() != Some(old_ips[0].as_str()) {
                self.release_allocations(&taken).await;
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    "",
                    vec![Cause::invalid(
                        "spec.clusterIPs[0]",
                        format!("Invalid value: {requested:?}: may not change once set"),
                    )],
                ));
            }
            match self
                .alloc
                .allocate_ip(&f.cidr, requested.as_deref(), owner, &f.field)
                .await
            {
                Ok(ip) => {
                    let ip = ip.to_string();
                    if !old_ips.contains(&ip) {
                        taken.push(Allocation::Ip(ip.clone()));
                    }
                    ips.push(ip);
                }
                Err(e) => {
                    self.release_allocations(&taken).await;
                    return Err(e);
                }
            }
        }
        for o in old_ips.iter().filter(|o| !ips.contains(o)) {
            let gone = Allocation::Ip(o.clone());
            if !dropped.contains(&gone) {
                dropped.push(gone);
            }
        }
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
        let names: Vec<_> = families.iter().map(|f| allocator::family_name(&f.cidr)).collect();
        spec["ipFamilies"] = json!(names);
        Ok((taken, dropped))
    }

    async fn release_allocations(&self, allocations: &[Allocation]) {
        for a in allocations {
            match a {
                Allocation::Ip(ip) => self.alloc.release_ip(ip).await,
                Allocation::Port(p) => self.alloc.release_node_port(*p).await,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allocation {
    Ip(String),
    Port(u16),
}

/// A Pod being deleted gracefully (deletionGracePeriodSeconds above 0) goes when its
/// kubelet says so, not when its last finalizer does.
/// A Namespace whose `spec.finalizers` (the namespace controller's `kubernetes`) are not
/// done yet stays, Terminating, when deleted (upstream's namespace registry).
fn holds_namespace(rt: &ResourceType, obj: &Value) -> bool {
    rt.kind == "Namespace" && rt.group.is_empty() && obj["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
}

fn awaits_kubelet(rt: &ResourceType, obj: &Value) -> bool {
    rt.kind == "Pod"
        && obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|g| g > 0)
}

/// What a stored Service holds, to release when it goes.
fn service_allocations(obj: &Value) -> Vec<Allocation> {
    if obj["kind"] != "Service" {
        return vec![];
    }
    let mut out = Vec::new();
    let ips = obj["spec"]["clusterIPs"].as_array().into_iter().flatten();
    for ip in std::iter::once(&obj["spec"]["clusterIP"]).chain(ips) {
        if let Some(ip) = ip.as_str().filter(|ip| !ip.is_empty() && *ip != "None")
            && !out.contains(&Allocation::Ip(ip.to_owned()))
        {
            out.push(Allocation::Ip(ip.to_owned()));
        }
    }
    for p in obj["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(port) = p["nodePort"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            && !out.contains(&Allocation::Port(port))
        {
            out.push(Allocation::Port(port));
        }
    }
    if let Some(port) = obj["spec"]["healthCheckNodePort"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
    {
        out.push(Allocation::Port(port));
    }
    out
}

fn patch_error(rt: &ResourceType, name: &str, e: super::patch::PatchError) -> ApiError {
    match e.http_status() {
        422 => ApiError::invalid(rt.kind, rt.group, name, vec![status::Cause::invalid("", e.to_string())]),
        413 => ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: e.to_string(),
            details: None,
        },
        _ => ApiError::bad_request(e.to_string()),
    }
}

/// Fills or checks apiVersion, kind and namespace against the URL.
fn normalize_identity(rt: &ResourceType, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of a {} must be a JSON object",
            rt.kind
        )));
    }
    let api_version = rt.api_version();
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    let m = meta::metadata_mut(obj);
    if rt.namespaced {
        let url_ns = ns.unwrap_or("default");
        match m.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("namespace".into(), json!(url_ns));
            }
            Some(n) if n == url_ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

/// Turns a store event into what this watcher sees, or nothing.
/// The kind of a [`WatchEvent`] that only reports how far the store has been watched.
pub const PROGRESS: &str = "PROGRESS";

fn translate(rt: &ResourceType, filter: &ObjectFilter, event: Event) -> Result<Option<WatchEvent>, ApiError> {
    match event {
        Event::Put { kv, prev } => {
            let obj = decode(rt, &kv)?;
            let now = filter.matches(&obj);
            let before = match &prev {
                Some(p) => filter.matches(&decode(rt, p)?),
                None => false,
            };
            let kind = match (prev.is_some(), before, now) {
                (_, false, true) if prev.is_none() => "ADDED",
                (true, true, true) => "MODIFIED",
                (true, false, true) => "ADDED",
                (true, true, false) => "DELETED",
                _ => return Ok(None),
            };
            Ok(Some(WatchEvent {
                kind,
                revision: kv.mod_revision,
                object: obj,
            }))
        }
        Event::Delete { prev, revision } => {
            let mut obj = decode(rt, &prev)?;
            if !filter.matches(&obj) {
                return Ok(None);
            }
            meta::set_resource_version(&mut obj, revision);
            Ok(Some(WatchEvent {
                kind: "DELETED",
                revision,
                object: obj,
            }))
        }
        // The handler turns this into a bookmark when one is due; it is never sent as is.
        Event::Progress { revision } => Ok(Some(WatchEvent {
            kind: PROGRESS,
            revision,
            object: Value::Null,
        })),
    }
}

/// Sets PodScheduled=True as upstream's binding does, so an earlier "Unschedulable"
/// verdict from the scheduler does not outlive the binding.
fn mark_scheduled(pod: &mut Value) {
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else { return };
    let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                           "lastTransitionTime": meta::now_rfc3339()});
    match list.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = scheduled,
        None => list.push(scheduled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/core/pods/default/a");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/core/pods/default/a".to_owned())
        );
        assert_eq!(decode_continue("!!!").unwrap_err().code, 400);
    }

    #[test]
    fn delete_options_read_the_propagation_policy() {
        let body = json!({"propagationPolicy": "Foreground"});
        assert_eq!(
            DeleteOptions::from_body(&body, None, Some("Orphan"))
                .unwrap()
                .propagation,
            Some(Propagation::Foreground)
        );
        assert_eq!(
            DeleteOptions::from_body(&Value::Null, None, Some("Orphan"))
                .unwrap()
                .propagation,
            Some(Propagation::Orphan)
        );
        assert_eq!(
            DeleteOptions::from_body(&json!({"orphanDependents": false}), None, None)
                .unwrap()
                .propagation,
            Some(Propagation::Background)
        );
        assert_eq!(
            DeleteOptions::from_body(&Value::Null, None, None).unwrap().propagation,
            None
        );
        assert_eq!(
            DeleteOptions::from_body(&json!({"propagationPolicy": "Later"}), None, None)
                .unwrap_err()
                .code,
            400
        );
        let both = json!({"propagationPolicy": "Orphan", "orphanDependents": true});
        assert_eq!(DeleteOptions::from_body(&both, None, None).unwrap_err().code, 400);
    }

    #[test]
    fn a_policy_leaves_at_most_one_collector_finalizer_and_keeps_the_others() {
        let had = vec!["example.com/x".to_owned(), ORPHAN_FINALIZER.to_owned()];
        assert_eq!(
            Propagation::Foreground.finalizers(had.clone()),
            vec!["example.com/x", FOREGROUND_FINALIZER]
        );
        assert_eq!(Propagation::Background.finalizers(had.clone()), vec!["example.com/x"]);
        assert_eq!(
            Propagation::Orphan.finalizers(had),
            vec!["example.com/x", ORPHAN_FINALIZER]
        );
    }

    #[test]
    fn identity_is_filled_and_checked() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let mut p = json!({"metadata": {"name": "a"}});
        normalize_identity(pods, Some("ns1"), &mut p).unwrap();
        assert_eq!(
            (p["apiVersion"].clone(), p["kind"].clone()),
            (json!("v1"), json!("Pod"))
        );
        assert_eq!(p["metadata"]["namespace"], "ns1");
        let mut wrong = json!({"apiVersion": "apps/v1", "metadata": {"name": "a"}});
        assert_eq!(normalize_identity(pods, Some("ns1"), &mut wrong).unwrap_err().code, 400);
    }
}
