//! Storage strategies: PersistentVolume, PersistentVolumeClaim (core/v1) and StorageClass
//! (`storage.k8s.io/v1`). Upstream's defaulting (phases start Pending, Filesystem volume
//! mode, Retain for volumes and Delete/Immediate for classes) and the validation clients
//! rely on: a claim's spec is fixed once created except for its binding and a growing
//! request on a bound claim, a class's provisioner and parameters never change.

use serde_json::{Value, json};

use super::{
    selector::{LabelSelector, SelectorError},
    status::Cause,
    strategy::is_dns_subdomain,
};
use crate::quota::quantity::Quantity;

/// The annotation naming the class claims without a `storageClassName` get.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The same in its beta spelling, which upstream still honours.
pub const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";

const ACCESS_MODES: &[&str] = &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const PV_RECLAIM: &[&str] = &["Delete", "Recycle", "Retain"];
const SC_RECLAIM: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];

/// The volume sources a PersistentVolumeSpec may hold (exactly one of).
const VOLUME_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = value;
    }
}

/// Whether a StorageClass carries the default-class annotation.
pub fn is_default_class(sc: &Value) -> bool {
    let a = &sc["metadata"]["annotations"];
    a[DEFAULT_CLASS_ANNOTATION] == "true" || a[BETA_DEFAULT_CLASS_ANNOTATION] == "true"
}

pub fn default_claim(obj: &mut Value, create: bool) {
    set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
    if create {
        // A client cannot hand itself a binding: status belongs to the PV controller.
        obj["status"] = json!({"phase": "Pending"});
    }
}

pub fn default_volume(obj: &mut Value, create: bool) {
    let spec = &mut obj["spec"];
    set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
    set_default(spec, "volumeMode", json!("Filesystem"));
    if create {
        obj["status"] = json!({"phase": "Pending"});
    }
}

pub fn default_class(obj: &mut Value) {
    set_default(obj, "reclaimPolicy", json!("Delete"));
    set_default(obj, "volumeBindingMode", json!("Immediate"));
}

fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {}", message.into()),
    }
}

fn supported(list: &[&str]) -> String {
    list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

fn check_enum(value: &Value, field: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(v) = value.as_str()
        && !allowed.contains(&v)
    {
        causes.push(Cause::not_supported(
            field,
            format!("Unsupported value: {v:?}: supported values: {}", supported(allowed)),
        ));
    }
}

fn check_access_modes(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    let modes: Vec<&str> = spec["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if modes.is_empty() {
        causes.push(Cause {
            message: "Required value: at least 1 access mode is required".into(),
            ..Cause::required(field)
        });
        return;
    }
    for m in &modes {
        if !ACCESS_MODES.contains(m) {
            causes.push(Cause::not_supported(
                field,
                format!(
                    "Unsupported value: {m:?}: supported values: {}",
                    supported(ACCESS_MODES)
                ),
            ));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        causes.push(forbidden(field, "may not use ReadWriteOncePod with other access modes"));
    }
}

/// A storage quantity that must be present and greater than zero.
fn check_storage(value: &Value, field: &str, causes: &mut Vec<Cause>) {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            causes.push(Cause::required(field));
            return;
        }
    };
    match Quantity::parse(&text) {
        Ok(q) if q.is_zero() || q.is_negative() => causes.push(Cause::invalid(
            field,
            format!("Invalid value: {text:?}: must be greater than zero"),
        )),
        Ok(_) => {}
        Err(e) => causes.push(Cause::invalid(field, format!("Invalid value: {text:?}: {e}"))),
    }
}

fn check_class_name(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(class) = spec["storageClassName"].as_str()
        && !class.is_empty()
        && !is_dns_subdomain(class)
    {
        causes.push(Cause::invalid(
            "spec.storageClassName",
            format!("Invalid value: {class:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
}

/// Upstream's ValidatePersistentVolumeClaim and, on updates, ...ClaimUpdate.
pub fn validate_claim(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    check_access_modes(spec, "spec.accessModes", causes);
    check_storage(
        &spec["resources"]["requests"]["storage"],
        "spec.resources.requests[storage]",
        causes,
    );
    check_enum(&spec["volumeMode"], "spec.volumeMode", VOLUME_MODES, causes);
    check_class_name(spec, causes);
    if let Some(selector) = spec.get("selector").filter(|s| !s.is_null())
        && let Err(e) = LabelSelector::from_label_selector_json(selector)
    {
        let (field, reason) = match e {
            SelectorError::InvalidObject { field, reason } => (format!("spec.selector.{field}"), reason),
            other => ("spec.selector".to_owned(), other.to_string()),
        };
        causes.push(Cause::invalid(field, format!("Invalid value: {reason}")));
    }
    if let Some(old) = old {
        validate_claim_update(obj, old, causes);
    }
}

fn storage_request(claim: &Value) -> Option<Quantity> {
    let v = &claim["spec"]["resources"]["requests"]["storage"];
    let text = v
        .as_str()
        .map(str::to_owned)
        .or_else(|| v.as_number().map(|n| n.to_string()))?;
    Quantity::parse(&text).ok()
}

fn validate_claim_update(new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let (mut was, mut is) = (old["spec"].clone(), new["spec"].clone());
    // The binder sets volumeName once; the default class may be filled in once.
    for once in ["volumeName", "storageClassName"] {
        if was.get(once).is_none_or(|v| v.is_null() || v == "") {
            was[once] = is.get(once).cloned().unwrap_or(Value::Null);
        }
    }
    let bound = old["status"]["phase"] == "Bound";
    if bound {
        was["resources"]["requests"] = is["resources"]["requests"].clone();
        if let (Some(before), Some(after)) = (storage_request(old), storage_request(new))
            && after < before
        {
            causes.push(forbidden(
                "spec.resources.requests.storage",
                "field can not be less than status.capacity",
            ));
        }
    }
    strip_nulls(&mut was);
    strip_nulls(&mut is);
    if was != is {
        causes.push(forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
}

fn strip_nulls(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
        for v in map.values_mut() {
            strip_nulls(v);
        }
    }
}

/// Upstream's ValidatePersistentVolume (the parts that apply to the sources we know).
pub fn validate_volume(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    check_access_modes(spec, "spec.accessModes", causes);
    match spec["capacity"].as_object() {
        None => causes.push(Cause::required("spec.capacity")),
        Some(capacity) => {
            for key in capacity.keys().filter(|k| *k != "storage") {
                causes.push(Cause::not_supported(
                    format!("spec.capacity[{key}]"),
                    format!("Unsupported value: {key:?}: supported values: \"storage\""),
                ));
            }
            check_storage(&spec["capacity"]["storage"], "spec.capacity[storage]", causes);
        }
    }
    let sources: Vec<&str> = VOLUME_SOURCES
        .iter()
        .copied()
        .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match sources.as_slice() {
        [] => causes.push(Cause {
            message: "Required value: must specify a volume type".into(),
            ..Cause::required("spec")
        }),
        [_] => {}
        [_, rest @ ..] => {
            for s in rest {
                causes.push(forbidden(
                    format!("spec.{s}"),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    if spec["hostPath"].is_object() && spec["hostPath"]["path"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.hostPath.path"));
    }
    if spec["local"].is_object() {
        if spec["local"]["path"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required("spec.local.path"));
        }
        if !spec["nodeAffinity"].is_object() {
            causes.push(Cause {
                message: "Required value: Local volume requires node affinity".into(),
                ..Cause::required("spec.nodeAffinity")
            });
        }
    }
    check_enum(
        &spec["persistentVolumeReclaimPolicy"],
        "spec.persistentVolumeReclaimPolicy",
        PV_RECLAIM,
        causes,
    );
    check_enum(&spec["volumeMode"], "spec.volumeMode", VOLUME_MODES, causes);
    check_class_name(spec, causes);
    if let Some(old) = old {
        let source = |v: &Value| -> Vec<Value> { VOLUME_SOURCES.iter().map(|s| v["spec"][*s].clone()).collect() };
        if source(old) != source(obj) {
            causes.push(forbidden(
                "spec.persistentvolumesource",
                "spec.persistentvolumesource is forbidden.",
            ));
        }
        if old["spec"]["nodeAffinity"].is_object() && old["spec"]["nodeAffinity"] != spec["nodeAffinity"] {
            causes.push(forbidden("spec.nodeAffinity", "field is immutable once set"));
        }
    }
}

/// Upstream's ValidateStorageClass and ...Update.
pub fn validate_class(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match obj["provisioner"].as_str() {
        None | Some("") => causes.push(Cause::required("provisioner")),
        Some(p) if !is_qualified_name(p) => causes.push(Cause::invalid(
            "provisioner",
            format!("Invalid value: {p:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
        )),
        Some(_) => {}
    }
    check_enum(&obj["reclaimPolicy"], "reclaimPolicy", SC_RECLAIM, causes);
    check_enum(&obj["volumeBindingMode"], "volumeBindingMode", BINDING_MODES, causes);
    if let Some(old) = old {
        for field in ["parameters", "provisioner", "reclaimPolicy", "volumeBindingMode"] {
            let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(|m| m.is_empty());
            let (a, b) = (&old[field], &obj[field]);
            if a != b && !(empty(a) && empty(b)) {
                causes.push(forbidden(field, format!("updates to {field} are forbidden.")));
            }
        }
    }
}

/// `[prefix/]name` with a DNS-subdomain prefix and a name of at most 63 characters.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    fn claim() -> Value {
        json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}})
    }

    #[test]
    fn claims_default_and_need_modes_and_a_positive_request() {
        let mut c = claim();
        default_claim(&mut c, true);
        assert_eq!(c["spec"]["volumeMode"], "Filesystem");
        assert_eq!(c["status"]["phase"], "Pending");
        let mut causes = Vec::new();
        validate_claim(&c, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let bad = json!({"metadata": {"name": "c"}, "spec": {"accessModes": [], "volumeMode": "Disk",
            "resources": {"requests": {"storage": "0"}}}});
        let mut causes = Vec::new();
        validate_claim(&bad, None, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "spec.accessModes",
                "spec.resources.requests[storage]",
                "spec.volumeMode"
            ]
        );
        let mut causes = Vec::new();
        validate_claim(&json!({"spec": {"accessModes": ["ReadWriteOnce"]}}), None, &mut causes);
        assert_eq!(fields(&causes), ["spec.resources.requests[storage]"]);
        assert_eq!(causes[0].reason, "FieldValueRequired");
    }

    #[test]
    fn a_claims_spec_is_fixed_except_binding_and_growth_when_bound() {
        let mut old = claim();
        default_claim(&mut old, true);
        let mut bind = old.clone();
        bind["spec"]["volumeName"] = json!("pv-1");
        bind["spec"]["storageClassName"] = json!("local-path");
        let mut causes = Vec::new();
        validate_claim(&bind, Some(&old), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let mut grow = old.clone();
        grow["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let mut causes = Vec::new();
        validate_claim(&grow, Some(&old), &mut causes);
        assert_eq!(fields(&causes), ["spec"], "an unbound claim cannot grow");

        let mut bound = bind.clone();
        bound["status"]["phase"] = json!("Bound");
        let mut grow = bound.clone();
        grow["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let mut causes = Vec::new();
        validate_claim(&grow, Some(&bound), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut shrink = bound.clone();
        shrink["spec"]["resources"]["requests"]["storage"] = json!("1Mi");
        let mut causes = Vec::new();
        validate_claim(&shrink, Some(&bound), &mut causes);
        assert_eq!(fields(&causes), ["spec.resources.requests.storage"]);

        let mut rebind = bound.clone();
        rebind["spec"]["volumeName"] = json!("pv-2");
        let mut causes = Vec::new();
        validate_claim(&rebind, Some(&bound), &mut causes);
        assert_eq!(fields(&causes), ["spec"]);
    }

    #[test]
    fn volumes_need_capacity_modes_and_exactly_one_source() {
        let mut pv = json!({"metadata": {"name": "pv"}, "spec": {"capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/data"}}});
        default_volume(&mut pv, true);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        let mut causes = Vec::new();
        validate_volume(&pv, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let none = json!({"spec": {"accessModes": ["ReadWriteOnce"]}});
        let mut causes = Vec::new();
        validate_volume(&none, None, &mut causes);
        assert_eq!(fields(&causes), ["spec.capacity", "spec"]);

        let two = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/a"}, "local": {"path": "/b"}}});
        let mut causes = Vec::new();
        validate_volume(&two, None, &mut causes);
        assert_eq!(fields(&causes), ["spec.local", "spec.nodeAffinity"]);

        let mut moved = pv.clone();
        moved["spec"]["hostPath"]["path"] = json!("/elsewhere");
        let mut causes = Vec::new();
        validate_volume(&moved, Some(&pv), &mut causes);
        assert_eq!(fields(&causes), ["spec.persistentvolumesource"]);
    }

    #[test]
    fn classes_default_and_keep_provisioner_and_parameters() {
        let mut sc = json!({"metadata": {"name": "fast"}, "provisioner": "rudder.dev/local-path"});
        default_class(&mut sc);
        assert_eq!(
            (sc["reclaimPolicy"].as_str(), sc["volumeBindingMode"].as_str()),
            (Some("Delete"), Some("Immediate"))
        );
        let mut causes = Vec::new();
        validate_class(&sc, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut changed = sc.clone();
        changed["provisioner"] = json!("other.io/x");
        changed["parameters"] = json!({"a": "b"});
        let mut causes = Vec::new();
        validate_class(&changed, Some(&sc), &mut causes);
        assert_eq!(fields(&causes), ["parameters", "provisioner"]);
        let mut causes = Vec::new();
        validate_class(&json!({"volumeBindingMode": "Later"}), None, &mut causes);
        assert_eq!(fields(&causes), ["provisioner", "volumeBindingMode"]);
    }
}
