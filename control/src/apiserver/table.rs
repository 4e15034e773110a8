//! `as=Table` responses, so `kubectl get` shows real columns.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// True when the client asked for a Table (kubectl's Accept header names it first).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

struct Column {
    name: &'static str,
    ty: &'static str,
    cell: fn(&Value) -> Value,
}

fn name(o: &Value) -> Value {
    o["metadata"]["name"].clone()
}

pub fn age(o: &Value) -> Value {
    let Some(ts) = o["metadata"]["creationTimestamp"].as_str() else {
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

fn columns(kind: &str) -> Vec<Column> {
    let mut cols = vec![Column {
        name: "Name",
        ty: "string",
        cell: name,
    }];
    match kind {
        "Pod" => cols.extend([
            Column {
                name: "Ready",
                ty: "string",
                cell: |o| {
                    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                    let ready = o["status"]["containerStatuses"]
                        .as_array()
                        .map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
                    json!(format!("{ready}/{total}"))
                },
            },
            Column {
                name: "Status",
                ty: "string",
                cell: |o| {
                    if o["metadata"]["deletionTimestamp"].is_string() {
                        json!("Terminating")
                    } else {
                        o["status"]["phase"].clone()
                    }
                },
            },
            Column {
                name: "Restarts",
                ty: "string",
                cell: |o| {
                    json!(
                        o["status"]["containerStatuses"]
                            .as_array()
                            .map_or(0, |s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum::<i64>())
                    )
                },
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
            Column {
                name: "IP",
                ty: "string",
                cell: |o| or_none(&o["status"]["podIP"]),
            },
            Column {
                name: "Node",
                ty: "string",
                cell: |o| or_none(&o["spec"]["nodeName"]),
            },
        ]),
        "Service" => cols.extend([
            Column {
                name: "Type",
                ty: "string",
                cell: |o| o["spec"]["type"].clone(),
            },
            Column {
                name: "Cluster-IP",
                ty: "string",
                cell: |o| or_none(&o["spec"]["clusterIP"]),
            },
            Column {
                name: "External-IP",
                ty: "string",
                cell: |o| {
                    let mut ips: Vec<String> = o["spec"]["externalIPs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    ips.extend(
                        o["status"]["loadBalancer"]["ingress"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|i| i["ip"].as_str().map(str::to_owned)),
                    );
                    if ips.is_empty() {
                        json!(if o["spec"]["type"] == "LoadBalancer" {
                            "<pending>"
                        } else {
                            "<none>"
                        })
                    } else {
                        json!(ips.join(","))
                    }
                },
            },
            Column {
                name: "Port(s)",
                ty: "string",
                cell: |o| {
                    let ports: Vec<String> = o["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                                None => format!("{}/{proto}", p["port"]),
                            }
                        })
                        .collect();
                    json!(if ports.is_empty() {
                        "<none>".to_owned()
                    } else {
                        ports.join(",")
                    })
                },
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
            Column {
                name: "Selector",
                ty: "string",
                cell: |o| {
                    let sel: Vec<String> = o["spec"]["selector"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect();
                    json!(if sel.is_empty() {
                        "<none>".to_owned()
                    } else {
                        sel.join(",")
                    })
                },
            },
        ]),
        "Deployment" => cols.extend([
            Column {
                name: "Ready",
                ty: "string",
                cell: |o| {
                    json!(format!(
                        "{}/{}",
                        o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        o["spec"]["replicas"].as_i64().unwrap_or(0)
                    ))
                },
            },
            Column {
                name: "Up-to-date",
                ty: "integer",
                cell: |o| json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Available",
                ty: "integer",
                cell: |o| json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
        ]),
        "ReplicaSet" => cols.extend([
            Column {
                name: "Desired",
                ty: "integer",
                cell: |o| json!(o["spec"]["replicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Current",
                ty: "integer",
                cell: |o| json!(o["status"]["replicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Ready",
                ty: "integer",
                cell: |o| json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
        ]),
        "Namespace" => cols.extend([
            Column {
                name: "Status",
                ty: "string",
                cell: |o| o["status"]["phase"].clone(),
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
        ]),
        "Node" => cols.extend([
            Column {
                name: "Status",
                ty: "string",
                cell: |o| {
                    let ready = o["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["type"] == "Ready");
                    json!(match ready.map(|c| c["status"].clone()) {
                        Some(s) if s == "True" => "Ready",
                        _ => "NotReady",
                    })
                },
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
        ]),
        "EndpointSlice" => cols.extend([
            Column {
                name: "AddressType",
                ty: "string",
                cell: |o| o["addressType"].clone(),
            },
            Column {
                name: "Ports",
                ty: "string",
                cell: |o| {
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
                },
            },
            Column {
                name: "Endpoints",
                ty: "string",
                cell: |o| {
                    let addrs: Vec<String> = o["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    json!(if addrs.is_empty() {
                        "<unset>".to_owned()
                    } else {
                        addrs.join(",")
                    })
                },
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
        ]),
        "ConfigMap" => cols.extend([
            Column {
                name: "Data",
                ty: "integer",
                cell: |o| {
                    json!(
                        o["data"].as_object().map_or(0, |d| d.len())
                            + o["binaryData"].as_object().map_or(0, |d| d.len())
                    )
                },
            },
            Column {
                name: "Age",
                ty: "string",
                cell: age,
            },
        ]),
        _ => cols.push(Column {
            name: "Age",
            ty: "string",
            cell: age,
        }),
    }
    cols
}

fn or_none(v: &Value) -> Value {
    match v.as_str() {
        Some(s) if !s.is_empty() => json!(s),
        _ => json!("<none>"),
    }
}

/// A `meta.k8s.io/v1 Table` of `items`, each row carrying the object's metadata.
pub fn table(rt: &ResourceType, items: &[Value], resource_version: &str, continue_token: Option<&str>) -> Value {
    if let Some(ct) = rt.custom {
        return super::crd::printer::table(ct, items, resource_version, continue_token);
    }
    let cols = columns(rt.kind);
    let column_definitions: Vec<Value> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": c.name, "type": c.ty, "format": if i == 0 { "name" } else { "" }, "description": "", "priority": 0}))
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": cols.iter().map(|c| (c.cell)(o)).collect::<Vec<_>>(),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"].clone(),
                },
            })
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_header_selects_tables() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn service_rows_show_ip_and_ports() {
        let rt = crate::apiserver::resources::find("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}], "selector": {"app": "web"}}});
        let t = table(rt, &[svc], "5", None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[2], "10.96.0.5");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[6], "app=web");
    }
}
