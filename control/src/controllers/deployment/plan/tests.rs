//! Rollout steps, each planned from the state the previous one left, with every pod
//! becoming available at once between steps (the kubelet's part).

use k8s_openapi::{
    api::{
        apps::v1::{DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment},
        core::v1::{Container, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::*;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_owned(), "web".to_owned())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn deployment(replicas: i32, image: &str, strategy: DeploymentStrategy) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
                match_expressions: None,
            },
            template: template(image),
            strategy: Some(strategy),
            ..Default::default()
        }),
        status: None,
    }
}

fn rolling(surge: IntOrString, unavailable: IntOrString) -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(surge),
            max_unavailable: Some(unavailable),
        }),
    }
}

fn default_rolling() -> DeploymentStrategy {
    rolling(IntOrString::String("25%".into()), IntOrString::String("25%".into()))
}

fn recreate() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    }
}

/// Applies a plan to the cluster as the API server and the ReplicaSet controller would:
/// creates get a creation time, updates replace, deletes remove; the Deployment gets the
/// status and revision. Then every ReplicaSet's pods are all available.
struct Cluster {
    d: Deployment,
    rses: Vec<ReplicaSet>,
    clock: i64,
}

impl Cluster {
    fn new(d: Deployment) -> Self {
        Self {
            d,
            rses: vec![],
            clock: 0,
        }
    }

    fn step(&mut self, old_pods_running: bool) -> Plan {
        self.clock += 1;
        let p = plan(&self.d, &self.rses, old_pods_running, ts(self.clock));
        if let Some(mut rs) = p.create.clone() {
            rs.metadata.creation_timestamp = Some(Time(ts(self.clock)));
            rs.metadata.uid = rs.metadata.name.clone();
            self.rses.push(rs);
        }
        for u in &p.update {
            if let Some(rs) = self.rses.iter_mut().find(|r| r.metadata.name == u.metadata.name) {
                rs.spec = u.spec.clone();
                rs.metadata.annotations = u.metadata.annotations.clone();
            }
        }
        self.rses
            .retain(|rs| !p.delete.contains(rs.metadata.name.as_ref().expect("name")));
        if let Some(r) = &p.revision {
            self.d
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(REVISION.into(), r.clone());
        }
        self.d.status = Some(p.status.clone());
        p
    }

    fn settle_pods(&mut self) {
        for rs in &mut self.rses {
            let n = spec_replicas(rs);
            rs.status = Some(ReplicaSetStatus {
                replicas: n,
                ready_replicas: Some(n),
                available_replicas: Some(n),
                ..Default::default()
            });
        }
    }

    /// (replicas of the ReplicaSet for `image`, of all others).
    fn sizes(&self, image: &str) -> (i32, i32) {
        let t = template(image);
        let is_new = |rs: &ReplicaSet| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|x| hash::same_template(x, &t))
        };
        let new = self.rses.iter().filter(|r| is_new(r)).map(spec_replicas).sum();
        let old = self.rses.iter().filter(|r| !is_new(r)).map(spec_replicas).sum();
        (old, new)
    }

    fn set_image(&mut self, image: &str) {
        if let Some(s) = self.d.spec.as_mut() {
            s.template = template(image);
        }
        self.d.metadata.generation = self.d.metadata.generation.map(|g| g + 1);
    }

    fn revision_of(&self, image: &str) -> String {
        let t = template(image);
        self.rses
            .iter()
            .find(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|x| hash::same_template(x, &t))
            })
            .map(|rs| revision_of(&rs.metadata).to_string())
            .unwrap_or_default()
    }

    /// Steps until nothing changes; returns (old, new) after each step that changed sizes.
    fn roll(&mut self, image: &str) -> Vec<(i32, i32)> {
        let mut seen = vec![];
        for _ in 0..30 {
            let before = self.sizes(image);
            self.step(false);
            let after = self.sizes(image);
            self.settle_pods();
            if after != before {
                seen.push(after);
            } else if self
                .d
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable")))
            {
                return seen;
            }
        }
        panic!("no convergence: {seen:?}");
    }
}

#[test]
fn fenceposts_round_surge_up_and_unavailable_down() {
    let pct = |s: &str| IntOrString::String(s.into());
    let d = |n, s, u| deployment(n, "a", rolling(s, u));
    assert_eq!(fenceposts(&d(3, pct("25%"), pct("25%"))), (1, 0));
    assert_eq!(fenceposts(&d(10, pct("25%"), pct("25%"))), (3, 2));
    assert_eq!(
        fenceposts(&d(5, IntOrString::Int(0), IntOrString::Int(0))),
        (0, 1),
        "both 0 would never progress"
    );
    assert_eq!(
        fenceposts(&d(5, pct("0%"), pct("10%"))),
        (0, 1),
        "10% of 5 rounds down to 0, then becomes 1"
    );
    assert_eq!(fenceposts(&d(4, IntOrString::Int(2), pct("50%"))), (2, 2));
    assert_eq!(new_replicas_rolling(3, 1, 3, 0), 1);
    assert_eq!(new_replicas_rolling(3, 1, 4, 1), 1, "at the surge limit: wait");
    assert_eq!(new_replicas_rolling(3, 1, 2, 2), 3, "never past replicas");
}

#[test]
fn a_new_deployment_gets_one_replicaset_named_by_its_hash_at_revision_1() {
    let mut c = Cluster::new(deployment(3, "nginx:1", default_rolling()));
    let p = c.step(false);
    let rs = p.create.expect("a ReplicaSet");
    let hash = hash::template_hash(&template("nginx:1"), None);
    assert_eq!(rs.metadata.name.as_deref(), Some(format!("web-{hash}").as_str()));
    assert_eq!(rs.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let sel = &rs.spec.as_ref().expect("spec").selector;
    assert_eq!(sel.match_labels.as_ref().and_then(|l| l.get(hash::LABEL)), Some(&hash));
    assert_eq!(
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .map(String::as_str),
        Some("1")
    );
    let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Deployment", "d-uid", Some(true))
    );
    assert_eq!(p.revision.as_deref(), Some("1"));
    c.settle_pods();
    c.step(false);
    let s = c.d.status.clone().expect("status");
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(3), Some(3), Some(3), Some(0))
    );
    let progressing = s
        .conditions
        .expect("conditions")
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .expect("Progressing");
    assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetAvailable"));
}

#[test]
fn a_rolling_update_from_3_to_3_goes_step_by_step_within_surge_and_availability() {
    let mut c = Cluster::new(deployment(3, "nginx:1", default_rolling()));
    c.roll("nginx:1");
    c.set_image("nginx:2");
    // 25% of 3: surge 1 (up), unavailable 0 (down): never more than 4 pods, never fewer
    // than 3 available.
    assert_eq!(c.roll("nginx:2"), vec![(3, 1), (2, 1), (2, 2), (1, 2), (1, 3), (0, 3)]);
    assert_eq!(c.revision_of("nginx:1"), "1");
    assert_eq!(c.revision_of("nginx:2"), "2");
    assert_eq!(
        c.d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .map(String::as_str),
        Some("2")
    );
}

#[test]
fn a_rollback_reuses_the_old_replicaset_under_a_new_revision() {
    let mut c = Cluster::new(deployment(3, "nginx:1", default_rolling()));
    c.roll("nginx:1");
    c.set_image("nginx:2");
    c.roll("nginx:2");
    let first = c
        .rses
        .iter()
        .find(|rs| c.revision_of("nginx:1") == revision_of(&rs.metadata).to_string())
        .and_then(|rs| rs.metadata.name.clone());
    c.set_image("nginx:1");
    c.roll("nginx:1");
    assert_eq!(c.rses.len(), 2, "no third ReplicaSet");
    assert_eq!(c.revision_of("nginx:1"), "3");
    let now_first = c
        .rses
        .iter()
        .find(|rs| spec_replicas(rs) == 3)
        .and_then(|rs| rs.metadata.name.clone());
    assert_eq!(now_first, first);
    assert_eq!(
        c.d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .map(String::as_str),
        Some("3")
    );
}

#[test]
fn recreate_scales_old_to_zero_waits_for_their_pods_then_creates_the_new() {
    let mut c = Cluster::new(deployment(3, "nginx:1", recreate()));
    c.roll("nginx:1");
    c.set_image("nginx:2");
    let p = c.step(false);
    assert!(p.create.is_none());
    assert_eq!(c.sizes("nginx:2"), (0, 0));
    c.settle_pods();
    assert!(c.step(true).create.is_none(), "old pods still running: wait");
    let p = c.step(false);
    assert_eq!(p.create.and_then(|rs| rs.spec).and_then(|s| s.replicas), Some(3));
    assert_eq!(c.sizes("nginx:2"), (0, 3));
}

#[test]
fn scaling_a_finished_rollout_resizes_the_one_active_replicaset() {
    let mut c = Cluster::new(deployment(3, "nginx:1", default_rolling()));
    c.roll("nginx:1");
    for n in [5, 2] {
        if let Some(s) = c.d.spec.as_mut() {
            s.replicas = Some(n);
        }
        c.step(false);
        assert_eq!(c.sizes("nginx:1"), (0, n));
        c.settle_pods();
    }
}

#[test]
fn old_empty_replicasets_beyond_the_history_limit_are_deleted_oldest_revision_first() {
    let mut d = deployment(1, "v0", default_rolling());
    if let Some(s) = d.spec.as_mut() {
        s.revision_history_limit = Some(1);
    }
    let mut c = Cluster::new(d);
    c.roll("v0");
    for image in ["v1", "v2", "v3"] {
        c.set_image(image);
        c.roll(image);
    }
    c.step(false);
    let mut revisions: Vec<i64> = c.rses.iter().map(|rs| revision_of(&rs.metadata)).collect();
    revisions.sort();
    assert_eq!(revisions, vec![3, 4]);
}

#[test]
fn a_paused_deployment_starts_no_rollout() {
    let mut c = Cluster::new(deployment(3, "nginx:1", default_rolling()));
    c.roll("nginx:1");
    c.set_image("nginx:2");
    if let Some(s) = c.d.spec.as_mut() {
        s.paused = Some(true);
    }
    let p = c.step(false);
    assert!(p.create.is_none() && p.update.is_empty());
    let progressing = p
        .status
        .conditions
        .expect("conditions")
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .expect("Progressing");
    assert_eq!(progressing.reason.as_deref(), Some("DeploymentPaused"));
}
