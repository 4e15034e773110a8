//! The ownership graph and what to do about one object in it (pure).
//!
//! Nodes are the watched objects, keyed by uid; edges are their ownerReferences. An owner
//! that is referenced but not watched (or not seen yet) has dependents but no node. What
//! to do is decided one object at a time from its direct edges only, never by walking the
//! graph, so ownership cycles cannot make it loop; a cycle in a foreground deletion is
//! broken as upstream does, by clearing `blockOwnerDeletion` before deleting.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::apiserver::registry::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation};

pub type Uid = String;

/// What the collector keeps of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub uid: Uid,
    /// Index into the collector's table of watched kinds.
    pub kind: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub resource_version: Option<String>,
    pub owners: Vec<OwnerReference>,
    /// Has a `deletionTimestamp`.
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Object {
    /// Being deleted in the foreground: waits for its blocking dependents.
    pub fn waiting_for_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER)
    }

    pub fn orphaning(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == ORPHAN_FINALIZER)
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    objects: HashMap<Uid, Object>,
    /// Owner uid → dependent uids, also for owners without a node.
    dependents: HashMap<Uid, BTreeSet<Uid>>,
}

/// An owner as seen from one dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists and is not waiting for its dependents: it keeps the dependent alive.
    Solid,
    /// Being deleted in the foreground.
    Waiting,
    /// Does not exist (verified; a different uid under the name counts as absent).
    Absent,
}

/// One thing to do for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove the ownerReferences to these owners (gone or going, while a solid owner
    /// keeps the object).
    DropOwnerRefs(Vec<Uid>),
    /// Delete the object, after clearing `blockOwnerDeletion` on its references to
    /// `unblock` (owners that would otherwise wait for it while it waits for them).
    Delete { policy: Propagation, unblock: Vec<Uid> },
    /// Remove the reference to this owner from each dependent, then the `orphan` finalizer.
    Orphan { dependents: Vec<Uid> },
    /// Every blocking dependent is gone: remove the finalizer.
    RemoveFinalizer(&'static str),
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Object> {
        self.objects.get(uid)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn uids_of_kind(&self, kind: usize) -> Vec<Uid> {
        self.objects
            .values()
            .filter(|o| o.kind == kind)
            .map(|o| o.uid.clone())
            .collect()
    }

    pub fn dependents(&self, uid: &str) -> Vec<&Object> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.objects.get(d))
            .collect()
    }

    /// Adds or replaces an object; returns the uids whose decision may have changed:
    /// itself, its owners old and new (their waiting may end) and its dependents (their
    /// owner's state changed).
    pub fn upsert(&mut self, obj: Object) -> Vec<Uid> {
        let uid = obj.uid.clone();
        let mut affected: BTreeSet<Uid> = BTreeSet::from([uid.clone()]);
        if let Some(old) = self.objects.remove(&uid) {
            for o in &old.owners {
                affected.insert(o.uid.clone());
                self.unlink(&o.uid, &uid);
            }
        }
        for o in &obj.owners {
            affected.insert(o.uid.clone());
            self.dependents.entry(o.uid.clone()).or_default().insert(uid.clone());
        }
        affected.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
        self.objects.insert(uid, obj);
        affected.into_iter().collect()
    }

    /// Removes an object; returns its owners and dependents.
    pub fn remove(&mut self, uid: &str) -> Vec<Uid> {
        let mut affected = BTreeSet::new();
        if let Some(old) = self.objects.remove(uid) {
            for o in &old.owners {
                affected.insert(o.uid.clone());
                self.unlink(&o.uid, uid);
            }
        }
        affected.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        affected.into_iter().collect()
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// The state of an owner this graph holds; `None` when it has no node (the caller
    /// must look it up before calling it absent: the watch may just be behind).
    pub fn owner_state(&self, owner: &OwnerReference) -> Option<OwnerState> {
        let o = self.objects.get(&owner.uid)?;
        Some(if o.waiting_for_dependents() {
            OwnerState::Waiting
        } else {
            OwnerState::Solid
        })
    }

    /// Dependents that hold a foreground deletion of `uid` up.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Object> {
        self.dependents(uid)
            .into_iter()
            .filter(|d| {
                d.owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
            })
            .collect()
    }

    /// What to do about `uid`, given the state of each of its owners (`owners`; an owner
    /// missing there counts as solid, so an unknown owner never gets anything deleted).
    pub fn decide(&self, uid: &str, owners: &HashMap<Uid, OwnerState>) -> Option<Step> {
        let obj = self.objects.get(uid)?;
        if obj.orphaning() {
            let dependents = self.dependents(uid).into_iter().map(|d| d.uid.clone()).collect();
            return Some(Step::Orphan { dependents });
        }
        if obj.waiting_for_dependents() {
            // Its dependents are deleted by their own decisions (they see it Waiting).
            return self
                .blocking_dependents(uid)
                .is_empty()
                .then_some(Step::RemoveFinalizer(FOREGROUND_FINALIZER));
        }
        if obj.deleting || obj.owners.is_empty() {
            return None;
        }
        let state = |o: &OwnerReference| owners.get(&o.uid).copied().unwrap_or(OwnerState::Solid);
        let solid = obj.owners.iter().any(|o| state(o) == OwnerState::Solid);
        let not_solid: Vec<Uid> = obj
            .owners
            .iter()
            .filter(|o| state(o) != OwnerState::Solid)
            .map(|o| o.uid.clone())
            .collect();
        if solid {
            return (!not_solid.is_empty()).then_some(Step::DropOwnerRefs(not_solid));
        }
        let waiting: Vec<Uid> = obj
            .owners
            .iter()
            .filter(|o| state(o) == OwnerState::Waiting && o.block_owner_deletion == Some(true))
            .map(|o| o.uid.clone())
            .collect();
        let any_waiting = obj.owners.iter().any(|o| state(o) == OwnerState::Waiting);
        if any_waiting && !self.dependents(uid).is_empty() {
            // Its own dependents go first, so a chain is deleted bottom-up; the owner stops
            // waiting for it meanwhile, or a cycle would wait forever.
            return Some(Step::Delete {
                policy: Propagation::Foreground,
                unblock: waiting,
            });
        }
        Some(Step::Delete {
            policy: Propagation::Background,
            unblock: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_ref(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("name-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn obj(uid: &str, owners: &[(&str, bool)]) -> Object {
        Object {
            uid: uid.into(),
            kind: 0,
            namespace: Some("default".into()),
            name: format!("name-{uid}"),
            resource_version: Some("1".into()),
            owners: owners.iter().map(|(u, b)| owner_ref(u, *b)).collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    fn deleting(mut o: Object, finalizer: &str) -> Object {
        o.deleting = true;
        o.finalizers = vec![finalizer.into()];
        o
    }

    /// Owner states as the collector computes them: from the graph, else absent.
    fn states(g: &Graph, uid: &str) -> HashMap<Uid, OwnerState> {
        g.get(uid)
            .map(|o| {
                o.owners
                    .iter()
                    .map(|r| (r.uid.clone(), g.owner_state(r).unwrap_or(OwnerState::Absent)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn decide(g: &Graph, uid: &str) -> Option<Step> {
        g.decide(uid, &states(g, uid))
    }

    #[test]
    fn background_dependents_of_a_missing_owner_are_deleted() {
        let mut g = Graph::default();
        g.upsert(obj("rs", &[]));
        g.upsert(obj("p1", &[("rs", true)]));
        assert_eq!(decide(&g, "p1"), None, "owner exists");
        let affected = g.remove("rs");
        assert_eq!(affected, vec!["p1".to_owned()]);
        assert_eq!(
            decide(&g, "p1"),
            Some(Step::Delete {
                policy: Propagation::Background,
                unblock: vec![]
            })
        );
        assert_eq!(decide(&g, "rs"), None);
    }

    #[test]
    fn an_unknown_owner_deletes_nothing_and_a_solid_one_keeps_the_object() {
        let mut g = Graph::default();
        g.upsert(obj("p", &[("gone", false), ("rs", false)]));
        assert_eq!(
            g.decide("p", &HashMap::new()),
            None,
            "owners not looked up count as solid"
        );
        g.upsert(obj("rs", &[]));
        assert_eq!(decide(&g, "p"), Some(Step::DropOwnerRefs(vec!["gone".into()])));
    }

    #[test]
    fn orphaning_owner_strips_its_dependents_then_its_finalizer() {
        let mut g = Graph::default();
        g.upsert(obj("p1", &[("rs", true)]));
        g.upsert(obj("p2", &[("rs", true)]));
        let affected = g.upsert(deleting(obj("rs", &[]), ORPHAN_FINALIZER));
        assert!(affected.contains(&"p1".to_owned()) && affected.contains(&"rs".to_owned()));
        assert_eq!(
            decide(&g, "rs"),
            Some(Step::Orphan {
                dependents: vec!["p1".into(), "p2".into()]
            })
        );
        // The dependents keep their other owners only.
        g.upsert(obj("p1", &[]));
        g.upsert(obj("p2", &[]));
        assert_eq!(decide(&g, "rs"), Some(Step::Orphan { dependents: vec![] }));
        assert_eq!(decide(&g, "p1"), None);
    }

    #[test]
    fn foreground_owner_waits_for_blocking_dependents_only() {
        let mut g = Graph::default();
        g.upsert(obj("p1", &[("rs", true)]));
        g.upsert(obj("p2", &[("rs", false)]));
        g.upsert(deleting(obj("rs", &[]), FOREGROUND_FINALIZER));
        assert_eq!(decide(&g, "rs"), None, "p1 blocks");
        assert_eq!(
            decide(&g, "p1"),
            Some(Step::Delete {
                policy: Propagation::Background,
                unblock: vec![]
            })
        );
        assert_eq!(
            decide(&g, "p2"),
            Some(Step::Delete {
                policy: Propagation::Background,
                unblock: vec![]
            })
        );
        assert_eq!(g.remove("p1"), vec!["rs".to_owned()]);
        assert_eq!(
            decide(&g, "rs"),
            Some(Step::RemoveFinalizer(FOREGROUND_FINALIZER)),
            "p2 does not block"
        );
    }

    #[test]
    fn foreground_goes_down_a_chain_bottom_up() {
        let mut g = Graph::default();
        g.upsert(obj("rs", &[("deploy", true)]));
        g.upsert(obj("pod", &[("rs", true)]));
        g.upsert(deleting(obj("deploy", &[]), FOREGROUND_FINALIZER));
        assert_eq!(
            decide(&g, "rs"),
            Some(Step::Delete {
                policy: Propagation::Foreground,
                unblock: vec!["deploy".into()]
            })
        );
        assert_eq!(decide(&g, "pod"), None, "its owner is not deleting yet");
    }

    #[test]
    fn a_solid_owner_keeps_a_dependent_of_a_deleting_one() {
        let mut g = Graph::default();
        g.upsert(obj("a", &[]));
        g.upsert(obj("p", &[("a", false), ("b", true)]));
        g.upsert(deleting(obj("b", &[]), FOREGROUND_FINALIZER));
        assert_eq!(decide(&g, "p"), Some(Step::DropOwnerRefs(vec!["b".into()])));
    }

    #[test]
    fn cycles_do_not_loop_or_deadlock() {
        let mut g = Graph::default();
        g.upsert(obj("a", &[("b", true)]));
        g.upsert(obj("b", &[("a", true)]));
        assert_eq!(decide(&g, "a"), None, "each keeps the other");
        assert_eq!(decide(&g, "b"), None);
        g.upsert(deleting(obj("a", &[("b", true)]), FOREGROUND_FINALIZER));
        assert_eq!(decide(&g, "a"), None, "b blocks a");
        // b is deleted in the foreground (a is its dependent) after unblocking a.
        assert_eq!(
            decide(&g, "b"),
            Some(Step::Delete {
                policy: Propagation::Foreground,
                unblock: vec!["a".into()]
            })
        );
        g.upsert(deleting(obj("b", &[("a", false)]), FOREGROUND_FINALIZER));
        assert_eq!(decide(&g, "a"), Some(Step::RemoveFinalizer(FOREGROUND_FINALIZER)));
        assert_eq!(decide(&g, "b"), None, "a still blocks b");
        g.remove("a");
        assert_eq!(decide(&g, "b"), Some(Step::RemoveFinalizer(FOREGROUND_FINALIZER)));
        // A self-reference keeps the object: its owner exists.
        g.upsert(obj("self", &[("self", true)]));
        assert_eq!(decide(&g, "self"), None);
    }

    #[test]
    fn replacing_an_object_moves_its_edges() {
        let mut g = Graph::default();
        g.upsert(obj("p", &[("rs1", true)]));
        let affected = g.upsert(obj("p", &[("rs2", true)]));
        assert_eq!(affected, vec!["p".to_owned(), "rs1".to_owned(), "rs2".to_owned()]);
        assert!(g.dependents("rs1").is_empty());
        assert_eq!(g.dependents("rs2").len(), 1);
        assert_eq!(g.len(), 1);
    }
}
