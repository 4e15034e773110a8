//! Where IPVS operations meet the kernel, and the sync that plans against what the kernel
//! reports (so a restart, or a sync that failed half way, simply continues).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    IpvsError,
    apply::HelperRules,
    helpers,
    ops::{Destination, IpvsState, Op, Scheduler, ServiceKey, desired_table, draining, plan, stages, table_of},
};
use crate::model::{DesiredState, Diff};

/// The kernel's IPVS table and the `kube-ipvs0` addresses.
pub trait IpvsHandle {
    fn state(&self) -> Result<IpvsState, IpvsError>;
    /// One virtual service's real servers and their connection counts.
    fn destinations(&self, key: &ServiceKey) -> Result<(BTreeSet<Destination>, Connections), IpvsError>;
    fn apply(&mut self, op: &Op) -> Result<(), IpvsError>;
    /// Applies one step of a plan (operations of one [`super::Stage`]): all of them, or an
    /// error naming the first that failed. One by one here, stopping at the first failure;
    /// the kernel's handle sends a step in bulk.
    fn apply_stage(&mut self, ops: &[Op]) -> Result<(), IpvsError> {
        ops.iter().try_for_each(|op| self.apply(op))
    }
}

/// Where a sync's time went, phase by phase (the helper rules' tools, reading the kernel's
/// table, each step of the plan), in the order they ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncTimings(pub Vec<(&'static str, Duration)>);

impl SyncTimings {
    pub fn add(&mut self, phase: &'static str, took: Duration) {
        match self.0.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, t)) => *t += took,
            None => self.0.push((phase, took)),
        }
    }

    /// Runs `f`, adding its time to `phase`.
    pub fn time<T>(&mut self, phase: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(phase, start.elapsed());
        out
    }
}

/// Applies a plan step by step; a step starts only when the earlier ones succeeded.
fn apply_plan(handle: &mut impl IpvsHandle, ops: &[Op], timings: &mut SyncTimings) -> Result<(), IpvsError> {
    for (stage, run) in stages(ops) {
        timings.time(stage.name(), || handle.apply_stage(run))?;
    }
    Ok(())
}

/// Active plus inactive connections per real server of one service.
pub type Connections = BTreeMap<(ServiceKey, IpAddr, u16), u32>;

/// A partial sync: only the touched ports' virtual services. The kernel holds `old` (the
/// contract of `SyncKind::Partial`), so their services and bindings are known; only their
/// real servers are read back (draining ones and their connections are not in `old`).
/// An address is unbound only when no frontend of `new` still uses it.
pub fn sync_partial(
    handle: &mut impl IpvsHandle,
    old: &DesiredState,
    new: &DesiredState,
    diff: &Diff,
    scheduler: Scheduler,
    timings: &mut SyncTimings,
) -> Result<usize, IpvsError> {
    let touched: BTreeSet<_> = diff
        .added
        .iter()
        .chain(&diff.removed)
        .chain(diff.changed.keys())
        .collect();
    let before = table_of(old.ports.iter().filter(|(n, _)| touched.contains(n)), scheduler);
    let mut want = table_of(new.ports.iter().filter(|(n, _)| touched.contains(n)), scheduler);
    let mut current = IpvsState {
        bound: before.bound.clone(),
        ..Default::default()
    };
    for (key, (service, _)) in &before.services {
        let (dests, conns) = timings.time("read the kernel's table", || handle.destinations(key))?;
        current.services.insert(*key, (service.clone(), dests));
        current.connections.extend(conns);
    }
    want.refused = current.refused.clone();
    want.connections = current.connections.clone();
    // Still used by a port this sync did not touch (another port of the same Service).
    let in_use: BTreeSet<IpAddr> = current
        .bound
        .difference(&want.bound)
        .filter(|a| new.ports.values().any(|p| p.frontends.keys().any(|f| f.address == **a)))
        .copied()
        .collect();
    want.bound.extend(in_use);
    let ops = plan(&current, &want);
    log_plan("partial", &current, &ops);
    apply_plan(handle, &ops, timings)?;
    Ok(ops.len())
}

/// What a sync found and what it does, for `RUST_LOG=rudder_proxy::dataplane::ipvs=debug`:
/// the kernel's side of "the proxy synced, yet IPVS holds nothing".
fn log_plan(kind: &str, current: &IpvsState, ops: &[Op]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let list: Vec<String> = ops.iter().take(20).map(Op::to_string).collect();
        tracing::debug!(
            sync = kind,
            kernel_services = current.services.len(),
            kernel_bound = current.bound.len(),
            ops = ops.len(),
            first_ops = ?list,
            "ipvs plan"
        );
    }
}

/// Plans from the handle's real state and applies in order; stops at the first failure
/// (the caller retries; the next plan starts from whatever did get applied). Returns the
/// number of operations applied.
pub fn sync(handle: &mut impl IpvsHandle, desired: &DesiredState, scheduler: Scheduler) -> Result<usize, IpvsError> {
    sync_timed(handle, desired, scheduler, &mut SyncTimings::default())
}

/// [`sync`], adding where the time went to `timings`.
pub fn sync_timed(
    handle: &mut impl IpvsHandle,
    desired: &DesiredState,
    scheduler: Scheduler,
    timings: &mut SyncTimings,
) -> Result<usize, IpvsError> {
    let current = timings.time("read the kernel's table", || handle.state())?;
    let mut want = desired_table(desired, scheduler);
    // Refusals are the helper rules' business, not the table's.
    want.refused = current.refused.clone();
    want.connections = current.connections.clone();
    let ops = plan(&current, &want);
    log_plan("full", &current, &ops);
    apply_plan(handle, &ops, timings)?;
    if draining(&current, &want) {
        tracing::debug!("real servers are draining; a later sync deletes them");
    }
    Ok(ops.len())
}

/// An in-memory IPVS for tests: applies operations like the kernel would, records them,
/// and can be told to fail the n-th one.
#[derive(Debug, Default)]
pub struct FakeIpvs {
    pub table: IpvsState,
    pub applied: Vec<Op>,
    pub fail_at: Option<usize>,
}

impl IpvsHandle for FakeIpvs {
    fn state(&self) -> Result<IpvsState, IpvsError> {
        Ok(self.table.clone())
    }

    fn destinations(&self, key: &ServiceKey) -> Result<(BTreeSet<Destination>, Connections), IpvsError> {
        let dests = self.table.services.get(key).map(|(_, d)| d.clone()).unwrap_or_default();
        let conns = self
            .table
            .connections
            .iter()
            .filter(|((k, _, _), _)| k == key)
            .map(|(k, n)| (*k, *n))
            .collect();
        Ok((dests, conns))
    }

    fn apply(&mut self, op: &Op) -> Result<(), IpvsError> {
        if self.fail_at == Some(self.applied.len()) {
            self.fail_at = None;
            return Err(IpvsError::Operation(format!("injected failure at {op:?}")));
        }
        let t = &mut self.table;
        match op {
            Op::BindAddress(a) => {
                t.bound.insert(*a);
            }
            Op::UnbindAddress(a) => {
                t.bound.remove(a);
            }
            Op::AddService(s) | Op::UpdateService(s) => {
                let dests = t.services.remove(&s.key).map(|(_, d)| d).unwrap_or_default();
                t.services.insert(s.key, (s.clone(), dests));
            }
            Op::DeleteService(k) => {
                t.services.remove(k);
            }
            Op::AddDestination(k, d) => {
                let (_, dests) = t
                    .services
                    .get_mut(k)
                    .ok_or_else(|| IpvsError::Operation(format!("no virtual service {k:?}")))?;
                dests.insert(*d);
            }
            Op::UpdateDestination(k, d) => {
                let (_, dests) = t
                    .services
                    .get_mut(k)
                    .ok_or_else(|| IpvsError::Operation(format!("no virtual service {k:?}")))?;
                dests.retain(|o| (o.address, o.port) != (d.address, d.port));
                dests.insert(*d);
            }
            Op::DeleteDestination(k, d) => {
                if let Some((_, dests)) = t.services.get_mut(k) {
                    dests.remove(d);
                }
                t.connections.remove(&(*k, d.address, d.port));
            }
        }
        self.applied.push(op.clone());
        Ok(())
    }
}

/// The ipvs mode as a [`crate::dataplane::Dataplane`]: every sync writes the helper sets
/// and rules (each set swap and each family's restore is one transaction), then
/// reconciles the kernel's IPVS table against the desired one (IPVS has no transactions;
/// the operation order keeps each intermediate table valid, and the next sync finishes
/// what a failed one started).
pub struct Ipvs<H: IpvsHandle + Send> {
    pub handle: H,
    pub scheduler: Scheduler,
    /// The ipsets and iptables rules; `None` in unit tests over [`FakeIpvs`].
    pub helpers: Option<HelperRules>,
    /// Where the last sync's time went.
    pub timings: SyncTimings,
}

impl<H: IpvsHandle + Send> crate::dataplane::Dataplane for Ipvs<H> {
    fn mode(&self) -> crate::dataplane::Mode {
        crate::dataplane::Mode::Ipvs
    }

    fn sync(
        &mut self,
        new: &DesiredState,
        kind: crate::dataplane::SyncKind<'_>,
    ) -> Result<(), crate::dataplane::DataplaneError> {
        let timings = &mut self.timings;
        *timings = SyncTimings::default();
        if let Some(rules) = &mut self.helpers {
            if matches!(kind, crate::dataplane::SyncKind::Full) {
                // Unknown kernel state: write everything again.
                rules.forget();
            }
            let rendered = timings.time("render helper rules", || helpers::render(new));
            rules.apply(&rendered, timings)?;
        }
        match kind {
            crate::dataplane::SyncKind::Full => sync_timed(&mut self.handle, new, self.scheduler, timings)?,
            crate::dataplane::SyncKind::Partial { old, diff } => {
                sync_partial(&mut self.handle, old, new, diff, self.scheduler, timings)?
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::{Value, json};

    use super::{super::ops::*, *};
    use crate::model::{
        ModelConfig, NodeInfo, Protocol, ServicePortMap, endpoints::endpoints_map, fixtures, service::service_ports,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn state(spec: Value, endpoints: &[&str]) -> DesiredState {
        let svc = fixtures::service(json!({"metadata": {"namespace": "ns", "name": "web"}, "spec": spec}));
        let mut ports = ServicePortMap::new();
        ports.extend(service_ports(&svc).unwrap());
        let eps: Vec<_> = endpoints.iter().map(|a| fixtures::ready(a, "n1")).collect();
        let slices = if endpoints.is_empty() {
            vec![]
        } else {
            vec![fixtures::simple_slice("web", "web-1", "http", 8080, eps)]
        };
        let endpoints = endpoints_map(&slices, "n1").unwrap();
        let node = NodeInfo {
            name: "n1".into(),
            addresses: vec![ip("10.250.0.11"), ip("10.250.0.21")],
            ..Default::default()
        };
        DesiredState::build(&ports, &endpoints, &node, &ModelConfig::default())
    }

    fn cluster_ip() -> Value {
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
               "ports": [{"name": "http", "port": 80, "targetPort": 8080}]})
    }

    fn key(addr: &str, port: u16) -> ServiceKey {
        ServiceKey {
            address: ip(addr),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn dest(addr: &str) -> Destination {
        Destination {
            address: ip(addr),
            port: 8080,
            weight: 1,
        }
    }

    #[test]
    fn a_cluster_ip_becomes_one_virtual_service_with_its_endpoints_and_a_bound_address() {
        let mut fake = FakeIpvs::default();
        let s = state(cluster_ip(), &["10.244.1.10", "10.244.2.10", "10.244.3.10"]);
        assert_eq!(sync(&mut fake, &s, Scheduler::RoundRobin).unwrap(), 5);
        let (vs, dests) = &fake.table.services[&key("10.96.0.10", 80)];
        assert_eq!(vs.scheduler.name(), "rr");
        assert_eq!(vs.persistence_timeout, None);
        assert_eq!(dests.len(), 3);
        assert_eq!(fake.table.bound, [ip("10.96.0.10")].into());
        assert_eq!(
            fake.applied[0],
            Op::BindAddress(ip("10.96.0.10")),
            "bind before serving"
        );
        assert_eq!(
            sync(&mut fake, &s, Scheduler::RoundRobin).unwrap(),
            0,
            "a restart with nothing changed does nothing"
        );
    }

    #[test]
    fn node_ports_serve_every_node_address_without_binding_them() {
        let mut spec = cluster_ip();
        spec["type"] = json!("NodePort");
        spec["ports"][0]["nodePort"] = json!(30080);
        let mut fake = FakeIpvs::default();
        sync(&mut fake, &state(spec, &["10.244.1.10"]), Scheduler::RoundRobin).unwrap();
        assert!(fake.table.services.contains_key(&key("10.250.0.11", 30080)));
        assert!(fake.table.services.contains_key(&key("10.250.0.21", 30080)));
        assert!(!fake.table.bound.contains(&ip("10.250.0.11")));
    }

    #[test]
    fn client_ip_affinity_is_persistence_with_the_timeout() {
        let mut spec = cluster_ip();
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
        let t = desired_table(&state(spec, &["10.244.1.10"]), Scheduler::RoundRobin);
        assert_eq!(t.services[&key("10.96.0.10", 80)].0.persistence_timeout, Some(600));
    }

    #[test]
    fn an_endpoint_change_is_one_add_and_one_delete_in_that_order() {
        let before = desired_table(
            &state(cluster_ip(), &["10.244.1.10", "10.244.2.10"]),
            Scheduler::RoundRobin,
        );
        let after = desired_table(
            &state(cluster_ip(), &["10.244.1.10", "10.244.3.10"]),
            Scheduler::RoundRobin,
        );
        let k = key("10.96.0.10", 80);
        assert_eq!(
            plan(&before, &after),
            vec![
                Op::AddDestination(k, dest("10.244.3.10")),
                Op::DeleteDestination(k, dest("10.244.2.10"))
            ]
        );
    }

    #[test]
    fn no_endpoints_means_no_virtual_service_and_a_refusal_for_the_helpers() {
        let t = desired_table(&state(cluster_ip(), &[]), Scheduler::RoundRobin);
        assert!(t.services.is_empty());
        assert_eq!(
            t.refused.get(&key("10.96.0.10", 80)),
            Some(&crate::model::Target::Reject)
        );
    }

    #[test]
    fn a_departing_tcp_server_with_connections_drains_at_weight_zero_then_goes() {
        let mut fake = FakeIpvs::default();
        let two = state(cluster_ip(), &["10.244.1.10", "10.244.2.10"]);
        sync(&mut fake, &two, Scheduler::RoundRobin).unwrap();
        let k = key("10.96.0.10", 80);
        fake.table.connections.insert((k, ip("10.244.2.10"), 8080), 3);
        let one = state(cluster_ip(), &["10.244.1.10"]);
        fake.applied.clear();
        sync(&mut fake, &one, Scheduler::RoundRobin).unwrap();
        let drained = Destination {
            weight: 0,
            ..dest("10.244.2.10")
        };
        assert_eq!(fake.applied, vec![Op::UpdateDestination(k, drained)]);
        fake.applied.clear();
        sync(&mut fake, &one, Scheduler::RoundRobin).unwrap();
        assert!(fake.applied.is_empty(), "still busy: stays at weight 0");
        // Back before it drained: weight 1 again, not a second entry.
        sync(&mut fake, &two, Scheduler::RoundRobin).unwrap();
        assert_eq!(fake.applied, vec![Op::UpdateDestination(k, dest("10.244.2.10"))]);
        sync(&mut fake, &one, Scheduler::RoundRobin).unwrap();
        fake.table.connections.clear();
        fake.applied.clear();
        sync(&mut fake, &one, Scheduler::RoundRobin).unwrap();
        assert_eq!(
            fake.applied,
            vec![Op::DeleteDestination(k, drained)],
            "drained: deleted"
        );
    }

    #[test]
    fn a_plan_cuts_into_steps_in_order_with_drains_among_the_departures() {
        let rr = Scheduler::RoundRobin;
        let mut before = desired_table(&state(cluster_ip(), &["10.244.1.10", "10.244.2.10"]), rr);
        before
            .connections
            .insert((key("10.96.0.10", 80), ip("10.244.2.10"), 8080), 3);
        let after = desired_table(&state(cluster_ip(), &["10.244.1.10", "10.244.3.10"]), rr);
        let steps = |ops: &[Op]| stages(ops).map(|(s, run)| (s, run.len())).collect::<Vec<_>>();
        assert_eq!(
            steps(&plan(&before, &after)),
            vec![(Stage::Destinations, 1), (Stage::Departures, 1)],
            "the busy server drains (weight 0) only after the new one is in"
        );
        assert_eq!(
            steps(&plan(&IpvsState::default(), &after)),
            vec![(Stage::Bind, 1), (Stage::Services, 1), (Stage::Destinations, 2)]
        );
        assert_eq!(
            steps(&plan(&after, &IpvsState::default())),
            vec![(Stage::ServiceRemovals, 1), (Stage::Unbind, 1)]
        );
    }

    #[test]
    fn a_departing_udp_server_goes_at_once() {
        let udp = |t: IpvsState| IpvsState {
            services: t
                .services
                .into_values()
                .map(|(mut vs, d)| {
                    vs.key.protocol = Protocol::Udp;
                    (vs.key, (vs, d))
                })
                .collect(),
            ..t
        };
        let mut before = udp(desired_table(
            &state(cluster_ip(), &["10.244.1.10", "10.244.2.10"]),
            Scheduler::RoundRobin,
        ));
        let after = udp(desired_table(
            &state(cluster_ip(), &["10.244.1.10"]),
            Scheduler::RoundRobin,
        ));
        let k = ServiceKey {
            protocol: Protocol::Udp,
            ..key("10.96.0.10", 80)
        };
        before.connections.insert((k, ip("10.244.2.10"), 8080), 1);
        assert_eq!(
            plan(&before, &after),
            vec![Op::DeleteDestination(k, dest("10.244.2.10"))]
        );
    }

    #[test]
    fn a_partial_sync_reaches_what_a_full_one_does() {
        let before = state(cluster_ip(), &["10.244.1.10", "10.244.2.10"]);
        let after = state(cluster_ip(), &["10.244.1.10", "10.244.3.10"]);
        let diff = crate::model::Diff::between(&before, &after);
        let mut fake = FakeIpvs::default();
        sync(&mut fake, &before, Scheduler::RoundRobin).unwrap();
        sync_partial(
            &mut fake,
            &before,
            &after,
            &diff,
            Scheduler::RoundRobin,
            &mut SyncTimings::default(),
        )
        .unwrap();
        assert_eq!(fake.table, desired_table(&after, Scheduler::RoundRobin));
        let gone = crate::model::Diff::between(&after, &DesiredState::default());
        sync_partial(
            &mut fake,
            &after,
            &DesiredState::default(),
            &gone,
            Scheduler::RoundRobin,
            &mut SyncTimings::default(),
        )
        .unwrap();
        assert!(
            fake.table.services.is_empty() && fake.table.bound.is_empty(),
            "{:?}",
            fake.table
        );
    }

    #[test]
    fn refused_frontends_are_bound_but_get_no_virtual_service() {
        let mut fake = FakeIpvs::default();
        sync(&mut fake, &state(cluster_ip(), &[]), Scheduler::RoundRobin).unwrap();
        assert!(fake.table.services.is_empty());
        assert_eq!(fake.table.bound, [ip("10.96.0.10")].into());
    }

    #[test]
    fn a_failed_operation_is_completed_by_the_next_sync_and_removal_cleans_up() {
        let s = state(cluster_ip(), &["10.244.1.10", "10.244.2.10"]);
        let mut fake = FakeIpvs {
            fail_at: Some(2),
            ..Default::default()
        };
        assert!(sync(&mut fake, &s, Scheduler::RoundRobin).is_err());
        assert_eq!(fake.applied.len(), 2, "stopped at the failure");
        sync(&mut fake, &s, Scheduler::RoundRobin).unwrap();
        assert_eq!(fake.table, desired_table(&s, Scheduler::RoundRobin));
        sync(&mut fake, &DesiredState::default(), Scheduler::RoundRobin).unwrap();
        assert!(
            fake.table.services.is_empty() && fake.table.bound.is_empty(),
            "{:?}",
            fake.table
        );
    }
}
