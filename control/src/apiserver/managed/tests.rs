use serde_json::{Value, json};

use super::*;
use crate::apiserver::resources;

fn deployments() -> &'static ResourceType {
    resources::find("apps", "v1", "deployments").expect("deployments are served")
}

fn fm(name: &str) -> FieldManager {
    FieldManager {
        name: name.into(),
        force: false,
    }
}

fn forced(name: &str) -> FieldManager {
    FieldManager {
        name: name.into(),
        force: true,
    }
}

fn deployment(replicas: i64, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}
            }
        }
    })
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Applies as the registry does: the result becomes the live object.
fn apply_as(live: Option<&Value>, config: &Value, who: &FieldManager) -> Result<Value, ApiError> {
    apply(deployments(), None, live, &body(config), who).map(|a| a.object)
}

fn manager<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == name)
}

#[test]
fn a_create_is_an_update_owning_every_field_it_wrote() {
    let mut obj = deployment(2, json!({"app": "web"}));
    obj["metadata"]["uid"] = json!("u");
    record_update(deployments(), None, None, &mut obj, &fm("kubectl-create"));
    let e = manager(&obj, "kubectl-create").expect("an entry");
    assert_eq!(e["operation"], "Update");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert!(e["time"].is_string());
    let f = &e["fieldsV1"];
    assert_eq!(f["f:spec"]["f:replicas"], json!({}));
    assert_eq!(f["f:spec"]["f:selector"], json!({}), "a label selector is atomic");
    assert_eq!(
        f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"],
        json!({".": {}, "f:containerPort": {}})
    );
    assert!(f["f:metadata"].get("f:name").is_none() && f["f:metadata"].get("f:uid").is_none());
    assert!(f.get("f:apiVersion").is_none() && f.get("f:kind").is_none());
}

#[test]
fn an_update_takes_what_it_changes_and_keeps_its_time_when_it_changes_nothing() {
    let live = apply_as(None, &deployment(2, json!({"app": "web"})), &fm("a")).unwrap();
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(5);
    record_update(deployments(), None, Some(&live), &mut scaled, &fm("kubectl-edit"));
    let edit = manager(&scaled, "kubectl-edit").unwrap();
    assert_eq!(edit["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    let a = manager(&scaled, "a").unwrap();
    assert!(
        a["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "taken from the applier"
    );

    let mut same = scaled.clone();
    record_update(deployments(), None, Some(&scaled), &mut same, &fm("other"));
    assert!(
        manager(&same, "other").is_none(),
        "a write that changes nothing owns nothing"
    );
    assert_eq!(same["metadata"]["managedFields"], scaled["metadata"]["managedFields"]);
}

#[test]
fn conflicting_applies_are_refused_with_the_manager_and_field() {
    let live = apply_as(None, &deployment(2, json!({"app": "web"})), &fm("a")).unwrap();
    let e = apply_as(
        Some(&live),
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 3}}),
        &fm("b"),
    )
    .unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
    );
    let status = e.to_status();
    assert_eq!(status["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(status["details"]["causes"][0]["field"], ".spec.replicas");
    assert_eq!(status["details"]["causes"][0]["message"], "conflict with \"a\"");
}

#[test]
fn the_same_value_is_shared_and_force_takes_ownership() {
    let live = apply_as(None, &deployment(2, json!({"app": "web"})), &fm("a")).unwrap();
    let same =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
    let shared = apply_as(Some(&live), &same, &fm("b")).unwrap();
    assert_eq!(
        manager(&shared, "b").unwrap()["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );
    assert_eq!(
        manager(&shared, "a").unwrap()["fieldsV1"]["f:spec"]["f:replicas"],
        json!({})
    );

    let mut more = same.clone();
    more["spec"]["replicas"] = json!(4);
    let err = apply_as(Some(&shared), &more, &fm("b")).unwrap_err();
    assert!(err.message.contains("conflict with \"a\""), "{}", err.message);
    let taken = apply_as(Some(&shared), &more, &forced("b")).unwrap();
    assert_eq!(taken["spec"]["replicas"], 4);
    assert!(
        manager(&taken, "a").unwrap()["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    // The former owner now conflicts in turn, and names the update-free applier alone.
    let back = apply_as(Some(&taken), &deployment(2, json!({"app": "web"})), &fm("a")).unwrap_err();
    assert_eq!(
        back.message,
        "Apply failed with 1 conflict: conflict with \"b\": .spec.replicas"
    );
}

#[test]
fn conflicts_with_updaters_name_their_version_and_list_every_field() {
    let live = apply_as(None, &deployment(2, json!({"app": "web", "tier": "x"})), &fm("a")).unwrap();
    let mut edited = live.clone();
    edited["spec"]["replicas"] = json!(7);
    edited["metadata"]["labels"]["tier"] = json!("y");
    record_update(deployments(), None, Some(&live), &mut edited, &fm("kubectl-edit"));
    let e = apply_as(
        Some(&edited),
        &deployment(2, json!({"app": "web", "tier": "x"})),
        &fm("a"),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using apps/v1:\n- .metadata.labels.tier\n- .spec.replicas"
    );
    assert_eq!(e.to_status()["details"]["causes"].as_array().unwrap().len(), 2);
}

#[test]
fn fields_an_applier_drops_go_unless_someone_else_owns_them() {
    let live = apply_as(
        None,
        &deployment(2, json!({"app": "web", "tier": "x", "team": "t"})),
        &fm("a"),
    )
    .unwrap();
    // Another manager also sets `team` (to the same value: shared).
    let other =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"team": "t"}}});
    let shared = apply_as(Some(&live), &other, &fm("b")).unwrap();
    let dropped = apply_as(Some(&shared), &deployment(2, json!({"app": "web"})), &fm("a")).unwrap();
    assert_eq!(dropped["metadata"]["labels"], json!({"app": "web", "team": "t"}));
    let a = manager(&dropped, "a").unwrap();
    assert!(a["fieldsV1"]["f:metadata"]["f:labels"].get("f:tier").is_none());

    // An env var and a container dropped from the configuration go too.
    let mut two = deployment(2, json!({"app": "web"}));
    two["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "web", "image": "nginx", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "side", "image": "busybox"}
    ]);
    let live = apply_as(Some(&dropped), &two, &fm("a")).unwrap();
    let mut one = two.clone();
    one["spec"]["template"]["spec"]["containers"] =
        json!([{"name": "web", "image": "nginx", "env": [{"name": "B", "value": "2"}]}]);
    let after = apply_as(Some(&live), &one, &fm("a")).unwrap();
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"],
        json!([{"name": "web", "image": "nginx", "env": [{"name": "B", "value": "2"}]}])
    );
}

#[test]
fn objects_without_managed_fields_belong_to_before_first_apply() {
    let live = deployment(2, json!({"app": "web"}));
    let e = apply_as(
        Some(&live),
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 3}}),
        &fm("a"),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn clients_may_replace_managed_fields_on_update_and_clear_them_with_one_empty_entry() {
    let live = apply_as(None, &deployment(2, json!({"app": "web"})), &fm("a")).unwrap();
    let mut cleared = live.clone();
    cleared["metadata"]["managedFields"] = json!([{}]);
    record_update(deployments(), None, Some(&live), &mut cleared, &fm("kubectl-patch"));
    assert!(cleared["metadata"].get("managedFields").is_none(), "{cleared}");

    let mut kept = live.clone();
    kept["metadata"]["managedFields"] = json!([]);
    record_update(deployments(), None, Some(&live), &mut kept, &fm("kubectl-patch"));
    assert_eq!(kept["metadata"]["managedFields"], live["metadata"]["managedFields"]);

    let mut renamed = live.clone();
    renamed["metadata"]["managedFields"][0]["manager"] = json!("kubectl");
    record_update(deployments(), None, Some(&live), &mut renamed, &fm("kubectl-patch"));
    assert!(manager(&renamed, "kubectl").is_some() && manager(&renamed, "a").is_none());
}

#[test]
fn an_apply_may_not_carry_managed_fields_and_must_key_its_items() {
    let mut config = deployment(1, json!({}));
    config["metadata"]["managedFields"] = json!([]);
    assert_eq!(apply_as(None, &config, &fm("a")).unwrap_err().code, 400);
    let mut unnamed = deployment(1, json!({}));
    unnamed["spec"]["template"]["spec"]["containers"] = json!([{"image": "nginx"}]);
    let e = apply_as(None, &unnamed, &fm("a")).unwrap_err();
    assert_eq!(e.code, 422);
    assert!(e.message.contains("spec.template.spec.containers[0]"), "{}", e.message);
}

#[test]
fn status_is_owned_only_through_its_subresource() {
    let mut config = deployment(1, json!({}));
    config["status"] = json!({"replicas": 1});
    let live = apply_as(None, &config, &fm("a")).unwrap();
    assert!(manager(&live, "a").unwrap()["fieldsV1"].get("f:status").is_none());
    let status_apply = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "status": {"replicas": 1}});
    let a = apply(
        deployments(),
        Some("status"),
        Some(&live),
        &body(&status_apply),
        &fm("ctl"),
    )
    .unwrap();
    let e = manager(&a.object, "ctl").unwrap();
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
}

#[test]
fn kubectl_takes_over_what_client_side_apply_recorded() {
    let manifest = deployment(2, json!({"app": "web"}));
    let mut live = manifest.clone();
    live["metadata"]["annotations"] = json!({LAST_APPLIED: serde_json::to_string(&manifest).unwrap()});
    record_update(deployments(), None, None, &mut live, &fm("kubectl-client-side-apply"));
    let mut changed = manifest.clone();
    changed["spec"]["replicas"] = json!(3);
    let upgraded = apply_as(Some(&live), &changed, &fm("kubectl")).unwrap();
    assert_eq!(upgraded["spec"]["replicas"], 3);
    let recorded: Value =
        serde_json::from_str(upgraded["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap()).unwrap();
    assert_eq!(
        recorded["spec"]["replicas"], 3,
        "the annotation follows the server-side apply"
    );
    // Another manager gets no such pass.
    let e = apply_as(Some(&live), &changed, &fm("other")).unwrap_err();
    assert!(e.message.contains("kubectl-client-side-apply"), "{}", e.message);
}

#[test]
fn field_managers_come_from_the_query_or_the_user_agent() {
    let from_ua = FieldManager::from_request(None, Some("kubectl/v1.33.0 (linux/amd64) kubernetes/abc"), None, false);
    assert_eq!(from_ua.unwrap().name, "kubectl");
    let named = FieldManager::from_request(Some("mine"), Some("kube-rs/1.0"), Some("true"), true).unwrap();
    assert_eq!(named, forced("mine"));
    assert_eq!(
        FieldManager::from_request(Some("x"), None, Some("true"), false)
            .unwrap_err()
            .code,
        422
    );
    let long = "m".repeat(129);
    assert_eq!(
        FieldManager::from_request(Some(&long), None, None, false)
            .unwrap_err()
            .code,
        422
    );
}

#[test]
fn custom_resources_read_list_types_from_their_schema() {
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                  "items": {"type": "object", "properties": {"id": {"type": "string"}, "v": {"type": "string"}}}},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}}
    }}}});
    let shape = Shape::custom("Widget", &schema);
    let obj = json!({"spec": {"items": [{"id": "a", "v": "1"}], "tags": ["x"], "args": ["y"]}});
    let set = typed::field_set(shape, &obj, Mode::Strict).unwrap();
    let v1 = set.to_fields_v1();
    assert_eq!(
        v1["f:spec"]["f:items"]["k:{\"id\":\"a\"}"],
        json!({".": {}, "f:id": {}, "f:v": {}})
    );
    assert_eq!(v1["f:spec"]["f:tags"], json!({"v:\"x\"": {}}));
    assert_eq!(v1["f:spec"]["f:args"], json!({}));
    let merged = typed::merge(
        shape,
        &obj,
        &json!({"spec": {"items": [{"id": "b"}], "tags": ["z"], "args": ["w"]}}),
    );
    assert_eq!(
        merged["spec"],
        json!({"items": [{"id": "a", "v": "1"}, {"id": "b"}], "tags": ["x", "z"], "args": ["w"]})
    );
}

#[test]
fn a_server_side_apply_of_what_client_side_apply_recorded_keeps_its_spelling() {
    // kubectl's client-side text: `"annotations":{}` and a trailing newline. A server-side
    // apply of the same manifest (no annotations at all) must leave it as it is, or the next
    // client-side apply sees a changed annotation and says "configured".
    let text = "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"annotations\":{},\"name\":\"c\"},\"data\":{\"a\":\"b\"}}\n";
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "annotations": {super::LAST_APPLIED: text}}, "data": {"a": "b"}});
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let mut obj = live.clone();
    super::sync_last_applied(&mut obj, &live, &config);
    assert_eq!(obj["metadata"]["annotations"][super::LAST_APPLIED], json!(text));
    // A changed manifest is recorded, without a null for the missing annotations.
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "z"}});
    super::sync_last_applied(&mut obj, &live, &changed);
    let recorded = obj["metadata"]["annotations"][super::LAST_APPLIED]
        .as_str()
        .unwrap_or_default();
    assert!(!recorded.contains("null"), "{recorded}");
    assert!(recorded.contains("\"a\":\"z\""), "{recorded}");
}
