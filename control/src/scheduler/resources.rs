//! What a Pod asks for and what a Node has left, counted as upstream's NodeResourcesFit
//! counts them.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Node, Pod},
    apimachinery::pkg::api::resource::Quantity,
};

use super::quantity;

/// Upstream's defaults for a container without a request, used only for scoring
/// (`DefaultMilliCPURequest`, `DefaultMemoryRequest`): without them every best-effort Pod
/// would look free and all of them would land on one node.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Resources {
    fn add(self, o: Self) -> Self {
        Self {
            milli_cpu: self.milli_cpu + o.milli_cpu,
            memory: self.memory + o.memory,
        }
    }

    fn max(self, o: Self) -> Self {
        Self {
            milli_cpu: self.milli_cpu.max(o.milli_cpu),
            memory: self.memory.max(o.memory),
        }
    }

    fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let get = |name: &str| list.and_then(|l| l.get(name)).map(|q| q.0.as_str());
        Self {
            milli_cpu: get("cpu").map_or(0, quantity::milli),
            memory: get("memory").map_or(0, quantity::units),
        }
    }
}

/// How requests are read: as the filter does (absent is zero) or as scoring does (absent is
/// upstream's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    Exact,
    NonZero,
}

fn container_requests(c: &Container, counting: Counting) -> Resources {
    let Some(r) = &c.resources else {
        return defaults(Resources::default(), counting, true, true);
    };
    let requests = r.requests.as_ref();
    let limits = r.limits.as_ref();
    // A limit without a request is the request: upstream's API server defaults it so; ours
    // may not have, so it is done here.
    let pick = |name: &str| {
        requests
            .and_then(|q| q.get(name))
            .or_else(|| limits.and_then(|q| q.get(name)))
    };
    let cpu = pick("cpu");
    let memory = pick("memory");
    let found = Resources {
        milli_cpu: cpu.map_or(0, |q| quantity::milli(&q.0)),
        memory: memory.map_or(0, |q| quantity::units(&q.0)),
    };
    defaults(found, counting, cpu.is_none(), memory.is_none())
}

fn defaults(mut r: Resources, counting: Counting, no_cpu: bool, no_memory: bool) -> Resources {
    if counting == Counting::NonZero {
        if no_cpu {
            r.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if no_memory {
            r.memory = DEFAULT_MEMORY;
        }
    }
    r
}

/// The Pod's effective request, as upstream's `PodRequests`: the containers' sum plus the
/// sidecars (init containers with `restartPolicy: Always`, which keep running), at least
/// the largest need of any init phase (an init container plus the sidecars started before
/// it), plus the Pod's overhead.
pub fn pod_requests(pod: &Pod, counting: Counting) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut total = spec
        .containers
        .iter()
        .fold(Resources::default(), |acc, c| acc.add(container_requests(c, counting)));
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, counting);
        let phase = if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.add(r);
            sidecars
        } else {
            r.add(sidecars)
        };
        init_peak = init_peak.max(phase);
    }
    total = total.add(sidecars).max(init_peak);
    total.add(Resources::from_list(spec.overhead.as_ref()))
}

/// What a Node offers: `status.allocatable` (absent counts as zero, as upstream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub resources: Resources,
    pub pods: i64,
}

pub fn allocatable(node: &Node) -> Allocatable {
    let list = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let pods = list.and_then(|l| l.get("pods")).map_or(0, |q| quantity::units(&q.0));
    Allocatable {
        resources: Resources::from_list(list),
        pods,
    }
}

/// Pods that ended no longer hold their resources: upstream's scheduler does not even
/// watch them.
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("pod")
    }

    fn c(name: &str, cpu: &str, memory: &str) -> serde_json::Value {
        json!({"name": name, "image": "x", "resources": {"requests": {"cpu": cpu, "memory": memory}}})
    }

    #[test]
    fn containers_add_up_and_init_containers_take_the_max() {
        let p = pod(json!({
            "containers": [c("a", "500m", "1Gi"), c("b", "250m", "1Gi")],
            "initContainers": [c("i1", "2", "100Mi"), c("i2", "100m", "3Gi")],
        }));
        let r = pod_requests(&p, Counting::Exact);
        assert_eq!(
            r,
            Resources {
                milli_cpu: 2000,
                memory: 3 << 30
            }
        );
    }

    #[test]
    fn sidecars_run_beside_the_containers() {
        let mut sidecar = c("s", "1", "0");
        sidecar["restartPolicy"] = json!("Always");
        let p = pod(json!({
            "containers": [c("a", "500m", "0")],
            "initContainers": [sidecar, c("i", "1200m", "0")],
        }));
        // Init phase: 1 (sidecar) + 1.2 = 2.2; running: 0.5 + 1 = 1.5.
        assert_eq!(pod_requests(&p, Counting::Exact).milli_cpu, 2200);
    }

    #[test]
    fn limits_stand_in_for_requests_and_overhead_adds() {
        let p = pod(json!({
            "containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
            "overhead": {"cpu": "100m"},
        }));
        assert_eq!(
            pod_requests(&p, Counting::Exact),
            Resources {
                milli_cpu: 1100,
                memory: 1 << 30
            }
        );
    }

    #[test]
    fn scoring_counts_best_effort_containers_at_upstreams_defaults() {
        let p = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        assert_eq!(pod_requests(&p, Counting::Exact), Resources::default());
        assert_eq!(
            pod_requests(&p, Counting::NonZero),
            Resources {
                milli_cpu: DEFAULT_MILLI_CPU,
                memory: DEFAULT_MEMORY
            }
        );
    }
}
