//! StatefulSet and ControllerRevision (`apps/v1`) strategy: upstream's SetDefaults_StatefulSet
//! (applied on every write, so a re-applied manifest compares equal to the stored one),
//! ValidateStatefulSetSpec with its list of fields an update may change, and the
//! ControllerRevision rules (a revision number that is not negative, `data` fixed once
//! written).

use serde_json::{Value, json};

use super::{selector::LabelSelector, status::Cause};

const POD_MANAGEMENT_POLICIES: &[&str] = &["OrderedReady", "Parallel"];
const RETENTION_POLICIES: &[&str] = &["Retain", "Delete"];

/// The spec fields an update may change; upstream's ValidateStatefulSetUpdate resets these
/// to the old values and forbids any other difference.
const MUTABLE_SPEC_FIELDS: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = value;
    }
}

/// Upstream's SetDefaults_StatefulSet plus the pod and claim defaults of its templates.
pub fn default_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    set_default(spec, "updateStrategy", json!({}));
    let strategy = &mut spec["updateStrategy"];
    if strategy.get("type").is_none_or(Value::is_null) {
        strategy["type"] = json!("RollingUpdate");
        set_default(strategy, "rollingUpdate", json!({}));
    }
    if strategy["type"] == "RollingUpdate" && strategy["rollingUpdate"].is_object() {
        set_default(&mut strategy["rollingUpdate"], "partition", json!(0));
    }
    set_default(spec, "persistentVolumeClaimRetentionPolicy", json!({}));
    let retention = &mut spec["persistentVolumeClaimRetentionPolicy"];
    set_default(retention, "whenDeleted", json!("Retain"));
    set_default(retention, "whenScaled", json!("Retain"));
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    if spec["template"]["spec"].is_object() {
        super::strategy::default_pod_spec(&mut spec["template"]["spec"]);
    }
    // Upstream's generated defaulters run SetDefaults_PersistentVolumeClaim on each
    // template, which is why a stored StatefulSet shows `status: {phase: Pending}` there.
    for claim in spec["volumeClaimTemplates"].as_array_mut().into_iter().flatten() {
        if !claim.is_object() {
            continue;
        }
        set_default(claim, "spec", json!({}));
        set_default(&mut claim["spec"], "volumeMode", json!("Filesystem"));
        set_default(claim, "status", json!({}));
        set_default(&mut claim["status"], "phase", json!("Pending"));
    }
}

/// A created StatefulSet: defaults, and an empty status (the controller writes it).
pub fn default_on_create(obj: &mut Value) {
    default_spec(&mut obj["spec"]);
    obj["status"] = json!({"replicas": 0, "availableReplicas": 0});
}

/// Every write is defaulted again (see the module comment).
pub fn prepare_update(new: &mut Value) {
    default_spec(&mut new["spec"]);
}

fn forbidden(field: impl Into<String>, message: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {message}"),
    }
}

fn non_negative(value: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = value.as_i64().filter(|n| *n < 0) {
        causes.push(Cause::invalid(
            field,
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

fn one_of(value: &Value, field: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    match value.as_str() {
        None | Some("") => causes.push(Cause::required(field)),
        Some(v) if !allowed.contains(&v) => causes.push(Cause::not_supported(
            field,
            format!(
                "Unsupported value: {v:?}: supported values: {}",
                allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
            ),
        )),
        Some(_) => {}
    }
}

/// Upstream's ValidateStatefulSetSpec, and on update the fields that may not change.
pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    validate_spec(spec, causes);
    if let Some(old) = old {
        let mut unchanged = spec.clone();
        for field in MUTABLE_SPEC_FIELDS {
            match old["spec"].get(*field) {
                Some(v) => unchanged[*field] = v.clone(),
                None => {
                    if let Some(map) = unchanged.as_object_mut() {
                        map.remove(*field);
                    }
                }
            }
        }
        if unchanged != old["spec"] {
            causes.push(forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', \
                 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and \
                 'minReadySeconds' are forbidden",
            ));
        }
    }
}

fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    match spec["podManagementPolicy"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.podManagementPolicy")),
        Some(p) if !POD_MANAGEMENT_POLICIES.contains(&p) => causes.push(Cause::invalid(
            "spec.podManagementPolicy",
            format!("Invalid value: {p:?}: must be 'OrderedReady' or 'Parallel'"),
        )),
        Some(_) => {}
    }
    let strategy = &spec["updateStrategy"];
    match strategy["type"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.updateStrategy")),
        Some("OnDelete") => {
            if strategy["rollingUpdate"].is_object() {
                causes.push(Cause::invalid(
                    "spec.updateStrategy.rollingUpdate",
                    "Invalid value: only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        Some("RollingUpdate") => non_negative(
            &strategy["rollingUpdate"]["partition"],
            "spec.updateStrategy.rollingUpdate.partition",
            causes,
        ),
        Some(_) => causes.push(Cause::invalid(
            "spec.updateStrategy",
            format!("Invalid value: {strategy}: must be 'RollingUpdate' or 'OnDelete'"),
        )),
    }
    let retention = &spec["persistentVolumeClaimRetentionPolicy"];
    for field in ["whenDeleted", "whenScaled"] {
        one_of(
            &retention[field],
            &format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
            RETENTION_POLICIES,
            causes,
        );
    }
    non_negative(&spec["replicas"], "spec.replicas", causes);
    non_negative(&spec["minReadySeconds"], "spec.minReadySeconds", causes);
    non_negative(&spec["ordinals"]["start"], "spec.ordinals.start", causes);
    // serviceName is optional since 1.31; when set it names a Service, a DNS label.
    if let Some(name) = spec["serviceName"].as_str().filter(|n| !n.is_empty())
        && !super::strategy::is_dns_label(name)
    {
        causes.push(Cause::invalid(
            "spec.serviceName",
            format!(
                "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters \
                 or '-', start with an alphabetic character, and end with an alphanumeric character"
            ),
        ));
    }
    validate_selector(spec, causes);
    let template = &spec["template"]["spec"];
    super::strategy::validate_pod_spec(template, "spec.template.spec", causes);
    if let Some(policy) = template["restartPolicy"].as_str().filter(|p| *p != "Always") {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            format!("Unsupported value: {policy:?}: supported values: \"Always\""),
        ));
    }
    if template["activeDeadlineSeconds"].is_number() {
        causes.push(forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in StatefulSet is not Supported",
        ));
    }
    for (i, claim) in spec["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = claim["metadata"]["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("spec.volumeClaimTemplates[{i}].metadata.name")));
        }
    }
}

fn validate_selector(spec: &Value, causes: &mut Vec<Cause>) {
    let selector = &spec["selector"];
    if !selector.is_object() {
        causes.push(Cause::required("spec.selector"));
        return;
    }
    let parsed = match LabelSelector::from_label_selector_json(selector) {
        Ok(s) => s,
        Err(e) => {
            causes.push(Cause::invalid("spec.selector", format!("Invalid value: {e}")));
            return;
        }
    };
    if parsed.is_everything() {
        causes.push(Cause::invalid(
            "spec.selector",
            "Invalid value: empty selector is invalid for statefulset",
        ));
        return;
    }
    if !parsed.matches_object(&spec["template"]) {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            "Invalid value: `selector` does not match template `labels`",
        ));
    }
}

/// Upstream's ValidateControllerRevision(Update).
pub fn validate_revision(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if obj.get("data").is_none_or(Value::is_null) {
        causes.push(Cause::required("data"));
    }
    non_negative(&obj["revision"], "revision", causes);
    if let Some(old) = old
        && old.get("data") != obj.get("data")
    {
        causes.push(Cause::invalid("data", "Invalid value: field is immutable"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Value {
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            },
        })
    }

    fn fields(obj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, old, &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut s = set();
        default_on_create(&mut s);
        let spec = &s["spec"];
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            (spec["replicas"].clone(), spec["revisionHistoryLimit"].clone()),
            (json!(1), json!(10))
        );
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(spec["volumeClaimTemplates"][0]["spec"]["volumeMode"], "Filesystem");
        assert_eq!(spec["volumeClaimTemplates"][0]["status"]["phase"], "Pending");
        assert_eq!(s["status"]["replicas"], 0);
        assert!(fields(&s, None).is_empty(), "{:?}", fields(&s, None));

        let mut on_delete = set();
        on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        default_spec(&mut on_delete["spec"]);
        assert_eq!(on_delete["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    }

    #[test]
    fn invalid_specs_name_their_fields() {
        let mut s = set();
        default_spec(&mut s["spec"]);
        s["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        s["spec"]["podManagementPolicy"] = json!("Sometimes");
        s["spec"]["updateStrategy"] = json!({"type": "Replace"});
        s["spec"]["replicas"] = json!(-1);
        s["spec"]["serviceName"] = json!("Web_Service");
        s["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(
            fields(&s, None),
            [
                "spec.podManagementPolicy",
                "spec.updateStrategy",
                "spec.replicas",
                "spec.serviceName",
                "spec.template.metadata.labels",
                "spec.template.spec.restartPolicy",
            ]
        );
        let mut partition = set();
        default_spec(&mut partition["spec"]);
        partition["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(-2);
        partition["spec"]["selector"] = json!({});
        assert_eq!(
            fields(&partition, None),
            ["spec.updateStrategy.rollingUpdate.partition", "spec.selector"]
        );
    }

    #[test]
    fn updates_may_change_only_upstreams_list() {
        let mut old = set();
        default_spec(&mut old["spec"]);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i:2");
        new["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(2);
        new["spec"]["minReadySeconds"] = json!(3);
        assert!(fields(&new, Some(&old)).is_empty());
        for (field, value) in [
            ("serviceName", json!("other")),
            ("podManagementPolicy", json!("Parallel")),
            ("volumeClaimTemplates", json!([])),
        ] {
            let mut changed = old.clone();
            changed["spec"][field] = value;
            assert_eq!(fields(&changed, Some(&old)), ["spec"], "{field}");
        }
    }

    #[test]
    fn revisions_keep_their_data() {
        let old = json!({"metadata": {"name": "web-1"}, "data": {"spec": {}}, "revision": 1});
        let mut causes = Vec::new();
        validate_revision(&old, None, &mut causes);
        assert!(causes.is_empty());
        let mut new = old.clone();
        new["data"] = json!({"spec": {"x": 1}});
        new["revision"] = json!(-1);
        validate_revision(&new, Some(&old), &mut causes);
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["revision", "data"]);
    }
}
