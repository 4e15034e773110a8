use serde_json::{Value, json};

use super::*;

fn run(kind: &str, current: &Value, patch: &Value, t: PatchType) -> Result<Value, PatchError> {
    apply_patch(kind, current, patch.to_string().as_bytes(), t)
}

/// (name, kind, current, patch, expected)
type Case = (&'static str, &'static str, Value, Value, Value);

fn check_table(t: PatchType, cases: Vec<Case>) {
    for (name, kind, current, patch, want) in cases {
        match run(kind, &current, &patch, t) {
            Ok(got) => assert_eq!(got, want, "{name}: got\n{got:#}\nwant\n{want:#}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

#[test]
fn content_types() {
    let cases = [
        ("application/json-patch+json", Some(PatchType::JsonPatch)),
        ("application/merge-patch+json", Some(PatchType::MergePatch)),
        (
            "application/strategic-merge-patch+json",
            Some(PatchType::StrategicMergePatch),
        ),
        ("application/apply-patch+yaml", Some(PatchType::Apply)),
        ("application/apply-patch+yaml; charset=utf-8", Some(PatchType::Apply)),
        (" Application/Merge-Patch+JSON ", Some(PatchType::MergePatch)),
        ("application/apply-patch+cbor", None),
        ("application/json", None),
        ("application/yaml", None),
        ("", None),
    ];
    for (ct, want) in cases {
        assert_eq!(PatchType::from_content_type(ct), want, "{ct:?}");
        if let Some(t) = want {
            assert_eq!(PatchType::from_content_type(t.content_type()), want);
        }
    }
}

#[test]
fn json_patch_operations() {
    let current = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"list": [1, 2]}});
    let cases: Vec<Case> = vec![
        (
            "add, replace, remove",
            "Pod",
            current.clone(),
            json!([
                {"op": "add", "path": "/metadata/labels/y", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/x", "value": "9"},
                {"op": "remove", "path": "/spec/list/0"},
            ]),
            json!({"metadata": {"name": "a", "labels": {"x": "9", "y": "2"}}, "spec": {"list": [2]}}),
        ),
        (
            "append, move, copy",
            "Pod",
            current.clone(),
            json!([
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "copy", "from": "/metadata/labels", "path": "/spec/copied"},
                {"op": "move", "from": "/spec/list", "path": "/spec/moved"},
            ]),
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"moved": [1, 2, 3], "copied": {"x": "1"}}}),
        ),
        (
            "passing tests, escaped pointer",
            "Pod",
            json!({"metadata": {"annotations": {"a/b": "c"}}}),
            json!([
                {"op": "test", "path": "/metadata/annotations/a~1b", "value": "c"},
                {"op": "test", "path": "/metadata/annotations", "value": {"a/b": "c"}},
                {"op": "remove", "path": "/metadata/annotations/a~1b"},
            ]),
            json!({"metadata": {"annotations": {}}}),
        ),
        (
            "kube-rs adds the first finalizer after testing for null",
            "Widget",
            json!({"metadata": {"name": "w"}}),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]},
            ]),
            json!({"metadata": {"name": "w", "finalizers": ["example.com/cleanup"]}}),
        ),
        (
            "kube-rs removes its finalizer after testing its index",
            "Widget",
            json!({"metadata": {"name": "w", "finalizers": ["other", "example.com/cleanup"]}}),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": "example.com/cleanup"},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ]),
            json!({"metadata": {"name": "w", "finalizers": ["other"]}}),
        ),
        ("empty patch", "Pod", current.clone(), json!([]), current.clone()),
    ];
    check_table(PatchType::JsonPatch, cases);
}

#[test]
fn json_patch_failures() {
    let current = json!({"metadata": {"name": "w", "finalizers": ["a"]}});
    let err = |patch: Value| run("Widget", &current, &patch, PatchType::JsonPatch).unwrap_err();

    let e = err(
        json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "b"}, {"op": "remove", "path": "/metadata/finalizers/0"}]),
    );
    assert_eq!(
        e,
        PatchError::TestFailed {
            path: "/metadata/finalizers/0".into()
        }
    );
    assert_eq!(e.http_status(), 422);
    assert!(e.to_string().contains("/metadata/finalizers/0"), "{e}");
    // Someone else added finalizers in between: the null test must fail.
    let e = err(json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]));
    assert_eq!(
        e,
        PatchError::TestFailed {
            path: "/metadata/finalizers".into()
        }
    );
    // Absent members only pass a null test when their parent object exists.
    let e = err(json!([{"op": "test", "path": "/status/phase", "value": null}]));
    assert_eq!(
        e,
        PatchError::TestFailed {
            path: "/status/phase".into()
        }
    );
    let e = err(json!([{"op": "test", "path": "/metadata/finalizers/5", "value": "a"}]));
    assert!(matches!(e, PatchError::TestFailed { .. }), "{e:?}");

    let e = err(json!([{"op": "add", "path": "/metadata/x", "value": "1"}, {"op": "remove", "path": "/spec/x"}]));
    assert!(
        matches!(&e, PatchError::JsonPatch { index: 1, op: "remove", path, .. } if path == "/spec/x"),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 422);
    let e = err(json!([{"op": "replace", "path": "/metadata/finalizers/3", "value": "x"}]));
    assert!(
        matches!(
            e,
            PatchError::JsonPatch {
                index: 0,
                op: "replace",
                ..
            }
        ),
        "{e:?}"
    );

    for body in [
        json!({"op": "add"}),
        json!([{"op": "frobnicate", "path": "/a"}]),
        json!([{"op": "add", "path": "/a"}]),
        json!("x"),
    ] {
        let e = err(body.clone());
        assert!(matches!(e, PatchError::Decode { format: "json", .. }), "{body}: {e:?}");
        assert_eq!(e.http_status(), 400);
    }
    let e = apply_patch("Pod", &current, b"[{", PatchType::JsonPatch).unwrap_err();
    assert!(matches!(e, PatchError::Decode { .. }), "{e:?}");
}

#[test]
fn merge_patch() {
    let deploy = json!({
        "metadata": {"name": "web", "labels": {"app": "web", "old": "x"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "b"}]}}},
    });
    let cases: Vec<Case> = vec![
        (
            "scale",
            "Deployment",
            deploy.clone(),
            json!({"spec": {"replicas": 3}}),
            json!({
                "metadata": {"name": "web", "labels": {"app": "web", "old": "x"}},
                "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "b"}]}}},
            }),
        ),
        (
            "null deletes, maps merge",
            "Deployment",
            deploy.clone(),
            json!({"metadata": {"labels": {"old": null, "new": "y"}, "annotations": {"a": "b"}}}),
            json!({
                "metadata": {"name": "web", "labels": {"app": "web", "new": "y"}, "annotations": {"a": "b"}},
                "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "b"}]}}},
            }),
        ),
        (
            "lists replace, even with merge keys",
            "Deployment",
            deploy.clone(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "nginx:2"}]}}}}),
            json!({
                "metadata": {"name": "web", "labels": {"app": "web", "old": "x"}},
                "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "nginx:2"}]}}},
            }),
        ),
        (
            "finalizers replace",
            "Widget",
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["c"]}}),
            json!({"metadata": {"finalizers": ["c"]}}),
        ),
        (
            "onto null",
            "Widget",
            Value::Null,
            json!({"a": {"b": null, "c": 1}}),
            json!({"a": {"c": 1}}),
        ),
        ("empty patch", "Widget", json!({"a": 1}), json!({}), json!({"a": 1})),
        (
            "nested null on missing map",
            "Widget",
            json!({"a": 1}),
            json!({"b": {"c": null}}),
            json!({"a": 1, "b": {}}),
        ),
        (
            "scalar replaces map",
            "Widget",
            json!({"a": {"b": 1}}),
            json!({"a": "s"}),
            json!({"a": "s"}),
        ),
        (
            "directives are plain keys",
            "Pod",
            json!({}),
            json!({"$patch": "delete"}),
            json!({"$patch": "delete"}),
        ),
    ];
    check_table(PatchType::MergePatch, cases);

    for (body, found) in [
        (json!([1]), "a list"),
        (json!(null), "null"),
        (json!("x"), "a string"),
        (json!(3), "a number"),
    ] {
        let e = run("Pod", &deploy, &body, PatchType::MergePatch).unwrap_err();
        assert_eq!(e, PatchError::NotAnObject { format: "merge", found });
        assert_eq!(e.http_status(), 400);
    }
    let e = apply_patch("Pod", &deploy, b"{\"a\":", PatchType::MergePatch).unwrap_err();
    assert!(
        e.to_string().starts_with("unable to decode the merge patch body"),
        "{e}"
    );
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "default",
            "labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"old\":true}"},
            "finalizers": ["a", "b"],
            "ownerReferences": [{"uid": "u1", "kind": "ReplicaSet", "name": "rs1"}],
        },
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "nginx:1",
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "1"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/etc/cfg"}],
                },
                {"name": "b", "image": "sidecar:1"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
            "tolerations": [{"key": "k1", "operator": "Exists"}],
            "nodeName": "n1",
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
        },
    })
}

/// `pod()` with `f` applied, for expectations that differ in a few places.
fn pod_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut p = pod();
    f(&mut p);
    p
}

#[test]
fn strategic_merge_pod() {
    let cases: Vec<Case> = vec![
        (
            "kubectl apply, second time: setElementOrder and a changed image",
            "Pod",
            pod(),
            json!({
                "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}"}},
                "spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [{"image": "nginx:2", "name": "a"}]},
            }),
            pod_with(|p| {
                p["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
                    json!("{\"new\":true}");
                p["spec"]["containers"][0]["image"] = json!("nginx:2");
            }),
        ),
        (
            "setElementOrder reorders, unlisted elements go last",
            "Pod",
            pod(),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "gone"}], "containers": [{"name": "b", "image": "sidecar:2"}]}}),
            pod_with(|p| {
                let c = p["spec"]["containers"].as_array_mut().unwrap();
                c.swap(0, 1);
                c[0]["image"] = json!("sidecar:2");
            }),
        ),
        (
            "new container appended, nulls in it dropped",
            "Pod",
            pod(),
            json!({"spec": {"containers": [{"name": "c", "image": "c:1", "resources": null, "env": [{"name": "Z", "value": "z", "valueFrom": null}]}]}}),
            pod_with(|p| {
                p["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "c", "image": "c:1", "env": [{"name": "Z", "value": "z"}]}));
            }),
        ),
        (
            "delete a container",
            "Pod",
            pod(),
            json!({"spec": {"containers": [{"$patch": "delete", "name": "b"}]}}),
            pod_with(|p| {
                p["spec"]["containers"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "deleting an absent element is a no-op",
            "Pod",
            pod(),
            json!({"spec": {"containers": [{"$patch": "delete", "name": "zzz"}]}}),
            pod(),
        ),
        (
            "env, ports, volumeMounts merge by their keys; env order directive",
            "Pod",
            pod(),
            json!({"spec": {"containers": [{
                "name": "a",
                "$setElementOrder/env": [{"name": "Z"}, {"name": "X"}, {"name": "Y"}],
                "env": [{"name": "X", "value": "2"}, {"name": "Z", "value": "3"}, {"name": "Y", "$patch": "delete"}],
                "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
                "volumeMounts": [{"mountPath": "/etc/cfg", "$patch": "delete"}, {"mountPath": "/data", "readOnly": true}],
            }]}}),
            pod_with(|p| {
                let c = &mut p["spec"]["containers"][0];
                c["env"] = json!([{"name": "Z", "value": "3"}, {"name": "X", "value": "2"}]);
                c["ports"] = json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}]);
                c["volumeMounts"] = json!([{"name": "data", "mountPath": "/data", "readOnly": true}]);
            }),
        ),
        (
            "tolerations replace",
            "Pod",
            pod(),
            json!({"spec": {"tolerations": [{"key": "k2", "operator": "Exists", "effect": "NoSchedule"}]}}),
            pod_with(|p| {
                p["spec"]["tolerations"] = json!([{"key": "k2", "operator": "Exists", "effect": "NoSchedule"}])
            }),
        ),
        (
            "volumes merge by name, $retainKeys switches the source",
            "Pod",
            pod(),
            json!({"spec": {"volumes": [{"$retainKeys": ["name", "secret"], "name": "data", "secret": {"secretName": "s"}, "emptyDir": null}]}}),
            pod_with(|p| p["spec"]["volumes"][0] = json!({"name": "data", "secret": {"secretName": "s"}})),
        ),
        (
            "python client dict patch: labels and an image",
            "Pod",
            pod(),
            json!({"metadata": {"labels": {"app": null, "tier": "fe"}}, "spec": {"containers": [{"name": "b", "image": "sidecar:9"}]}}),
            pod_with(|p| {
                p["metadata"]["labels"] = json!({"tier": "fe"});
                p["spec"]["containers"][1]["image"] = json!("sidecar:9");
            }),
        ),
        (
            "pod status condition update (kubelet)",
            "Pod",
            pod(),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}, {"type": "ContainersReady", "status": "True"}]}}),
            pod_with(|p| {
                p["status"]["conditions"] = json!([
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"},
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                ]);
            }),
        ),
        (
            "$setElementOrder on status conditions (kubelet's status manager)",
            "Pod",
            pod(),
            json!({"status": {
                "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }}),
            pod_with(|p| {
                p["status"]["conditions"] =
                    json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}])
            }),
        ),
        (
            "finalizers are a set",
            "Pod",
            pod(),
            json!({"metadata": {"finalizers": ["c", "a"]}}),
            pod_with(|p| p["metadata"]["finalizers"] = json!(["a", "b", "c"])),
        ),
        (
            "kubectl removes a finalizer",
            "Pod",
            pod(),
            json!({"metadata": {"$setElementOrder/finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"], "finalizers": ["c"]}}),
            pod_with(|p| p["metadata"]["finalizers"] = json!(["c", "a"])),
        ),
        (
            "$deleteFromPrimitiveList of an absent list is a no-op",
            "Pod",
            pod(),
            json!({"spec": {"$deleteFromPrimitiveList/args": ["x"]}}),
            pod(),
        ),
        (
            "ownerReferences merge by uid",
            "Pod",
            pod(),
            json!({"metadata": {"ownerReferences": [{"uid": "u1", "controller": true}, {"uid": "u2", "kind": "Job", "name": "j"}]}}),
            pod_with(|p| {
                p["metadata"]["ownerReferences"] = json!([
                    {"uid": "u1", "kind": "ReplicaSet", "name": "rs1", "controller": true},
                    {"uid": "u2", "kind": "Job", "name": "j"},
                ]);
            }),
        ),
        (
            "list $patch: replace",
            "Pod",
            pod(),
            json!({"spec": {"containers": [{"name": "z", "image": "z"}, {"$patch": "replace"}]}}),
            pod_with(|p| p["spec"]["containers"] = json!([{"name": "z", "image": "z"}])),
        ),
        (
            "map $patch: replace",
            "Pod",
            pod(),
            json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
            pod_with(|p| p["metadata"]["labels"] = json!({"only": "this"})),
        ),
        (
            "map $patch: delete",
            "Pod",
            pod(),
            json!({"metadata": {"annotations": {"$patch": "delete"}}, "status": {"$patch": "delete"}}),
            pod_with(|p| {
                p["metadata"].as_object_mut().unwrap().remove("annotations");
                p.as_object_mut().unwrap().remove("status");
            }),
        ),
        (
            "ephemeral container added (kubectl debug)",
            "Pod",
            pod(),
            json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox", "targetContainerName": "a"}]}}),
            pod_with(|p| {
                p["spec"]["ephemeralContainers"] =
                    json!([{"name": "debugger", "image": "busybox", "targetContainerName": "a"}])
            }),
        ),
        (
            "type mismatch: the patch wins",
            "Pod",
            pod(),
            json!({"spec": {"nodeName": {"odd": true}, "volumes": "none"}}),
            pod_with(|p| {
                p["spec"]["nodeName"] = json!({"odd": true});
                p["spec"]["volumes"] = json!("none");
            }),
        ),
    ];
    check_table(PatchType::StrategicMergePatch, cases);
}

#[test]
fn strategic_merge_other_kinds() {
    let deploy = json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "b:1"}],
                    "imagePullSecrets": [{"name": "reg"}],
                    "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a"]}],
                },
            },
        },
        "status": {"conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True"}]},
    });
    let node = json!({
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.0.0/24"], "taints": [{"key": "a", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}, {"type": "MemoryPressure", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}, {"type": "Hostname", "address": "n1"}],
        },
    });
    let svc = json!({
        "metadata": {"name": "s"},
        "spec": {"selector": {"app": "web", "tier": "fe"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "https", "port": 443}]},
    });
    let cases: Vec<Case> = vec![
        (
            "scale",
            "Deployment",
            deploy.clone(),
            json!({"spec": {"replicas": 5}}),
            {
                let mut d = deploy.clone();
                d["spec"]["replicas"] = json!(5);
                d
            },
        ),
        (
            "kubectl set image / rollout restart",
            "Deployment",
            deploy.clone(),
            json!({"spec": {"template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}},
                "spec": {"containers": [{"name": "b", "image": "b:2"}]},
            }}}),
            {
                let mut d = deploy.clone();
                d["spec"]["template"]["metadata"]["annotations"] =
                    json!({"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"});
                d["spec"]["template"]["spec"]["containers"][1]["image"] = json!("b:2");
                d
            },
        ),
        (
            "template env, imagePullSecrets and hostAliases merge",
            "Deployment",
            deploy.clone(),
            json!({"spec": {"template": {"spec": {
                "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}],
                "imagePullSecrets": [{"name": "reg2"}],
                "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["b"]}],
            }}}}),
            {
                let mut d = deploy.clone();
                let s = &mut d["spec"]["template"]["spec"];
                s["containers"][0]["env"] = json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]);
                s["imagePullSecrets"] = json!([{"name": "reg"}, {"name": "reg2"}]);
                s["hostAliases"] = json!([{"ip": "10.0.0.1", "hostnames": ["b"]}]);
                d
            },
        ),
        (
            "strategy switch with $retainKeys (kubectl apply)",
            "Deployment",
            deploy.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
            {
                let mut d = deploy.clone();
                d["spec"]["strategy"] = json!({"type": "Recreate"});
                d
            },
        ),
        (
            "deployment status conditions merge by type",
            "Deployment",
            deploy.clone(),
            json!({"status": {"conditions": [{"type": "Progressing", "status": "False"}], "replicas": 1}}),
            {
                let mut d = deploy.clone();
                d["status"] = json!({"conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "False"}], "replicas": 1});
                d
            },
        ),
        (
            "node heartbeat: one condition updated",
            "Node",
            node.clone(),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2024-01-01T00:00:00Z"}]}}),
            {
                let mut n = node.clone();
                n["status"]["conditions"][0] = json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2024-01-01T00:00:00Z"});
                n
            },
        ),
        (
            "node addresses by type, podCIDRs union, taints replace",
            "Node",
            node.clone(),
            json!({
                "spec": {"podCIDRs": ["fd00::/64"], "taints": null, "unschedulable": true},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.3"}, {"type": "ExternalIP", "address": "1.2.3.4"}]},
            }),
            {
                let mut n = node.clone();
                n["spec"] = json!({"podCIDRs": ["10.244.0.0/24", "fd00::/64"], "unschedulable": true});
                n["status"]["addresses"] = json!([
                    {"type": "InternalIP", "address": "192.168.1.3"},
                    {"type": "Hostname", "address": "n1"},
                    {"type": "ExternalIP", "address": "1.2.3.4"},
                ]);
                n
            },
        ),
        (
            "service ports merge by port",
            "Service",
            svc.clone(),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 8443, "name": "alt"}]}}),
            {
                let mut s = svc.clone();
                s["spec"]["ports"] = json!([{"name": "http", "port": 80, "targetPort": 9090}, {"name": "https", "port": 443}, {"port": 8443, "name": "alt"}]);
                s
            },
        ),
        (
            "service selector $patch: replace",
            "Service",
            svc.clone(),
            json!({"spec": {"selector": {"$patch": "replace", "app": "api"}}}),
            {
                let mut s = svc.clone();
                s["spec"]["selector"] = json!({"app": "api"});
                s
            },
        ),
        (
            "unknown kind: lists replace, directives are still applied and stripped",
            "Widget",
            json!({"metadata": {"finalizers": ["x"]}, "spec": {"items": [{"name": "a", "v": 1}, {"name": "b"}], "drop": {"k": 1}}}),
            json!({"metadata": {"finalizers": ["y"]}, "spec": {
                "$setElementOrder/items": [{"name": "b"}, {"name": "a"}],
                "items": [{"name": "a", "v": 2, "gone": null}, {"name": "b"}, {"$patch": "delete", "name": "c"}],
                "drop": {"$patch": "delete"},
            }}),
            json!({"metadata": {"finalizers": ["x", "y"]}, "spec": {"items": [{"name": "b"}, {"name": "a", "v": 2}]}}),
        ),
        (
            "CRD schemas keep their $ref fields",
            "CustomResourceDefinition",
            json!({"spec": {"versions": [{"name": "v1"}]}}),
            json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"$ref": "#/x", "type": "object"}}}]}}),
            json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"$ref": "#/x", "type": "object"}}}]}}),
        ),
        (
            "root $patch: replace",
            "ConfigMap",
            json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            json!({"$patch": "replace", "metadata": {"name": "c"}, "data": {"b": "2", "c": null}}),
            json!({"metadata": {"name": "c"}, "data": {"b": "2"}}),
        ),
        (
            "root $patch: delete leaves an empty object",
            "ConfigMap",
            json!({"metadata": {"name": "c"}}),
            json!({"$patch": "delete"}),
            json!({}),
        ),
        (
            "onto null",
            "ConfigMap",
            Value::Null,
            json!({"data": {"a": "1", "b": null}}),
            json!({"data": {"a": "1"}}),
        ),
        (
            "cronjob pod template containers merge",
            "CronJob",
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b"}]}}}}}}),
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:2"}]}}}}}}),
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:2"}, {"name": "b"}]}}}}}}),
        ),
    ];
    check_table(PatchType::StrategicMergePatch, cases);
}

#[test]
fn strategic_merge_errors() {
    let err = |patch: Value| run("Pod", &pod(), &patch, PatchType::StrategicMergePatch).unwrap_err();
    assert_eq!(
        err(json!({"spec": {"$foo": 1}})),
        PatchError::UnknownDirective {
            path: "spec".into(),
            directive: "$foo".into()
        }
    );
    assert_eq!(
        err(json!({"$foo": 1})).to_string(),
        "<root>: unknown strategic merge patch directive \"$foo\""
    );
    let e = err(json!({"spec": {"containers": [{"image": "x"}]}}));
    assert!(
        matches!(&e, PatchError::MissingMergeKey { path, key: "name", .. } if path == "spec.containers"),
        "{e:?}"
    );
    assert!(e.to_string().contains(r#"{"image":"x"}"#), "{e}");
    let e = err(json!({"spec": {"containers": [{"$patch": "delete", "image": "x"}]}}));
    assert!(matches!(e, PatchError::MissingMergeKey { .. }), "{e:?}");
    let e = err(json!({"spec": {"containers": ["a"]}}));
    assert!(matches!(e, PatchError::MissingMergeKey { .. }), "{e:?}");
    for (patch, directive) in [
        (json!({"metadata": {"labels": {"$patch": "merge"}}}), "$patch"),
        (json!({"metadata": {"labels": {"$patch": 1}}}), "$patch"),
        (
            json!({"spec": {"containers": [{"$patch": "merge", "name": "a"}]}}),
            "$patch",
        ),
        (
            json!({"spec": {"containers": [{"$patch": "bogus", "name": "a"}]}}),
            "$patch",
        ),
        (json!({"metadata": {"$retainKeys": "name"}}), "$retainKeys"),
        (
            json!({"metadata": {"$retainKeys": ["name"], "labels": {}}}),
            "$retainKeys",
        ),
        (
            json!({"metadata": {"$setElementOrder/finalizers": "a"}}),
            "$setElementOrder/finalizers",
        ),
        (json!({"metadata": {"$setElementOrder/": []}}), "$setElementOrder/"),
        (
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
            "$deleteFromPrimitiveList/finalizers",
        ),
        (
            json!({"metadata": {"$deleteFromPrimitiveList/": []}}),
            "$deleteFromPrimitiveList/",
        ),
    ] {
        let e = err(patch.clone());
        assert!(
            matches!(&e, PatchError::InvalidDirective { directive: d, .. } if d == directive),
            "{patch}: {e:?}"
        );
        assert_eq!(e.http_status(), 400);
    }
    // A null for a key the list does not retain is fine: it is a deletion.
    let ok = run(
        "Pod",
        &pod(),
        &json!({"metadata": {"$retainKeys": ["name"], "labels": null}}),
        PatchType::StrategicMergePatch,
    );
    assert_eq!(ok.unwrap()["metadata"], json!({"name": "p"}));
    let e = run("Pod", &pod(), &json!([{"op": "add"}]), PatchType::StrategicMergePatch).unwrap_err();
    assert_eq!(
        e,
        PatchError::NotAnObject {
            format: "strategic merge",
            found: "a list"
        }
    );
    // Deep nesting comes back as a decode error from serde_json, not a stack overflow.
    let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let e = apply_patch("Pod", &pod(), deep.as_bytes(), PatchType::StrategicMergePatch).unwrap_err();
    assert!(matches!(e, PatchError::Decode { .. }), "{e:?}");
}

#[test]
fn apply_yaml_creates() {
    let yaml = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
        env:
        - name: FLAG
          value: yes
        - name: EMPTY
          value: ~
      volumes:
      - name: cfg
        configMap:
          name: cfg
          defaultMode: 0644
";
    let got = apply_patch("Deployment", &Value::Null, yaml.as_bytes(), PatchType::Apply).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{"name": "web", "image": "nginx:1.27", "env": [{"name": "FLAG", "value": "yes"}, {"name": "EMPTY"}]}],
                        "volumes": [{"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}}],
                    },
                },
            },
        })
    );
}

#[test]
fn apply_merges_into_the_live_object() {
    let live = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "uid": "u", "resourceVersion": "5", "managedFields": [{"manager": "kubectl"}]},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1", "imagePullPolicy": "IfNotPresent"}, {"name": "side", "image": "s"}]}}},
        "status": {"replicas": 3},
    });
    // What kube-rs' `Patch::Apply` sends: JSON, with apiVersion and kind.
    let applied = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"owner": "ctl"}},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}},
    });
    let got = run("Deployment", &live, &applied, PatchType::Apply).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "5", "managedFields": [{"manager": "kubectl"}], "labels": {"owner": "ctl"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:2", "imagePullPolicy": "IfNotPresent"}, {"name": "side", "image": "s"}]}}},
            "status": {"replicas": 3},
        })
    );
    // The same as YAML, through the YAML path (not valid JSON).
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    owner: ctl\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: nginx:2\n";
    assert_eq!(
        apply_patch("Deployment", &live, yaml.as_bytes(), PatchType::Apply).unwrap(),
        got
    );
    // Apply knows no directives: `$`-keys are fields (a schema's `$ref` in a custom resource).
    let got = run(
        "Widget",
        &json!({"spec": {"a": 1}}),
        &json!({"spec": {"schema": {"$ref": "#/x"}, "$patch": "delete"}}),
        PatchType::Apply,
    );
    assert_eq!(
        got.unwrap(),
        json!({"spec": {"a": 1, "schema": {"$ref": "#/x"}, "$patch": "delete"}})
    );
    let got = run(
        "Pod",
        &json!({}),
        &json!({"spec": {"containers": [{"name": "a"}, {"$patch": "replace", "name": "b"}]}}),
        PatchType::Apply,
    );
    assert_eq!(
        got.unwrap(),
        json!({"spec": {"containers": [{"name": "a"}, {"$patch": "replace", "name": "b"}]}})
    );
    // A custom resource: its lists are replaced.
    let cr = json!({"spec": {"hosts": ["a", "b"], "size": 1}});
    let got = apply_patch("Widget", &cr, b"spec:\n  hosts: [c]\n", PatchType::Apply).unwrap();
    assert_eq!(got, json!({"spec": {"hosts": ["c"], "size": 1}}));
}

#[test]
fn apply_bad_bodies() {
    for (body, want_decode) in [
        ("a: [1, 2\n", true),
        ("a: 1\na: 2\n", true),
        ("- a\n- b\n", false),
        ("just a string", false),
        ("", false),
        ("---\na: 1\n---\nb: 2\n", true),
    ] {
        let r = apply_patch("Pod", &Value::Null, body.as_bytes(), PatchType::Apply);
        match r {
            Err(PatchError::Decode {
                format: "apply",
                reason,
            }) if want_decode => assert!(!reason.is_empty()),
            Err(PatchError::NotAnObject { format: "apply", .. }) if !want_decode => {}
            other => panic!("{body:?}: {other:?}"),
        }
    }
    let e = apply_patch("Pod", &Value::Null, &[0xff, 0xfe], PatchType::Apply).unwrap_err();
    assert!(matches!(e, PatchError::Decode { .. }), "{e:?}");
}

#[test]
fn json_patch_limits() {
    let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
        .map(|_| json!({"op": "test", "path": "", "value": {}}))
        .collect();
    let e = run("Pod", &json!({}), &Value::Array(ops), PatchType::JsonPatch).unwrap_err();
    assert_eq!(
        e,
        PatchError::TooManyOperations {
            count: MAX_JSON_PATCH_OPERATIONS + 1
        }
    );
    assert_eq!(e.http_status(), 413);
    // Each copy doubles the object; the copy budget stops it long before memory runs out.
    let doubling: Vec<Value> = (0..64)
        .map(|i| json!({"op": "copy", "from": "/a", "path": format!("/a/x{i}")}))
        .collect();
    let r = run(
        "Widget",
        &json!({"a": {"payload": "x".repeat(1000)}}),
        &Value::Array(doubling),
        PatchType::JsonPatch,
    );
    let Err(e) = r else {
        panic!("the copies must be refused")
    };
    assert!(
        matches!(&e, PatchError::JsonPatch { op: "copy", index, .. } if *index > 5 && *index < 20),
        "{e:?}"
    );
    // Ordinary copies are fine.
    let got = run(
        "Widget",
        &json!({"a": [1]}),
        &json!([{"op": "copy", "from": "/a", "path": "/b"}]),
        PatchType::JsonPatch,
    );
    assert_eq!(got.unwrap(), json!({"a": [1], "b": [1]}));
}

#[test]
fn large_lists_merge_in_linear_time() {
    // Quadratic merging would take minutes here (a 3 MiB body holds this many elements).
    let n = 60_000;
    let current = json!({
        "metadata": {"finalizers": (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>()},
        "spec": {"containers": (0..n).map(|i| json!({"name": format!("c{i}")})).collect::<Vec<_>>()},
    });
    let patch = json!({
        "metadata": {
            "finalizers": (n / 2..n + n / 2).map(|i| format!("f{i}")).collect::<Vec<_>>(),
            "$deleteFromPrimitiveList/finalizers": (0..n / 2).map(|i| format!("f{i}")).collect::<Vec<_>>(),
        },
        "spec": {
            "containers": (n / 2..n + n / 2).map(|i| json!({"name": format!("c{i}"), "image": "x"})).collect::<Vec<_>>(),
            "$setElementOrder/containers": (0..n + n / 2).rev().map(|i| json!({"name": format!("c{i}")})).collect::<Vec<_>>(),
        },
    });
    let start = std::time::Instant::now();
    let got = run("Pod", &current, &patch, PatchType::StrategicMergePatch).unwrap();
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let fin = got["metadata"]["finalizers"].as_array().unwrap();
    assert_eq!(
        (fin.len(), fin[0].as_str(), fin[n - 1].as_str()),
        (n, Some("f30000"), Some("f89999"))
    );
    let containers = got["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), n + n / 2);
    assert_eq!(containers[0], json!({"name": "c89999", "image": "x"}));
    assert_eq!(containers[n + n / 2 - 1], json!({"name": "c0"}));
}

#[test]
fn set_element_order_edge_cases() {
    let order = |current: Value, patch: Value| run("Widget", &current, &patch, PatchType::StrategicMergePatch).unwrap();
    // Unlisted elements keep their order after the listed ones; unknown entries are ignored.
    assert_eq!(
        order(
            json!({"l": [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]}),
            json!({"$setElementOrder/l": [{"n": 3}, {"n": 9}, {"n": 1}]})
        ),
        json!({"l": [{"n": 3}, {"n": 1}, {"n": 2}, {"n": 4}]})
    );
    assert_eq!(
        order(json!({"l": ["b", "a", "c"]}), json!({"$setElementOrder/l": ["c", "b"]})),
        json!({"l": ["c", "b", "a"]})
    );
    // An order for a list that is absent, or that the patch deletes, does nothing.
    assert_eq!(
        order(json!({"l": [1]}), json!({"$setElementOrder/m": [1]})),
        json!({"l": [1]})
    );
    assert_eq!(
        order(json!({"l": [1]}), json!({"l": null, "$setElementOrder/l": [1]})),
        json!({})
    );
}
