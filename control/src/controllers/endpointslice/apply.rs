//! From desired state and what exists to the fewest writes ([`plan`], pure), and doing
//! them ([`execute`]).
//!
//! Slices are packed for stability, not density: an endpoint stays in the slice that
//! holds it, new endpoints fill slices that change anyway, then slices with room, then
//! slices that would otherwise be deleted (rewritten in place), and only then new slices.
//! So one Pod's change rewrites one slice, and an idle cluster writes nothing: a slice is
//! rewritten only when its endpoints, ports or labels differ (the trigger-time annotation
//! and other metadata do not count).

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::Endpoints,
    discovery::v1::{Endpoint, EndpointSlice},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams, Preconditions},
};

use super::desired::{
    AddressType, CONTROLLER_NAME, Desired, GroupKey, MANAGED_BY_LABEL, OVER_CAPACITY_ANNOTATION,
    TRIGGER_TIME_ANNOTATION, normalize_subsets, port_key,
};

/// The writes that bring a Service's slices and Endpoints to the desired state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (their resourceVersion kept, so a concurrent
    /// change makes the write fail with a conflict rather than be lost).
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<Arc<EndpointSlice>>,
    pub endpoints: EndpointsPlan,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub enum EndpointsPlan {
    #[default]
    Keep,
    Create(Endpoints),
    Update(Endpoints),
    Delete(Arc<Endpoints>),
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.delete.is_empty()
            && self.endpoints == EndpointsPlan::Keep
    }
}

/// What exists for one Service key.
#[derive(Debug, Clone, Copy)]
pub struct Existing<'a> {
    /// Whether a Service of that name exists (managed by us or not).
    pub service_exists: bool,
    /// The slices labelled as this controller's for this Service name.
    pub slices: &'a [Arc<EndpointSlice>],
    pub endpoints: Option<&'a Arc<Endpoints>>,
}

/// `desired` is `None` when the Service is gone or not ours to manage: its slices go;
/// its Endpoints go only with the Service, and only if we made them.
pub fn plan(desired: Option<&Desired>, existing: Existing<'_>, max_per_slice: usize) -> Plan {
    let ours: Vec<Arc<EndpointSlice>> = existing.slices.iter().filter(|s| is_managed(s)).cloned().collect();
    let mut plan = match desired {
        Some(d) => plan_slices(d, &ours, max_per_slice.max(1)),
        None => Plan {
            delete: ours,
            ..Plan::default()
        },
    };
    plan.endpoints = match desired {
        Some(d) => plan_endpoints(d, existing.endpoints),
        None => match existing.endpoints {
            Some(e) if !existing.service_exists && controlled_by_service(e.metadata.owner_references.as_deref()) => {
                EndpointsPlan::Delete(Arc::clone(e))
            }
            _ => EndpointsPlan::Keep,
        },
    };
    plan
}

fn is_managed(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == CONTROLLER_NAME)
}

fn controlled_by_service(refs: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>) -> bool {
    refs.into_iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == "Service" && r.api_version == "v1")
}

fn owned_by(slice: &EndpointSlice, uid: &str) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

fn endpoint_addr(e: &Endpoint) -> &str {
    e.addresses.first().map(String::as_str).unwrap_or_default()
}

fn sorted(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    endpoints
}

fn same_endpoints(a: &[Endpoint], b: &[Endpoint]) -> bool {
    a.len() == b.len() && sorted(a.to_vec()) == sorted(b.to_vec())
}

/// A slice's content, the part that counts for "changed".
struct Target {
    address_type: AddressType,
    ports: Vec<k8s_openapi::api::discovery::v1::EndpointPort>,
    endpoints: Vec<Endpoint>,
}

fn plan_slices(d: &Desired, ours: &[Arc<EndpointSlice>], max: usize) -> Plan {
    let mut plan = Plan::default();
    // Slices of another Service incarnation (same name, other UID), or of a family the
    // Service no longer has, can only go.
    let (usable, foreign): (Vec<_>, Vec<_>) = ours.iter().cloned().partition(|s| {
        owned_by(s, &d.owner.uid) && AddressType::parse(&s.address_type).is_some_and(|t| d.address_types.contains(&t))
    });
    plan.delete.extend(foreign);

    // targets[i]: what usable[i] will hold; None = unused so far.
    let mut targets: Vec<Option<Target>> = usable.iter().map(|_| None).collect();
    let by_key: HashMap<GroupKey, Vec<usize>> = usable.iter().enumerate().fold(HashMap::new(), |mut m, (i, s)| {
        m.entry(GroupKey::of_slice(s)).or_default().push(i);
        m
    });

    if d.groups.is_empty() {
        // The placeholder: keep one slice of the primary family (an existing empty one if
        // there is one), emptied; the rest go.
        let primary = d.address_types.first().copied().unwrap_or(AddressType::IPv4);
        let keep = usable
            .iter()
            .enumerate()
            .filter(|(_, s)| s.address_type == primary.as_str())
            .min_by_key(|(_, s)| (s.endpoints.len(), s.metadata.name.clone()))
            .map(|(i, _)| i);
        match keep {
            Some(i) => {
                targets[i] = Some(Target {
                    address_type: primary,
                    ports: vec![],
                    endpoints: vec![],
                })
            }
            None => plan.create.push(d.placeholder()),
        }
    } else {
        // Pass 1: every endpoint stays where it is if its slice still fits its group.
        let mut leftovers: Vec<(usize, Vec<Endpoint>)> = Vec::new();
        for (gi, g) in d.groups.iter().enumerate() {
            let candidates = by_key.get(&g.key()).cloned().unwrap_or_default();
            let mut home: HashMap<&str, usize> = HashMap::new();
            for &i in &candidates {
                targets[i] = Some(Target {
                    address_type: g.address_type,
                    ports: g.ports.clone(),
                    endpoints: vec![],
                });
                for e in &usable[i].endpoints {
                    home.insert(endpoint_addr(e), i);
                }
            }
            let mut left = Vec::new();
            for e in &g.endpoints {
                match home.get(endpoint_addr(e)).and_then(|&i| targets[i].as_mut()) {
                    Some(t) if t.endpoints.len() < max => t.endpoints.push(e.clone()),
                    _ => left.push(e.clone()),
                }
            }
            // Then fill candidates with room: first those that change anyway.
            let mut order = candidates.clone();
            order.sort_by_key(|&i| {
                let t = targets[i].as_ref().map(|t| t.endpoints.as_slice()).unwrap_or_default();
                (same_endpoints(t, &usable[i].endpoints), usable[i].metadata.name.clone())
            });
            for i in order {
                let Some(t) = targets[i].as_mut() else { continue };
                while t.endpoints.len() < max {
                    let Some(e) = left.pop() else { break };
                    t.endpoints.push(e);
                }
            }
            if !left.is_empty() {
                leftovers.push((gi, left));
            }
        }
        // Slices left with nothing can be rewritten for the leftovers (same family only:
        // addressType is immutable) instead of deleting one and creating another.
        let mut spare: Vec<usize> = (0..usable.len())
            .filter(|&i| targets[i].as_ref().is_none_or(|t| t.endpoints.is_empty()))
            .collect();
        spare.sort_by_key(|&i| usable[i].metadata.name.clone());
        for &i in &spare {
            targets[i] = None;
        }
        for (gi, mut left) in leftovers {
            let g = &d.groups[gi];
            left.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            for chunk in left.chunks(max) {
                let reuse = spare
                    .iter()
                    .position(|&i| usable[i].address_type == g.address_type.as_str());
                match reuse {
                    Some(pos) => {
                        let i = spare.remove(pos);
                        targets[i] = Some(Target {
                            address_type: g.address_type,
                            ports: g.ports.clone(),
                            endpoints: chunk.to_vec(),
                        });
                    }
                    None => plan
                        .create
                        .push(d.new_slice(g.address_type, g.ports.clone(), chunk.to_vec())),
                }
            }
        }
    }

    for (i, target) in targets.into_iter().enumerate() {
        let slice = &usable[i];
        match target {
            None => plan.delete.push(Arc::clone(slice)),
            Some(t) if t.endpoints.is_empty() && !d.groups.is_empty() => plan.delete.push(Arc::clone(slice)),
            Some(t) => {
                if let Some(updated) = update_slice(d, slice, t) {
                    plan.update.push(updated);
                }
            }
        }
    }
    plan
}

/// The slice rewritten to `t`, or `None` when it already says the same.
fn update_slice(d: &Desired, slice: &EndpointSlice, t: Target) -> Option<EndpointSlice> {
    let mut want_ports: Vec<_> = t.ports.iter().map(port_key).collect();
    want_ports.sort();
    let same = slice.address_type == t.address_type.as_str()
        && GroupKey::of_slice(slice).ports == want_ports
        && same_endpoints(&slice.endpoints, &t.endpoints)
        && slice.metadata.labels.as_ref() == Some(&d.slice_labels);
    if same {
        return None;
    }
    let mut s = slice.clone();
    s.endpoints = sorted(t.endpoints);
    s.ports = Some(t.ports);
    s.metadata.labels = Some(d.slice_labels.clone());
    s.metadata.managed_fields = None;
    set_trigger_time(&mut s.metadata.annotations, d);
    Some(s)
}

fn set_trigger_time(annotations: &mut Option<std::collections::BTreeMap<String, String>>, d: &Desired) {
    let a = annotations.get_or_insert_with(Default::default);
    match d.trigger_time {
        Some(t) => {
            a.insert(TRIGGER_TIME_ANNOTATION.to_owned(), t.to_string());
        }
        None => {
            a.remove(TRIGGER_TIME_ANNOTATION);
        }
    }
    if a.is_empty() {
        *annotations = None;
    }
}

fn plan_endpoints(d: &Desired, existing: Option<&Arc<Endpoints>>) -> EndpointsPlan {
    let want = &d.endpoints;
    let over_capacity = |e: &Endpoints| {
        e.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OVER_CAPACITY_ANNOTATION))
            .cloned()
    };
    let Some(current) = existing else {
        let mut new = want.clone();
        set_trigger_time(&mut new.metadata.annotations, d);
        return EndpointsPlan::Create(new);
    };
    let owner_ok = current
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == d.owner.uid);
    let same = owner_ok
        && current.metadata.labels == want.metadata.labels
        && over_capacity(current) == over_capacity(want)
        && normalize_subsets(current.subsets.as_ref()) == normalize_subsets(want.subsets.as_ref());
    if same {
        return EndpointsPlan::Keep;
    }
    let mut e = (**current).clone();
    e.subsets = want.subsets.clone();
    e.metadata.labels = want.metadata.labels.clone();
    e.metadata.managed_fields = None;
    // Our controller reference replaces any other; other owners stay.
    let mut refs: Vec<_> = e
        .metadata
        .owner_references
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.controller != Some(true))
        .collect();
    refs.push(d.owner.clone());
    e.metadata.owner_references = Some(refs);
    let annotations = e.metadata.annotations.get_or_insert_with(Default::default);
    match over_capacity(want) {
        Some(v) => annotations.insert(OVER_CAPACITY_ANNOTATION.to_owned(), v),
        None => annotations.remove(OVER_CAPACITY_ANNOTATION),
    };
    set_trigger_time(&mut e.metadata.annotations, d);
    EndpointsPlan::Update(e)
}

/// Which object a write touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    EndpointSlice,
    Endpoints,
}

/// One write that succeeded: the object's name and new resourceVersion, `None` if it was
/// deleted. The cache uses these to tell whether it has caught up with our own writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub kind: ObjectKind,
    pub name: String,
    pub resource_version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{verb} {kind:?} {namespace}/{name}")]
    Write {
        verb: &'static str,
        kind: ObjectKind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading the {kind:?} objects of {namespace}/{service}")]
    Read {
        kind: ObjectKind,
        namespace: String,
        service: String,
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    /// A 409 (stale resourceVersion or already exists): our cache was behind; reading live
    /// state and trying again fixes it.
    pub fn is_conflict(&self) -> bool {
        let source = match self {
            Self::Write { source, .. } | Self::Read { source, .. } => source,
        };
        matches!(source, kube::Error::Api(s) if s.code == 409)
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// What [`execute`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// Does the plan's writes in upstream's order: creates, updates, deletes (so a Service
/// never loses endpoints between two writes), then the Endpoints. Stops at the first
/// failure; the writes done so far are returned either way.
pub async fn execute(client: &Client, namespace: &str, plan: Plan) -> (Vec<Written>, Result<Counts, ApplyError>) {
    let mut written = Vec::new();
    let result = execute_inner(client, namespace, plan, &mut written).await;
    (written, result)
}

async fn execute_inner(
    client: &Client,
    namespace: &str,
    plan: Plan,
    written: &mut Vec<Written>,
) -> Result<Counts, ApplyError> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams::default();
    let mut counts = Counts::default();
    let write_err = |verb, kind, name: &str| {
        let namespace = namespace.to_owned();
        let name = name.to_owned();
        move |source| ApplyError::Write {
            verb,
            kind,
            namespace,
            name,
            source,
        }
    };
    for s in plan.create {
        let hint = s.metadata.generate_name.clone().unwrap_or_default();
        let created = slices
            .create(&pp, &s)
            .await
            .map_err(write_err("creating", ObjectKind::EndpointSlice, &hint))?;
        written.push(written_of(ObjectKind::EndpointSlice, &created.metadata));
        counts.created += 1;
    }
    for s in plan.update {
        let name = s.metadata.name.clone().unwrap_or_default();
        let updated =
            slices
                .replace(&name, &pp, &s)
                .await
                .map_err(write_err("updating", ObjectKind::EndpointSlice, &name))?;
        written.push(written_of(ObjectKind::EndpointSlice, &updated.metadata));
        counts.updated += 1;
    }
    for s in plan.delete {
        let name = s.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: s.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match slices.delete(&name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(write_err("deleting", ObjectKind::EndpointSlice, &name)(e)),
        }
        written.push(Written {
            kind: ObjectKind::EndpointSlice,
            name,
            resource_version: None,
        });
        counts.deleted += 1;
    }
    match plan.endpoints {
        EndpointsPlan::Keep => {}
        EndpointsPlan::Create(e) => {
            let name = e.metadata.name.clone().unwrap_or_default();
            let created =
                endpoints
                    .create(&pp, &e)
                    .await
                    .map_err(write_err("creating", ObjectKind::Endpoints, &name))?;
            written.push(written_of(ObjectKind::Endpoints, &created.metadata));
            counts.created += 1;
        }
        EndpointsPlan::Update(e) => {
            let name = e.metadata.name.clone().unwrap_or_default();
            let updated =
                endpoints
                    .replace(&name, &pp, &e)
                    .await
                    .map_err(write_err("updating", ObjectKind::Endpoints, &name))?;
            written.push(written_of(ObjectKind::Endpoints, &updated.metadata));
            counts.updated += 1;
        }
        EndpointsPlan::Delete(e) => {
            let name = e.metadata.name.clone().unwrap_or_default();
            let dp = DeleteParams {
                preconditions: e.metadata.uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match endpoints.delete(&name, &dp).await {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(write_err("deleting", ObjectKind::Endpoints, &name)(err)),
            }
            written.push(Written {
                kind: ObjectKind::Endpoints,
                name,
                resource_version: None,
            });
            counts.deleted += 1;
        }
    }
    Ok(counts)
}

fn written_of(kind: ObjectKind, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Written {
    Written {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
    }
}

/// Reads the Service's slices and Endpoints from the API, for when the cache may be
/// behind our own writes.
pub async fn read_live(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<(Vec<Arc<EndpointSlice>>, Option<Arc<Endpoints>>), ApplyError> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "{}={service},{MANAGED_BY_LABEL}={CONTROLLER_NAME}",
        super::desired::SERVICE_NAME_LABEL
    );
    let read_err = |kind| {
        let (namespace, service) = (namespace.to_owned(), service.to_owned());
        move |source| ApplyError::Read {
            kind,
            namespace,
            service,
            source,
        }
    };
    let list = slices
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(read_err(ObjectKind::EndpointSlice))?;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let ep = endpoints
        .get_opt(service)
        .await
        .map_err(read_err(ObjectKind::Endpoints))?;
    Ok((list.items.into_iter().map(Arc::new).collect(), ep.map(Arc::new)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;

    use k8s_openapi::api::core::v1::{Pod, Service};
    use serde_json::json;

    use super::super::desired::{PodInfo, desired};
    use super::*;

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"],
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        }))
        .expect("service")
    }

    fn pods(ips: impl IntoIterator<Item = u32>) -> Vec<Arc<PodInfo>> {
        ips.into_iter()
            .map(|i| {
                let p: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("p{i}"), "namespace": "ns", "uid": format!("u{i}"), "labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                    "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 250, i % 250 + 1),
                               "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .expect("pod");
                Arc::new(PodInfo::from_pod(&p).expect("pod info"))
            })
            .collect()
    }

    fn want(n: impl IntoIterator<Item = u32>) -> Desired {
        desired(&service(), &pods(n), &Map::new(), None).expect("managed")
    }

    /// Pretends the server stored the slices: names and resourceVersions.
    fn stored(slices: Vec<EndpointSlice>) -> Vec<Arc<EndpointSlice>> {
        slices
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.metadata.name = Some(format!("web-{i:05}"));
                s.metadata.resource_version = Some("1".into());
                s.metadata.uid = Some(format!("slice-{i}"));
                Arc::new(s)
            })
            .collect()
    }

    fn existing(slices: &[Arc<EndpointSlice>]) -> Existing<'_> {
        Existing {
            service_exists: true,
            slices,
            endpoints: None,
        }
    }

    #[test]
    fn unchanged_state_plans_no_slice_writes() {
        let d = want(0..150);
        let slices = stored(d.fresh_slices(100));
        let p = plan(Some(&d), existing(&slices), 100);
        assert!(
            p.create.is_empty() && p.update.is_empty() && p.delete.is_empty(),
            "{}",
            summary(&p)
        );
        // A different trigger time alone changes nothing either.
        let mut later = d.clone();
        later.trigger_time = Some("2030-01-01T00:00:00Z".parse().expect("ts"));
        assert!(plan(Some(&later), existing(&slices), 100).update.is_empty());
    }

    #[test]
    fn one_pod_change_rewrites_one_slice() {
        let slices = stored(want(0..150).fresh_slices(100));
        // p0 goes, p150 arrives.
        let p = plan(Some(&want(1..151)), existing(&slices), 100);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{}", summary(&p));
        assert_eq!(p.update.len(), 1, "{}", summary(&p));
        let total: usize = p.update[0].endpoints.len();
        assert_eq!(total, 100);
        assert_eq!(p.update[0].metadata.resource_version.as_deref(), Some("1"));
    }

    #[test]
    fn growth_beyond_max_creates_and_shrink_deletes() {
        let slices = stored(want(0..100).fresh_slices(100));
        let p = plan(Some(&want(0..130)), existing(&slices), 100);
        assert!(p.update.is_empty() && p.delete.is_empty(), "{}", summary(&p));
        assert_eq!(p.create.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(), [30]);
        // Shrinking empties no slice unless all its endpoints go: 50 of 130 spread over both.
        let slices = stored(want(0..130).fresh_slices(100));
        let p = plan(Some(&want(0..50)), existing(&slices), 100);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{}", summary(&p));
        assert_eq!(p.update.iter().map(|s| s.endpoints.len()).sum::<usize>(), 50);
        // Keeping exactly the first slice's endpoints deletes the second.
        let first: Vec<&str> = slices[0].endpoints.iter().map(endpoint_addr).collect();
        let keep: Vec<u32> = (0..130)
            .filter(|i| first.contains(&format!("10.0.0.{}", i + 1).as_str()))
            .collect();
        let p = plan(Some(&want(keep)), existing(&slices), 100);
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 0, 1),
            "{}",
            summary(&p)
        );
    }

    fn summary(p: &Plan) -> String {
        let sizes = |v: &[EndpointSlice]| v.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>();
        format!(
            "create {:?} update {:?} delete {}",
            sizes(&p.create),
            sizes(&p.update),
            p.delete.len()
        )
    }

    #[test]
    fn scale_to_zero_keeps_one_empty_slice_and_back_reuses_it() {
        let slices = stored(want(0..130).fresh_slices(100));
        let p = plan(Some(&want([])), existing(&slices), 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 1));
        assert!(p.update[0].endpoints.is_empty());
        assert_eq!(p.update[0].ports.as_deref(), Some(&[][..]));
        // The placeholder is rewritten in place when endpoints return.
        let placeholder = stored(vec![want([]).placeholder()]);
        let p = plan(Some(&want(0..3)), existing(&placeholder), 100);
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 1, 0),
            "{}",
            summary(&p)
        );
        assert_eq!(p.update[0].endpoints.len(), 3);
        // An existing placeholder stays as it is.
        assert!(plan(Some(&want([])), existing(&placeholder), 100).is_empty_slices());
    }

    #[test]
    fn gone_service_or_other_incarnation_loses_its_slices() {
        let slices = stored(want(0..3).fresh_slices(100));
        let p = plan(
            None,
            Existing {
                service_exists: false,
                slices: &slices,
                endpoints: None,
            },
            100,
        );
        assert_eq!(p.delete.len(), 1);
        let mut other = want(0..3);
        other.owner.uid = "new-uid".into();
        let p = plan(Some(&other), existing(&slices), 100);
        assert_eq!((p.create.len(), p.delete.len()), (1, 1));
    }

    #[test]
    fn endpoints_are_written_only_when_they_change_and_deleted_only_if_ours() {
        let d = want(0..3);
        let EndpointsPlan::Create(created) = plan_endpoints(&d, None) else {
            panic!("create expected")
        };
        let mut stored = created.clone();
        stored.metadata.resource_version = Some("5".into());
        let stored = Arc::new(stored);
        assert_eq!(plan_endpoints(&d, Some(&stored)), EndpointsPlan::Keep);
        let EndpointsPlan::Update(u) = plan_endpoints(&want(0..2), Some(&stored)) else {
            panic!("update expected")
        };
        assert_eq!(u.metadata.resource_version.as_deref(), Some("5"));
        let gone = |e| {
            plan(
                None,
                Existing {
                    service_exists: false,
                    slices: &[],
                    endpoints: Some(e),
                },
                100,
            )
            .endpoints
        };
        assert!(matches!(gone(&stored), EndpointsPlan::Delete(_)));
        let mut foreign = (*stored).clone();
        foreign.metadata.owner_references = None;
        assert_eq!(gone(&Arc::new(foreign)), EndpointsPlan::Keep);
        // A selector-less Service keeps whatever Endpoints it has.
        let kept = plan(
            None,
            Existing {
                service_exists: true,
                slices: &[],
                endpoints: Some(&stored),
            },
            100,
        );
        assert_eq!(kept.endpoints, EndpointsPlan::Keep);
    }

    impl Plan {
        fn is_empty_slices(&self) -> bool {
            self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
        }
    }
}
