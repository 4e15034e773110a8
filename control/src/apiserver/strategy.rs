//! Per-type rules: defaults on create, what an update may change, and validation.
//!
//! Like Kubernetes' registry strategies, but data-driven by `kind`: types without special
//! rules get only the generic metadata checks and a typed decode through k8s-openapi.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{
    meta,
    resources::ResourceType,
    status::{ApiError, Cause},
};

/// Fills the defaults a real API server fills, so clients see the same objects.
pub fn default_on_create(rt: &ResourceType, obj: &mut Value) {
    if let Some(ct) = rt.custom {
        super::crd::prepare_create(ct, obj);
        return;
    }
    match rt.kind {
        "Namespace" => {
            obj["spec"] = json!({ "finalizers": ["kubernetes"] });
            obj["status"] = json!({ "phase": "Active" });
        }
        "Pod" => {
            default_pod_spec(&mut obj["spec"]);
            super::admission::limit_ranger::default_requests_from_limits(&mut obj["spec"]);
            if !obj["status"].is_object() || obj["status"].get("phase").is_none() {
                obj["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
            }
        }
        "Service" => default_service_spec(&mut obj["spec"]),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            let spec = &mut obj["spec"];
            if rt.kind != "DaemonSet" {
                set_default(spec, "replicas", json!(1));
            }
            set_default(spec, "revisionHistoryLimit", json!(10));
            if rt.kind == "Deployment" {
                set_default(spec, "progressDeadlineSeconds", json!(600));
                default_deployment_strategy(spec);
            }
            if rt.kind == "DaemonSet" {
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
            if spec["template"]["spec"].is_object() {
                default_pod_spec(&mut spec["template"]["spec"]);
            }
        }
        "Secret" => {
            set_default(obj, "type", json!("Opaque"));
            fold_string_data(obj);
        }
        "CustomResourceDefinition" => super::crd::definition::default_on_create(obj),
        "PodDisruptionBudget" => super::pdb::default_on_create(obj),
        "Job" => super::batch::default_job_on_create(obj),
        "StatefulSet" => super::statefulset::default_on_create(obj),
        "CronJob" => super::batch::default_cronjob_on_create(obj),
        "LimitRange" => super::admission::limit_ranger::default_limit_range(obj),
        "PersistentVolumeClaim" => super::volumes::default_claim(obj, true),
        "PersistentVolume" => super::volumes::default_volume(obj, true),
        "StorageClass" => super::volumes::default_class(obj),
        _ => {}
    }
    if obj.get("spec").is_some_and(Value::is_object) {
        meta::metadata_mut(obj).insert("generation".into(), json!(1));
    }
}

/// A Secret's `stringData` is write-only: upstream's conversion merges it into `data`
/// (its keys win) on every write, and it is never stored.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(string_data) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    // Anything but a map of strings goes back, for validation to refuse it by name.
    let entries = match string_data {
        Value::Object(entries) if entries.values().all(Value::is_string) => entries,
        other => {
            obj["stringData"] = other;
            return;
        }
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (key, value) in entries {
        if let Some(text) = value.as_str() {
            obj["data"][key.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

/// Upstream's SetDefaults_Deployment for the strategy: RollingUpdate, and its limits at
/// 25% each when left out (a `{type: RollingUpdate}` alone must not mean 0 and 0).
fn default_deployment_strategy(spec: &mut Value) {
    set_default(spec, "strategy", json!({}));
    let strategy = &mut spec["strategy"];
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        set_default(strategy, "rollingUpdate", json!({}));
        set_default(&mut strategy["rollingUpdate"], "maxSurge", json!("25%"));
        set_default(&mut strategy["rollingUpdate"], "maxUnavailable", json!("25%"));
    }
}

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = value;
    }
}

pub(super) fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, "serviceAccount", sa);
    }
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_owned();
                let latest = !image.contains(':') || image.ends_with(":latest");
                set_default(
                    c,
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                );
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn default_service_spec(spec: &mut Value) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or_default().to_owned();
    if ty == "ExternalName" {
        return;
    }
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if spec["sessionAffinity"] == "ClientIP" {
        set_default(
            spec,
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
}

/// Carries over what an update must not change, and drops what this endpoint may not
/// touch (`status` on the main resource, everything but `status` on `/status`).
pub fn prepare_update(rt: &ResourceType, old: &Value, new: &mut Value, subresource: Option<&str>) {
    if super::certificates::is_csr(rt) {
        super::certificates::prepare_update(old, new, subresource);
    } else if subresource == Some("finalize") {
        let spec = new.get("spec").cloned().unwrap_or(Value::Null);
        *new = old.clone();
        new["spec"] = spec;
    } else if subresource == Some("status") {
        let status = new.get("status").cloned().unwrap_or(Value::Null);
        let mut merged = old.clone();
        merged["status"] = status;
        // Status writers may still move labels and annotations (kubelet does for pods).
        for field in ["labels", "annotations"] {
            if let Some(v) = meta::metadata(new).and_then(|m| m.get(field)).cloned() {
                meta::metadata_mut(&mut merged).insert(field.into(), v);
            }
        }
        *new = merged;
    } else if rt.has_subresource("status") {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let old_meta = meta::metadata(old).cloned().unwrap_or_default();
    let new_meta = meta::metadata_mut(new);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(field) {
            Some(v) => {
                new_meta.insert(field.into(), v.clone());
            }
            None => {
                new_meta.remove(field);
            }
        }
    }
    if let Some(ct) = rt.custom {
        super::crd::prepare_update(ct, old, new);
        return;
    }
    if rt.kind == "CustomResourceDefinition" {
        super::crd::definition::default_spec(new);
    }
    if rt.kind == "Service" {
        keep_allocations(old, new);
    }
    if rt.kind == "Secret" {
        fold_string_data(new);
    }
    if rt.kind == "LimitRange" {
        super::admission::limit_ranger::default_limit_range(new);
    }
    match rt.kind {
        "PersistentVolumeClaim" => super::volumes::default_claim(new, false),
        "PersistentVolume" => super::volumes::default_volume(new, false),
        "StorageClass" => super::volumes::default_class(new),
        _ => {}
    }
    // Only `namespaces/{name}/finalize` may change a Namespace's finalizers.
    if rt.kind == "Namespace" && subresource != Some("finalize") {
        new["spec"] = old["spec"].clone();
    }
    // Upstream defaults every write, not just creates: a template edited by PUT or PATCH
    // must hash the same as the one a create would have stored, or the Deployment
    // controller would see a new template where there is none.
    if matches!(rt.kind, "Deployment" | "ReplicaSet" | "DaemonSet") && new["spec"]["template"]["spec"].is_object() {
        default_pod_spec(&mut new["spec"]["template"]["spec"]);
    }
    if rt.kind == "Deployment" && new["spec"].is_object() {
        default_deployment_strategy(&mut new["spec"]);
    }
    if rt.kind == "StatefulSet" && subresource.is_none() {
        super::statefulset::prepare_update(new);
    }
    if rt.kind == "Job" && subresource.is_none() {
        super::batch::prepare_job_update(old, new);
    }
    if rt.kind == "CronJob" && subresource.is_none() {
        super::batch::prepare_cronjob_update(new);
    }
    let spec_changed = old.get("spec") != new.get("spec");
    if spec_changed && new.get("spec").is_some() {
        let generation = old_meta.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
        meta::metadata_mut(new).insert("generation".into(), json!(generation));
    }
}

/// ClusterIPs are immutable; a client that omits them (as `kubectl apply` does) keeps
/// them, and so are NodePorts that were allocated for the same port.
fn keep_allocations(old: &Value, new: &mut Value) {
    for field in ["clusterIP", "clusterIPs", "ipFamilies"] {
        if new["spec"].get(field).is_none_or(|v| v.is_null() || v == "")
            && let Some(v) = old["spec"].get(field)
        {
            new["spec"][field] = v.clone();
        }
    }
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if let Some(ports) = new["spec"].get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("nodePort").is_none_or(|v| v.is_null() || v == 0) {
                let same = old_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"]);
                if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                    p["nodePort"] = np.clone();
                }
            }
        }
    }
}

/// Checks the object: first that it decodes as the Kubernetes type (a 400, like the real
/// server's decode errors), then field rules (a 422 naming each field).
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if let Some(ct) = rt.custom {
        let mut causes = Vec::new();
        let name = meta::name(obj).unwrap_or_default();
        validate_name(rt, name, &mut causes);
        validate_labels(obj, &mut causes);
        super::crd::validate(ct, obj, &mut causes);
        return if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(rt.kind, rt.group, name, causes))
        };
    }
    decode_check(rt, obj)?;
    let mut causes = Vec::new();
    let name = meta::name(obj).unwrap_or_default();
    validate_name(rt, name, &mut causes);
    validate_labels(obj, &mut causes);
    match rt.kind {
        "Service" => validate_service(obj, old, &mut causes),
        "Pod" => validate_pod_spec(&obj["spec"], "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "DaemonSet" => validate_workload(obj, &mut causes),
        "EndpointSlice" => validate_endpoint_slice(obj, &mut causes),
        "ResourceQuota" => super::resourcequota::validate(obj, &mut causes),
        "CustomResourceDefinition" => super::crd::definition::validate(obj, old, &mut causes),
        "CertificateSigningRequest" => super::certificates::validate(obj, old, &mut causes),
        "PodDisruptionBudget" => super::pdb::validate(obj, &mut causes),
        "Job" => super::batch::validate_job(obj, old, &mut causes),
        "StatefulSet" => super::statefulset::validate(obj, old, &mut causes),
        "ControllerRevision" => super::statefulset::validate_revision(obj, old, &mut causes),
        "CronJob" => super::batch::validate_cronjob(obj, &mut causes),
        "LimitRange" => super::admission::limit_ranger::validate_limit_range(obj, &mut causes),
        "PersistentVolumeClaim" => super::volumes::validate_claim(obj, old, &mut causes),
        "PersistentVolume" => super::volumes::validate_volume(obj, old, &mut causes),
        "StorageClass" => super::volumes::validate_class(obj, old, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt.kind, rt.group, name, causes))
    }
}

/// Decodes `obj` as the k8s-openapi type of `rt` and encodes it back: None for types
/// without one, the decode error, or the round-tripped object (which lacks any field the
/// type does not declare). Both the decode check and unknown-field detection read it.
fn typed_round_trip(rt: &ResourceType, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc};
    use k8s_openapi::api::{events::v1 as events, rbac::v1 as rbac};
    fn round_trip<T: DeserializeOwned + serde::Serialize>(obj: &Value) -> Result<Value, String> {
        let typed = T::deserialize(obj).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
    Some(match (rt.group, rt.kind) {
        ("", "Namespace") => round_trip::<core::Namespace>(obj),
        ("", "Node") => round_trip::<core::Node>(obj),
        ("", "Pod") => round_trip::<core::Pod>(obj),
        ("", "Service") => round_trip::<core::Service>(obj),
        ("", "Endpoints") => round_trip::<core::Endpoints>(obj),
        ("", "ConfigMap") => round_trip::<core::ConfigMap>(obj),
        ("", "Secret") => round_trip::<core::Secret>(obj),
        ("", "ResourceQuota") => round_trip::<core::ResourceQuota>(obj),
        ("", "ServiceAccount") => round_trip::<core::ServiceAccount>(obj),
        ("", "Event") => round_trip::<core::Event>(obj),
        ("", "LimitRange") => round_trip::<core::LimitRange>(obj),
        ("", "PersistentVolume") => round_trip::<core::PersistentVolume>(obj),
        ("", "PersistentVolumeClaim") => round_trip::<core::PersistentVolumeClaim>(obj),
        ("storage.k8s.io", "StorageClass") => round_trip::<k8s_openapi::api::storage::v1::StorageClass>(obj),
        ("events.k8s.io", _) => round_trip::<events::Event>(obj),
        ("discovery.k8s.io", _) => round_trip::<disc::EndpointSlice>(obj),
        ("coordination.k8s.io", _) => round_trip::<coord::Lease>(obj),
        ("apps", "Deployment") => round_trip::<apps::Deployment>(obj),
        ("apps", "ReplicaSet") => round_trip::<apps::ReplicaSet>(obj),
        ("apps", "DaemonSet") => round_trip::<apps::DaemonSet>(obj),
        ("apps", "StatefulSet") => round_trip::<apps::StatefulSet>(obj),
        ("apps", "ControllerRevision") => round_trip::<apps::ControllerRevision>(obj),
        (_, "Role") => round_trip::<rbac::Role>(obj),
        (_, "RoleBinding") => round_trip::<rbac::RoleBinding>(obj),
        (_, "ClusterRole") => round_trip::<rbac::ClusterRole>(obj),
        (_, "ClusterRoleBinding") => round_trip::<rbac::ClusterRoleBinding>(obj),
        ("certificates.k8s.io", _) => round_trip::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>(obj),
        ("policy", "PodDisruptionBudget") => round_trip::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(obj),
        ("batch", "Job") => round_trip::<k8s_openapi::api::batch::v1::Job>(obj),
        ("batch", "CronJob") => round_trip::<k8s_openapi::api::batch::v1::CronJob>(obj),
        ("apiextensions.k8s.io", _) => round_trip::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(obj),
        _ => return None,
    })
}

fn decode_check(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    match typed_round_trip(rt, obj) {
        Some(Err(e)) => Err(ApiError::bad_request(
            match super::openapi::mistyped(rt.group, rt.version, rt.kind, obj) {
                Some(m) => m.message(rt.kind, rt.version),
                None => format!("{} in body does not decode: {e}", rt.kind),
            },
        )),
        _ => Ok(()),
    }
}

/// An RFC 1123 label: lower-case alphanumerics and `-`, at most 63, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn validate_name(rt: &ResourceType, name: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
        return;
    }
    // Namespaces and Services become DNS labels; RBAC names may hold ':' (system:...).
    let ok = match rt.kind {
        "Namespace" | "Service" => is_dns_label(name),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            !name.contains('/') && !name.contains('%') && name != "." && name != ".."
        }
        _ => is_dns_subdomain(name),
    };
    if !ok {
        let rule = if matches!(rt.kind, "Namespace" | "Service") {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        causes.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: {rule}"),
        ));
    }
}

fn validate_labels(obj: &Value, causes: &mut Vec<Cause>) {
    for (k, v) in meta::labels(obj) {
        let name_part = k.rsplit('/').next().unwrap_or(&k);
        let valid_part = |s: &str| {
            s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
                && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
        };
        if name_part.is_empty() || !valid_part(name_part) {
            causes.push(Cause::invalid(
                format!("metadata.labels[{k}]"),
                format!("Invalid label key {k:?}"),
            ));
        }
        if !valid_part(&v) {
            causes.push(Cause::invalid(
                format!("metadata.labels[{k}]"),
                format!("Invalid label value {v:?}"),
            ));
        }
    }
}

fn validate_service(obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push(Cause::not_supported(
            "spec.type",
            format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let headless = spec["clusterIP"] == "None";
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let mut seen = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match p["port"].as_i64() {
            Some(1..=65535) => {}
            Some(n) => causes.push(Cause::invalid(
                format!("{at}.port"),
                format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
            )),
            None => causes.push(Cause::required(format!("{at}.port"))),
        }
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            causes.push(Cause::not_supported(
                format!("{at}.protocol"),
                format!("Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
            ));
        }
        if let Some(np) = p["nodePort"].as_i64().filter(|n| *n != 0) {
            if ty == "ClusterIP" {
                causes.push(Cause::invalid(
                    format!("{at}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(1..=65535).contains(&np) {
                causes.push(Cause::invalid(
                    format!("{at}.nodePort"),
                    format!("Invalid value: {np}: must be between 1 and 65535, inclusive"),
                ));
            }
        }
        match &p["targetPort"] {
            Value::Number(n) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => causes.push(Cause::invalid(
                format!("{at}.targetPort"),
                format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
            )),
            Value::String(s) if s.is_empty() || s.len() > 15 || !s.bytes().any(|b| b.is_ascii_lowercase()) => causes
                .push(Cause::invalid(
                    format!("{at}.targetPort"),
                    format!("Invalid value: {s:?}: must be an IANA_SVC_NAME"),
                )),
            _ => {}
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        }
        let key = (p["port"].clone(), protocol.to_owned());
        if seen.contains(&key) {
            causes.push(Cause::duplicate(
                at.clone(),
                format!("Duplicate value: port {} {protocol}", p["port"]),
            ));
        }
        seen.push(key);
        if !name.is_empty() && ports[..i].iter().any(|q| q["name"] == name) {
            causes.push(Cause::duplicate(
                format!("{at}.name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
    }
    if let Some(affinity) = spec["sessionAffinity"].as_str()
        && !["None", "ClientIP"].contains(&affinity)
    {
        causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            format!("Unsupported value: {affinity:?}: supported values: \"ClientIP\", \"None\""),
        ));
    }
    if let Some(t) = spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].as_i64()
        && !(1..=86400).contains(&t)
    {
        causes.push(Cause::invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("Invalid value: {t}: must be greater than 0 and less than 86400"),
        ));
    }
    if let Some(etp) = spec["externalTrafficPolicy"].as_str() {
        if !["Cluster", "Local"].contains(&etp) {
            causes.push(Cause::not_supported(
                "spec.externalTrafficPolicy",
                format!("Unsupported value: {etp:?}: supported values: \"Cluster\", \"Local\""),
            ));
        } else if ty == "ClusterIP" {
            causes.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            ));
        }
    }
    if let Some(itp) = spec["internalTrafficPolicy"].as_str()
        && !["Cluster", "Local"].contains(&itp)
    {
        causes.push(Cause::not_supported(
            "spec.internalTrafficPolicy",
            format!("Unsupported value: {itp:?}: supported values: \"Cluster\", \"Local\""),
        ));
    }
    if let Some(ip) = spec["clusterIP"].as_str()
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        causes.push(Cause::invalid(
            "spec.clusterIP",
            format!("Invalid value: {ip:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
        ));
    }
    for (i, ip) in spec["externalIPs"].as_array().into_iter().flatten().enumerate() {
        if ip.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok()).is_none() {
            causes.push(Cause::invalid(
                format!("spec.externalIPs[{i}]"),
                format!("Invalid value: {ip}: must be a valid IP address"),
            ));
        }
    }
}

pub(super) fn validate_pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required(format!("{at}.containers")));
    }
    for (i, c) in containers.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{at}.containers[{i}].name")));
        } else if containers[..i].iter().any(|o| o["name"] == name) {
            causes.push(Cause::duplicate(
                format!("{at}.containers[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        if c["image"].as_str().unwrap_or_default().is_empty() {
            causes.push(Cause::required(format!("{at}.containers[{i}].image")));
        }
    }
}

fn validate_workload(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    if !selector.is_object() {
        causes.push(Cause::required("spec.selector"));
    } else if let Some(match_labels) = selector["matchLabels"].as_object() {
        let template_labels = &spec["template"]["metadata"]["labels"];
        for (k, v) in match_labels {
            if template_labels.get(k) != Some(v) {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    "Invalid value: `selector` does not match template `labels`",
                ));
                break;
            }
        }
    }
    if let Some(r) = spec["replicas"].as_i64().filter(|r| *r < 0) {
        causes.push(Cause::invalid(
            "spec.replicas",
            format!("Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
    validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
}

fn validate_endpoint_slice(obj: &Value, causes: &mut Vec<Cause>) {
    let at = obj["addressType"].as_str().unwrap_or_default();
    if !["IPv4", "IPv6", "FQDN"].contains(&at) {
        causes.push(Cause::not_supported(
            "addressType",
            format!("Unsupported value: {at:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        ));
    }
    for (i, ep) in obj["endpoints"].as_array().into_iter().flatten().enumerate() {
        let addrs = ep["addresses"].as_array().cloned().unwrap_or_default();
        if addrs.is_empty() {
            causes.push(Cause::required(format!("endpoints[{i}].addresses")));
        }
        for (j, a) in addrs.iter().enumerate() {
            let s = a.as_str().unwrap_or_default();
            let ok = match at {
                "IPv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => !s.is_empty(),
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("Invalid value: {s:?}: must be a valid {at} address"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    fn svc() -> &'static ResourceType {
        find("", "v1", "services").expect("served")
    }

    #[test]
    fn a_secrets_string_data_is_folded_into_data_and_wins() {
        let secrets = find("", "v1", "secrets").expect("served");
        let mut s = json!({"metadata": {"name": "s"}, "data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "x y"}});
        default_on_create(secrets, &mut s);
        assert_eq!(s["data"], json!({"a": "bmV3", "b": "eCB5", "keep": "eA=="}));
        assert!(s.get("stringData").is_none());
        let old = s.clone();
        let mut updated = json!({"metadata": {"name": "s"}, "stringData": {"c": "z"}});
        prepare_update(secrets, &old, &mut updated, None);
        assert_eq!(updated["data"], json!({"c": "eg=="}));
        // Not a map of strings: left for validation to refuse by name.
        let mut bad = json!({"metadata": {"name": "s"}, "stringData": {"a": 1}});
        default_on_create(secrets, &mut bad);
        assert_eq!(bad["stringData"], json!({"a": 1}));
    }

    #[test]
    fn service_defaults_match_kubernetes() {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}});
        default_on_create(svc(), &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(s["spec"].get("externalTrafficPolicy").is_none());
    }

    #[test]
    fn invalid_service_names_each_field() {
        let s = json!({"metadata": {"name": "Web"}, "spec": {"ports": [{"port": 70000}, {"port": 80, "protocol": "ICMP"}]}});
        let err = validate(svc(), &s, None).expect_err("invalid");
        assert_eq!(err.code, 422);
        let fields: Vec<String> = err.details.unwrap().causes.into_iter().map(|c| c.field).collect();
        for want in [
            "metadata.name",
            "spec.ports[0].port",
            "spec.ports[1].protocol",
            "spec.ports[0].name",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} missing from {fields:?}");
        }
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let s = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": "eighty"}]}});
        let err = validate(svc(), &s, None).expect_err("invalid");
        assert_eq!(err.code, 400);
    }

    #[test]
    fn deployments_default_their_rolling_limits_and_status_writes_keep_the_generation() {
        let rt = super::super::resources::find("apps", "v1", "deployments").expect("served");
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"},
            "template": {"spec": {"containers": [{"name": "c", "image": "a:1"}]}}}});
        default_on_create(rt, &mut d);
        assert_eq!(
            d["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": "25%", "maxUnavailable": "25%"})
        );
        assert_eq!(d["metadata"]["generation"], 1);
        let mut recreate = json!({"metadata": {"name": "r"}, "spec": {"strategy": {"type": "Recreate"}}});
        default_on_create(rt, &mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));

        let mut status_write = d.clone();
        status_write["status"] = json!({"replicas": 2});
        status_write["spec"]["replicas"] = json!(9);
        prepare_update(rt, &d, &mut status_write, Some("status"));
        assert_eq!(
            (
                status_write["metadata"]["generation"].clone(),
                status_write["spec"]["replicas"].clone()
            ),
            (json!(1), json!(2))
        );
        let mut spec_write = d.clone();
        spec_write["spec"]["template"]["spec"]["containers"][0]["image"] = json!("a:2");
        prepare_update(rt, &d, &mut spec_write, None);
        assert_eq!(spec_write["metadata"]["generation"], 2);
        assert_eq!(
            spec_write["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn main_resource_updates_keep_status_and_bump_generation() {
        let pods = find("", "v1", "pods").expect("served");
        let old = json!({"metadata": {"name": "p", "uid": "u1", "generation": 1}, "spec": {"a": 1}, "status": {"phase": "Running"}});
        let mut new =
            json!({"metadata": {"name": "p", "uid": "other"}, "spec": {"a": 2}, "status": {"phase": "Failed"}});
        prepare_update(pods, &old, &mut new, None);
        assert_eq!(new["status"]["phase"], "Running");
        assert_eq!(new["metadata"]["uid"], "u1");
        assert_eq!(new["metadata"]["generation"], 2);
        let mut st = json!({"metadata": {"name": "p"}, "spec": {"a": 3}, "status": {"phase": "Succeeded"}});
        prepare_update(pods, &old, &mut st, Some("status"));
        assert_eq!(
            (st["spec"]["a"].clone(), st["status"]["phase"].clone()),
            (json!(1), json!("Succeeded"))
        );
    }

    #[test]
    fn service_updates_keep_cluster_ip_and_node_ports() {
        let old = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut new = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        prepare_update(svc(), &old, &mut new, None);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
    }
}

/// Fields of `obj` that the Kubernetes type does not declare, as dotted paths
/// (`spec.replica`). Found by decoding into the k8s-openapi type and encoding back: what
/// does not survive the round trip is unknown. Objects that do not decode (including
/// partial patch bodies) report nothing here; `validate` reports those.
pub fn unknown_fields(rt: &ResourceType, obj: &Value) -> Vec<String> {
    if let Some(ct) = rt.custom {
        return super::crd::unknown_fields(ct, obj);
    }
    let mut out = Vec::new();
    if let Some(Ok(back)) = typed_round_trip(rt, obj) {
        missing(obj, &back, "", &mut out);
    }
    out
}

fn missing(input: &Value, kept: &Value, at: &str, out: &mut Vec<String>) {
    match (input, kept) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                // Patch directives and explicit nulls never survive a round trip.
                if key.starts_with('$') || v.is_null() {
                    continue;
                }
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match k.get(key) {
                    Some(kv) => missing(v, kv, &path, out),
                    None => out.push(path),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                missing(iv, kv, &format!("{at}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod unknown_field_tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn typos_are_found_with_their_path() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": null},
            "spec": {"replica": 3, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolice": "x"}]}}}});
        assert_eq!(
            unknown_fields(deploy, &obj),
            ["spec.replica", "spec.template.spec.containers[0].imagePullPolice"]
        );
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"any-key": "v"}});
        assert!(unknown_fields(find("", "v1", "configmaps").unwrap(), &ok).is_empty());
    }
}
