//! `as=Table` responses, so `kubectl get` shows real columns: upstream's printer columns for
//! every built-in type we serve (priority 1 columns appear with `-o wide`), and the default
//! convertor's Name and Created At for anything else.

use serde_json::{Value, json};

use super::{meta, resources::ResourceType, status::ApiError};

/// What each row carries besides its cells (the `includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    /// A `PartialObjectMetadata`, upstream's default.
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("Metadata") => Ok(Self::Metadata),
            Some("None") => Ok(Self::None),
            Some("Object") => Ok(Self::Object),
            Some(other) => Err(ApiError::bad_request(format!(
                "includeObject must be one of None, Object or Metadata, not {other:?}"
            ))),
        }
    }
}

/// How to build a Table: its meta.k8s.io version and what rows carry.
#[derive(Debug, Clone, Copy)]
pub struct TableOptions {
    pub version: &'static str,
    pub include: IncludeObject,
}

struct Column {
    name: &'static str,
    ty: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    priority: u8,
    cell: fn(&Value) -> Value,
}

const fn col(name: &'static str, ty: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        ty,
        priority: 0,
        cell,
    }
}

const fn wide(name: &'static str, ty: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        ty,
        priority: 1,
        cell,
    }
}

fn name(o: &Value) -> Value {
    o["metadata"]["name"].clone()
}

pub fn age(o: &Value) -> Value {
    since(&o["metadata"]["creationTimestamp"])
}

/// Time since an RFC 3339 timestamp, in kubectl's short form (`5s`, `3m`, `2h`, `4d`).
fn since(ts: &Value) -> Value {
    let Some(ts) = ts.as_str() else {
        return json!("<unknown>");
    };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return json!("<unknown>");
    };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    json!(match secs {
        s if s < 120 => format!("{}s", s.max(0)),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    })
}

fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

/// An IntOrString as upstream prints it, or `N/A` when unset.
fn int_or_na(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.to_string()),
        Value::String(s) => json!(s),
        _ => json!("N/A"),
    }
}

fn or_none(v: &Value) -> Value {
    match v.as_str() {
        Some(s) if !s.is_empty() => json!(s),
        _ => json!("<none>"),
    }
}

/// `values` joined with commas, or `<none>`.
fn joined(values: impl IntoIterator<Item = String>) -> Value {
    let v: Vec<String> = values.into_iter().collect();
    json!(if v.is_empty() { "<none>".to_owned() } else { v.join(",") })
}

fn strings(v: &Value) -> impl Iterator<Item = String> + '_ {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
}

fn map_pairs(v: &Value) -> Value {
    joined(
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())),
    )
}

fn containers(o: &Value) -> Value {
    joined(
        o["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned)),
    )
}

fn images(o: &Value) -> Value {
    joined(
        o["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["image"].as_str().map(str::to_owned)),
    )
}

fn label_selector(o: &Value) -> Value {
    let sel = &o["spec"]["selector"];
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<String> = strings(&e["values"]).collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    joined(parts)
}

/// `Kind/name` of a binding's roleRef.
fn role_ref(o: &Value) -> Value {
    json!(format!(
        "{}/{}",
        o["roleRef"]["kind"].as_str().unwrap_or_default(),
        o["roleRef"]["name"].as_str().unwrap_or_default()
    ))
}

fn subjects_of(o: &Value, kind: &str) -> Value {
    joined(
        o["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] == kind)
            .map(|s| match (kind, s["namespace"].as_str()) {
                ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s["name"].as_str().unwrap_or_default()),
                _ => s["name"].as_str().unwrap_or_default().to_owned(),
            }),
    )
}

fn created_at(o: &Value) -> Value {
    o["metadata"]["creationTimestamp"].clone()
}

fn pod_columns() -> Vec<Column> {
    vec![
        col("Ready", "string", |o| {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = o["status"]["containerStatuses"]
                .as_array()
                .map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            json!(format!("{ready}/{total}"))
        }),
        col("Status", "string", |o| {
            if o["metadata"]["deletionTimestamp"].is_string() {
                json!("Terminating")
            } else {
                o["status"]["phase"].clone()
            }
        }),
        col("Restarts", "string", |o| {
            json!(
                o["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum::<i64>())
            )
        }),
        col("Age", "string", age),
        wide("IP", "string", |o| or_none(&o["status"]["podIP"])),
        wide("Node", "string", |o| or_none(&o["spec"]["nodeName"])),
        wide("Nominated Node", "string", |o| {
            or_none(&o["status"]["nominatedNodeName"])
        }),
        wide("Readiness Gates", "string", |o| {
            let gates = o["spec"]["readinessGates"].as_array().map_or(0, Vec::len);
            if gates == 0 {
                return json!("<none>");
            }
            let met = o["spec"]["readinessGates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| {
                    o["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                })
                .count();
            json!(format!("{met}/{gates}"))
        }),
    ]
}

fn service_columns() -> Vec<Column> {
    vec![
        col("Type", "string", |o| o["spec"]["type"].clone()),
        col("Cluster-IP", "string", |o| or_none(&o["spec"]["clusterIP"])),
        col("External-IP", "string", |o| {
            let mut ips: Vec<String> = strings(&o["spec"]["externalIPs"]).collect();
            ips.extend(
                o["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["ip"].as_str().map(str::to_owned)),
            );
            if ips.is_empty() && o["spec"]["type"] == "LoadBalancer" {
                json!("<pending>")
            } else {
                joined(ips)
            }
        }),
        col("Port(s)", "string", |o| {
            joined(o["spec"]["ports"].as_array().into_iter().flatten().map(|p| {
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                match p["nodePort"].as_i64() {
                    Some(np) => format!("{}:{np}/{proto}", p["port"]),
                    None => format!("{}/{proto}", p["port"]),
                }
            }))
        }),
        col("Age", "string", age),
        wide("Selector", "string", |o| map_pairs(&o["spec"]["selector"])),
    ]
}

/// Upstream prints a revision's controller as `statefulset.apps/web`, `<none>` without one.
fn controller_of(o: &Value) -> Value {
    let owner = o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["controller"] == true);
    let Some(owner) = owner else {
        return json!("<none>");
    };
    let kind = owner["kind"].as_str().unwrap_or_default().to_lowercase();
    let group = owner["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map(|(g, _)| g)
        .unwrap_or_default();
    let name = owner["name"].as_str().unwrap_or_default();
    if group.is_empty() {
        json!(format!("{kind}/{name}"))
    } else {
        json!(format!("{kind}.{group}/{name}"))
    }
}

fn workload_tail() -> [Column; 3] {
    [
        wide("Containers", "string", containers),
        wide("Images", "string", images),
        wide("Selector", "string", label_selector),
    ]
}

fn node_address(o: &Value, kind: &str) -> Value {
    or_none(
        o["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == kind)
            .map_or(&Value::Null, |a| &a["address"]),
    )
}

fn event_columns() -> Vec<Column> {
    // core/v1 and events.k8s.io/v1 name the same things differently; upstream prints both
    // through the internal type.
    fn first(o: &Value, fields: &[&str]) -> Value {
        fields
            .iter()
            .map(|f| &o[f])
            .find(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
            .unwrap_or(Value::Null)
    }
    vec![
        col("Last Seen", "string", |o| {
            let ts = first(o, &["lastTimestamp", "eventTime"]);
            let ts = if ts.is_null() {
                first(&o["series"], &["lastObservedTime"])
            } else {
                ts
            };
            if ts.is_null() { age(o) } else { since(&ts) }
        }),
        col("Type", "string", |o| o["type"].clone()),
        col("Reason", "string", |o| o["reason"].clone()),
        col("Object", "string", |o| {
            let obj = if o["regarding"].is_object() {
                &o["regarding"]
            } else {
                &o["involvedObject"]
            };
            json!(format!(
                "{}/{}",
                obj["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                obj["name"].as_str().unwrap_or_default()
            ))
        }),
        wide("Subobject", "string", |o| {
            let obj = if o["regarding"].is_object() {
                &o["regarding"]
            } else {
                &o["involvedObject"]
            };
            json!(obj["fieldPath"].as_str().unwrap_or_default())
        }),
        wide("Source", "string", |o| {
            let s = first(&o["source"], &["component"]);
            if s.is_null() {
                first(o, &["reportingController", "reportingComponent"])
            } else {
                s
            }
        }),
        col("Message", "string", |o| first(o, &["message", "note"])),
        wide("First Seen", "string", |o| {
            let ts = first(o, &["firstTimestamp", "eventTime"]);
            if ts.is_null() { age(o) } else { since(&ts) }
        }),
        wide("Count", "string", |o| {
            let n = o["count"]
                .as_i64()
                .or_else(|| o["deprecatedCount"].as_i64())
                .or_else(|| o["series"]["count"].as_i64())
                .unwrap_or(1);
            json!(n)
        }),
        wide("Name", "string", name),
    ]
}

fn binding_columns() -> Vec<Column> {
    vec![
        col("Role", "string", role_ref),
        col("Age", "string", age),
        wide("Users", "string", |o| subjects_of(o, "User")),
        wide("Groups", "string", |o| subjects_of(o, "Group")),
        wide("ServiceAccounts", "string", |o| subjects_of(o, "ServiceAccount")),
    ]
}

/// The columns after Name (Events put Name last, as upstream does).
fn columns(kind: &str) -> Vec<Column> {
    let rest = match kind {
        "Pod" => pod_columns(),
        "Service" => service_columns(),
        "Deployment" => {
            let mut c = vec![
                col("Ready", "string", |o| {
                    json!(format!(
                        "{}/{}",
                        o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        o["spec"]["replicas"].as_i64().unwrap_or(0)
                    ))
                }),
                col("Up-to-date", "integer", |o| int(&o["status"]["updatedReplicas"])),
                col("Available", "integer", |o| int(&o["status"]["availableReplicas"])),
                col("Age", "string", age),
            ];
            c.extend(workload_tail());
            c
        }
        "ReplicaSet" => {
            let mut c = vec![
                col("Desired", "integer", |o| int(&o["spec"]["replicas"])),
                col("Current", "integer", |o| int(&o["status"]["replicas"])),
                col("Ready", "integer", |o| int(&o["status"]["readyReplicas"])),
                col("Age", "string", age),
            ];
            c.extend(workload_tail());
            c
        }
        "DaemonSet" => {
            let mut c = vec![
                col("Desired", "integer", |o| int(&o["status"]["desiredNumberScheduled"])),
                col("Current", "integer", |o| int(&o["status"]["currentNumberScheduled"])),
                col("Ready", "integer", |o| int(&o["status"]["numberReady"])),
                col("Up-to-date", "integer", |o| int(&o["status"]["updatedNumberScheduled"])),
                col("Available", "integer", |o| int(&o["status"]["numberAvailable"])),
                col("Node Selector", "string", |o| {
                    map_pairs(&o["spec"]["template"]["spec"]["nodeSelector"])
                }),
                col("Age", "string", age),
            ];
            c.extend(workload_tail());
            c
        }
        "StatefulSet" => vec![
            col("Ready", "string", |o| {
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                ))
            }),
            col("Age", "string", age),
            wide("Containers", "string", containers),
            wide("Images", "string", images),
        ],
        "ControllerRevision" => vec![
            col("Controller", "string", controller_of),
            col("Revision", "integer", |o| int(&o["revision"])),
            col("Age", "string", age),
        ],
        "Job" => {
            use super::batch::cells::*;
            let mut c = vec![
                col("Status", "string", job_status),
                col("Completions", "string", job_completions),
                col("Duration", "string", job_duration),
                col("Age", "string", age),
            ];
            c.extend(workload_tail());
            c
        }
        "CronJob" => {
            use super::batch::cells::*;
            vec![
                col("Schedule", "string", |o| o["spec"]["schedule"].clone()),
                col("Timezone", "string", cronjob_time_zone),
                col("Suspend", "boolean", cronjob_suspend),
                col("Active", "integer", cronjob_active),
                col("Last Schedule", "string", cronjob_last_schedule),
                col("Age", "string", age),
                wide("Containers", "string", |o| containers(&cronjob_as_job(o))),
                wide("Images", "string", |o| images(&cronjob_as_job(o))),
                wide("Selector", "string", |o| label_selector(&cronjob_as_job(o))),
            ]
        }
        "PodDisruptionBudget" => vec![
            col("Min Available", "string", |o| int_or_na(&o["spec"]["minAvailable"])),
            col("Max Unavailable", "string", |o| int_or_na(&o["spec"]["maxUnavailable"])),
            col("Allowed Disruptions", "integer", |o| {
                int(&o["status"]["disruptionsAllowed"])
            }),
            col("Age", "string", age),
        ],
        "Namespace" => vec![
            col("Status", "string", |o| o["status"]["phase"].clone()),
            col("Age", "string", age),
        ],
        "Node" => vec![
            col("Status", "string", |o| {
                let ready = o["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready");
                let mut status = match ready.map(|c| c["status"].clone()) {
                    Some(s) if s == "True" => "Ready".to_owned(),
                    _ => "NotReady".to_owned(),
                };
                if o["spec"]["unschedulable"] == true {
                    status.push_str(",SchedulingDisabled");
                }
                json!(status)
            }),
            col("Roles", "string", |o| {
                joined(
                    o["metadata"]["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, _)| {
                            k.strip_prefix("node-role.kubernetes.io/")
                                .filter(|r| !r.is_empty())
                                .map(str::to_owned)
                        }),
                )
            }),
            col("Age", "string", age),
            col("Version", "string", |o| {
                o["status"]["nodeInfo"]["kubeletVersion"].clone()
            }),
            wide("Internal-IP", "string", |o| node_address(o, "InternalIP")),
            wide("External-IP", "string", |o| node_address(o, "ExternalIP")),
            wide("OS-Image", "string", |o| or_none(&o["status"]["nodeInfo"]["osImage"])),
            wide("Kernel-Version", "string", |o| {
                or_none(&o["status"]["nodeInfo"]["kernelVersion"])
            }),
            wide("Container-Runtime", "string", |o| {
                or_none(&o["status"]["nodeInfo"]["containerRuntimeVersion"])
            }),
        ],
        "EndpointSlice" => vec![
            col("AddressType", "string", |o| o["addressType"].clone()),
            col("Ports", "string", |o| {
                let ports: Vec<String> = o["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p["port"].to_string())
                    .collect();
                json!(if ports.is_empty() {
                    "<unset>".to_owned()
                } else {
                    ports.join(",")
                })
            }),
            col("Endpoints", "string", |o| {
                let addrs: Vec<String> = o["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| strings(&e["addresses"]).collect::<Vec<_>>())
                    .collect();
                json!(if addrs.is_empty() {
                    "<unset>".to_owned()
                } else {
                    addrs.join(",")
                })
            }),
            col("Age", "string", age),
        ],
        "Endpoints" => vec![
            col("Endpoints", "string", |o| {
                let mut out = Vec::new();
                for subset in o["subsets"].as_array().into_iter().flatten() {
                    for a in subset["addresses"].as_array().into_iter().flatten() {
                        let ip = a["ip"].as_str().unwrap_or_default();
                        let ports: Vec<i64> = subset["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p["port"].as_i64())
                            .collect();
                        if ports.is_empty() {
                            out.push(ip.to_owned());
                        }
                        out.extend(ports.iter().map(|p| format!("{ip}:{p}")));
                    }
                }
                joined(out)
            }),
            col("Age", "string", age),
        ],
        "ConfigMap" => vec![
            col("Data", "integer", |o| {
                json!(o["data"].as_object().map_or(0, |d| d.len()) + o["binaryData"].as_object().map_or(0, |d| d.len()))
            }),
            col("Age", "string", age),
        ],
        "Secret" => vec![
            col("Type", "string", |o| o["type"].clone()),
            col("Data", "integer", |o| {
                json!(o["data"].as_object().map_or(0, |d| d.len()))
            }),
            col("Age", "string", age),
        ],
        "ServiceAccount" => vec![
            col("Secrets", "integer", |o| {
                json!(o["secrets"].as_array().map_or(0, Vec::len))
            }),
            col("Age", "string", age),
        ],
        "Event" => return event_columns(),
        "ResourceQuota" => vec![
            col("Age", "string", age),
            col("Request", "string", super::resourcequota::request_column),
            col("Limit", "string", super::resourcequota::limit_column),
        ],
        "Lease" => vec![
            col("Holder", "string", |o| {
                json!(o["spec"]["holderIdentity"].as_str().unwrap_or_default())
            }),
            col("Age", "string", age),
        ],
        "CertificateSigningRequest" => vec![
            col("Age", "date", age),
            col("SignerName", "string", super::certificates::table::signer_name),
            col("Requestor", "string", super::certificates::table::requestor),
            col(
                "RequestedDuration",
                "string",
                super::certificates::table::requested_duration,
            ),
            col("Condition", "string", super::certificates::table::condition),
        ],
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => storage_columns(kind),
        "Role" | "ClusterRole" => vec![col("Created At", "date", created_at)],
        "RoleBinding" | "ClusterRoleBinding" => binding_columns(),
        "APIService" => vec![
            col("Service", "string", |o| {
                let svc = &o["spec"]["service"];
                if svc.is_object() {
                    json!(format!(
                        "{}/{}",
                        svc["namespace"].as_str().unwrap_or_default(),
                        svc["name"].as_str().unwrap_or_default()
                    ))
                } else {
                    json!("Local")
                }
            }),
            col("Available", "string", |o| {
                let cond = o["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Available");
                match cond {
                    Some(c) if c["status"] == "True" => json!("True"),
                    Some(c) => json!(format!(
                        "{} ({})",
                        c["status"].as_str().unwrap_or("Unknown"),
                        c["reason"].as_str().unwrap_or_default()
                    )),
                    None => json!("Unknown"),
                }
            }),
            col("Age", "string", age),
        ],
        // Upstream's default table convertor, for types without printer columns.
        _ => vec![col("Created At", "date", created_at)],
    };
    let name_cell = if kind == "StorageClass" {
        storage_class_name
    } else {
        name
    };
    let mut cols = vec![col("Name", "string", name_cell)];
    cols.extend(rest);
    cols
}

/// kubectl's short access modes (`RWO,ROX`), in the order the object lists them.
fn access_modes(modes: &Value) -> Value {
    let short: Vec<&str> = modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m.as_str()? {
            "ReadWriteOnce" => Some("RWO"),
            "ReadOnlyMany" => Some("ROX"),
            "ReadWriteMany" => Some("RWX"),
            "ReadWriteOncePod" => Some("RWOP"),
            _ => None,
        })
        .collect();
    json!(short.join(","))
}

fn text(v: &Value) -> Value {
    json!(v.as_str().unwrap_or_default())
}

fn unset(v: &Value) -> Value {
    json!(v.as_str().filter(|s| !s.is_empty()).unwrap_or("<unset>"))
}

/// The default class is named `local-path (default)`, as upstream's printer does.
fn storage_class_name(o: &Value) -> Value {
    let n = o["metadata"]["name"].as_str().unwrap_or_default();
    json!(if super::volumes::is_default_class(o) {
        format!("{n} (default)")
    } else {
        n.to_owned()
    })
}

fn storage_columns(kind: &str) -> Vec<Column> {
    match kind {
        "PersistentVolume" => vec![
            col("Capacity", "string", |o| text(&o["spec"]["capacity"]["storage"])),
            col("Access Modes", "string", |o| access_modes(&o["spec"]["accessModes"])),
            col("Reclaim Policy", "string", |o| {
                text(&o["spec"]["persistentVolumeReclaimPolicy"])
            }),
            col("Status", "string", |o| text(&o["status"]["phase"])),
            col("Claim", "string", |o| {
                let c = &o["spec"]["claimRef"];
                json!(match (c["namespace"].as_str(), c["name"].as_str()) {
                    (Some(ns), Some(n)) => format!("{ns}/{n}"),
                    _ => String::new(),
                })
            }),
            col("StorageClass", "string", |o| text(&o["spec"]["storageClassName"])),
            col("VolumeAttributesClass", "string", |o| {
                unset(&o["spec"]["volumeAttributesClassName"])
            }),
            col("Reason", "string", |o| text(&o["status"]["reason"])),
            col("Age", "string", age),
            wide("VolumeMode", "string", |o| text(&o["spec"]["volumeMode"])),
        ],
        "PersistentVolumeClaim" => vec![
            col("Status", "string", |o| text(&o["status"]["phase"])),
            col("Volume", "string", |o| text(&o["spec"]["volumeName"])),
            col("Capacity", "string", |o| text(&o["status"]["capacity"]["storage"])),
            col("Access Modes", "string", |o| access_modes(&o["status"]["accessModes"])),
            col("StorageClass", "string", |o| text(&o["spec"]["storageClassName"])),
            col("VolumeAttributesClass", "string", |o| {
                unset(&o["spec"]["volumeAttributesClassName"])
            }),
            col("Age", "string", age),
            wide("VolumeMode", "string", |o| text(&o["spec"]["volumeMode"])),
        ],
        _ => vec![
            col("Provisioner", "string", |o| text(&o["provisioner"])),
            col("ReclaimPolicy", "string", |o| text(&o["reclaimPolicy"])),
            col("VolumeBindingMode", "string", |o| text(&o["volumeBindingMode"])),
            col("AllowVolumeExpansion", "string", |o| {
                json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false).to_string())
            }),
            col("Age", "string", age),
        ],
    }
}

/// A `meta.k8s.io Table` of `items`, each row carrying what `opts.include` asks for.
pub fn table(
    rt: &ResourceType,
    items: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    opts: TableOptions,
) -> Value {
    if let Some(ct) = rt.custom {
        let (defs, paths) = super::crd::printer::columns(ct);
        let cells = |o: &Value| super::crd::printer::cells(&paths, o);
        return assemble(defs, &cells, items, resource_version, continue_token, opts);
    }
    let cols = columns(rt.kind);
    let column_definitions: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": c.priority,
            })
        })
        .collect();
    let cells = |o: &Value| cols.iter().map(|c| (c.cell)(o)).collect::<Vec<_>>();
    assemble(
        column_definitions,
        &cells,
        items,
        resource_version,
        continue_token,
        opts,
    )
}

/// The Table around its columns: one row per item, carrying what `includeObject` asks for.
fn assemble(
    column_definitions: Vec<Value>,
    cells: &dyn Fn(&Value) -> Vec<Value>,
    items: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    opts: TableOptions,
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match opts.include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = meta::partial_object_metadata(o, opts.version),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{}", opts.version),
        "metadata": metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{RESOURCES, find};

    const V1_METADATA: TableOptions = TableOptions {
        version: "v1",
        include: IncludeObject::Metadata,
    };

    #[test]
    fn service_rows_show_ip_and_ports() {
        let rt = find("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}], "selector": {"app": "web"}}});
        let t = table(rt, &[svc], "5", None, V1_METADATA);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[2], "10.96.0.5");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[6], "app=web");
        assert_eq!(t["columnDefinitions"][6]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn include_object_chooses_what_rows_carry() {
        let rt = find("", "v1", "configmaps").unwrap();
        let cm =
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let none = table(
            rt,
            std::slice::from_ref(&cm),
            "1",
            None,
            TableOptions {
                version: "v1beta1",
                include: IncludeObject::None,
            },
        );
        assert!(none["rows"][0].get("object").is_none());
        assert_eq!(none["apiVersion"], "meta.k8s.io/v1beta1");
        assert_eq!(none["rows"][0]["cells"][1], 2);
        let full = table(
            rt,
            std::slice::from_ref(&cm),
            "1",
            None,
            TableOptions {
                version: "v1",
                include: IncludeObject::Object,
            },
        );
        assert_eq!(full["rows"][0]["object"], cm);
        assert!(IncludeObject::from_query(Some("Everything")).is_err());
    }

    #[test]
    fn every_served_type_has_a_name_column_and_cells_for_each() {
        for rt in RESOURCES {
            let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2020-01-01T00:00:00Z"}});
            let t = table(rt, &[obj], "1", None, V1_METADATA);
            let defs = t["columnDefinitions"].as_array().unwrap();
            assert!(defs.iter().any(|d| d["name"] == "Name"), "{}", rt.kind);
            assert_eq!(
                defs.len(),
                t["rows"][0]["cells"].as_array().unwrap().len(),
                "{}",
                rt.kind
            );
        }
    }

    #[test]
    fn bindings_name_their_role_and_subjects() {
        let rt = find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        let rb = json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}, {"kind": "User", "name": "alice"}]});
        let cells = table(rt, &[rb], "1", None, V1_METADATA)["rows"][0]["cells"].clone();
        assert_eq!(cells[1], "Role/r");
        assert_eq!(cells[3], "alice");
        assert_eq!(cells[5], "ns/sa");
    }
}
