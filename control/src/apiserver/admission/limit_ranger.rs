//! LimitRanger and the `v1 LimitRange` type it reads: a namespace's LimitRanges give
//! containers default requests and limits (mutating), and refuse pods whose containers,
//! or the pod as a whole, fall outside `min`/`max`/`maxLimitRequestRatio`, and
//! PersistentVolumeClaims whose storage request falls outside `min`/`max` (validating).
//! Messages are upstream's, quantities in their canonical form
//! (`maximum cpu usage per Container is 1, but limit is 2`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Attributes, Operation};
use crate::{
    apiserver::{
        App,
        filter::ObjectFilter,
        registry::Scope,
        resources,
        status::{ApiError, Cause},
    },
    scheduler::quantity,
};

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// A resource list (`requests`, `limits`, `min`, ...) as name → quantity text.
type List = BTreeMap<String, String>;

fn list(v: &Value) -> List {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, q)| quantity_text(q).map(|q| (k.clone(), q)))
                .collect()
        })
        .unwrap_or_default()
}

/// Quantities are strings on the wire, but YAML users write `cpu: 1`.
fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn milli(q: &str) -> i64 {
    quantity::milli(q)
}

/// A quantity as upstream's `Quantity.String()` writes it: milli-units when fractional
/// ("500m"), else the largest exact suffix of the form it was written in ("1Gi", "2k").
pub fn canonical(q: &str) -> String {
    let binary = q.trim().ends_with('i');
    format_milli(milli(q), binary)
}

fn format_milli(m: i64, binary: bool) -> String {
    if m % 1000 != 0 {
        return format!("{m}m");
    }
    let units = m / 1000;
    if units == 0 {
        return "0".into();
    }
    let suffixes: &[(&str, i64)] = if binary {
        &[
            ("Ei", 1 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ]
    } else {
        &[
            ("E", 1_000_000_000_000_000_000),
            ("P", 1_000_000_000_000_000),
            ("T", 1_000_000_000_000),
            ("G", 1_000_000_000),
            ("M", 1_000_000),
            ("k", 1_000),
        ]
    };
    for (suffix, factor) in suffixes {
        if units % factor == 0 {
            return format!("{}{suffix}", units / factor);
        }
    }
    units.to_string()
}

fn is_binary(q: &str) -> bool {
    q.trim().ends_with('i')
}

// ---- the LimitRange type -------------------------------------------------------------

/// Upstream's SetDefaults_LimitRangeItem: a Container item's default limit is its max, its
/// default request its default limit, else its min.
pub fn default_limit_range(obj: &mut Value) {
    let Some(items) = obj["spec"]["limits"].as_array_mut() else {
        return;
    };
    for item in items {
        if item["type"] != "Container" {
            continue;
        }
        let (min, max) = (item["min"].clone(), item["max"].clone());
        for field in ["default", "defaultRequest"] {
            if !item[field].is_object() {
                item[field] = json!({});
            }
        }
        fill(&mut item["default"], &max);
        let default = item["default"].clone();
        fill(&mut item["defaultRequest"], &default);
        fill(&mut item["defaultRequest"], &min);
        for field in ["default", "defaultRequest"] {
            if item[field].as_object().is_some_and(Map::is_empty)
                && let Some(m) = item.as_object_mut()
            {
                m.remove(field);
            }
        }
    }
}

fn fill(target: &mut Value, from: &Value) {
    let (Some(t), Some(f)) = (target.as_object_mut(), from.as_object()) else {
        return;
    };
    for (k, v) in f {
        t.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Upstream's ValidateLimitRange, for what clients get wrong: the type, quantities that
/// do not parse or are negative, min above max, defaults outside min..max, a default
/// request above the default limit, a ratio below 1, defaults on a Pod item, and a
/// PersistentVolumeClaim item without a storage bound.
pub fn validate_limit_range(obj: &Value, causes: &mut Vec<Cause>) {
    let items = obj["spec"]["limits"].as_array().cloned().unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        let ty = item["type"].as_str().unwrap_or_default();
        if ty.is_empty() {
            causes.push(Cause::required(format!("{at}.type")));
        }
        let lists: BTreeMap<&str, List> = ["min", "max", "default", "defaultRequest", "maxLimitRequestRatio"]
            .into_iter()
            .map(|f| (f, list(&item[f])))
            .collect();
        for (field, l) in &lists {
            for (k, q) in l {
                if !quantity::is_valid(q) {
                    causes.push(Cause::invalid(
                        format!("{at}.{field}[{k}]"),
                        format!("Invalid value: {q:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
                    ));
                } else if milli(q) < 0 {
                    causes.push(Cause::invalid(
                        format!("{at}.{field}[{k}]"),
                        format!("Invalid value: {q:?}: must be greater than or equal to 0"),
                    ));
                }
            }
        }
        if ty == "Pod" {
            for field in ["default", "defaultRequest"] {
                if !lists[field].is_empty() {
                    causes.push(Cause {
                        field: format!("{at}.{field}"),
                        reason: "FieldValueForbidden",
                        message: "Forbidden: may not be specified when `type` is 'Pod'".into(),
                    });
                }
            }
        }
        if ty == "PersistentVolumeClaim"
            && !lists["min"].contains_key("storage")
            && !lists["max"].contains_key("storage")
        {
            causes.push(Cause {
                field: format!("{at}.limits"),
                reason: "FieldValueRequired",
                message:
                    "Required value: either minimum or maximum storage value is required, but neither was provided"
                        .into(),
            });
        }
        // Upstream's wording for each pair ("default request value 2 is greater than
        // default limit value 1"), blaming the lower bound's field.
        let mut order = |lo: &str, hi: &str| {
            let words = |f: &str| {
                match (f, lo, hi) {
                    ("default", "defaultRequest", "default") => "default limit",
                    ("defaultRequest", ..) => "default request",
                    (f, ..) => f,
                }
                .to_owned()
            };
            for (k, lo_q) in &lists[lo] {
                if let Some(hi_q) = lists[hi].get(k)
                    && milli(lo_q) > milli(hi_q)
                {
                    causes.push(Cause::invalid(
                        format!("{at}.{lo}[{k}]"),
                        format!(
                            "Invalid value: {lo_q:?}: {} value {} is greater than {} value {}",
                            words(lo),
                            canonical(lo_q),
                            words(hi),
                            canonical(hi_q)
                        ),
                    ));
                }
            }
        };
        order("min", "max");
        order("defaultRequest", "default");
        order("min", "defaultRequest");
        order("defaultRequest", "max");
        order("min", "default");
        order("default", "max");
        for (k, ratio) in &lists["maxLimitRequestRatio"] {
            if milli(ratio) < 1000 {
                causes.push(Cause::invalid(
                    format!("{at}.maxLimitRequestRatio[{k}]"),
                    format!("Invalid value: {ratio:?}: ratio must be greater than or equal to 1"),
                ));
            }
        }
    }
}

// ---- pods: defaults ------------------------------------------------------------------

/// Upstream's pod defaulting (SetDefaults_Pod, pods only, not templates): a container
/// with a limit and no request for a resource requests its limit.
pub fn default_requests_from_limits(spec: &mut Value) {
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let limits = c["resources"]["limits"].clone();
            let Some(limits) = limits.as_object().filter(|l| !l.is_empty()) else {
                continue;
            };
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            if let Some(requests) = c["resources"]["requests"].as_object_mut() {
                for (k, v) in limits {
                    requests.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
}

/// The Container items' `defaultRequest` and `default`, merged over the LimitRange.
fn container_defaults(limit_range: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let (mut requests, mut limits) = (Map::new(), Map::new());
    for item in limit_range["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"] != "Container" {
            continue;
        }
        if let Some(r) = item["defaultRequest"].as_object() {
            requests.extend(r.clone());
        }
        if let Some(l) = item["default"].as_object() {
            limits.extend(l.clone());
        }
    }
    (requests, limits)
}

/// Sets the missing defaults on every container; returns upstream's annotation text for
/// what it set (`cpu, memory request for container app`), if anything.
pub fn apply_defaults(spec: &mut Value, limit_range: &Value) -> Vec<String> {
    let (requests, limits) = container_defaults(limit_range);
    let mut notes = Vec::new();
    if requests.is_empty() && limits.is_empty() {
        return notes;
    }
    for (list, label) in [("initContainers", "init container"), ("containers", "container")] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let mut set = |field: &str, defaults: &Map<String, Value>| {
                if !c["resources"][field].is_object() {
                    c["resources"][field] = json!({});
                }
                let mut names = Vec::new();
                if let Some(have) = c["resources"][field].as_object_mut() {
                    for (k, v) in defaults {
                        if !have.contains_key(k) {
                            have.insert(k.clone(), v.clone());
                            names.push(k.clone());
                        }
                    }
                }
                if c["resources"][field].as_object().is_some_and(Map::is_empty)
                    && let Some(r) = c["resources"].as_object_mut()
                {
                    r.remove(field);
                }
                names
            };
            let set_limits = set("limits", &limits);
            let set_requests = set("requests", &requests);
            if !set_requests.is_empty() {
                notes.push(format!("{} request for {label} {name}", set_requests.join(", ")));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {label} {name}", set_limits.join(", ")));
            }
        }
    }
    notes
}

// ---- pods and claims: limits -----------------------------------------------------------

fn min_constraint(kind: &str, res: &str, enforced: &str, req: &List, lim: &List) -> Option<String> {
    let e = canonical(enforced);
    let Some(r) = req.get(res) else {
        return Some(format!(
            "minimum {res} usage per {kind} is {e}.  No request is specified"
        ));
    };
    if milli(r) < milli(enforced) {
        return Some(format!(
            "minimum {res} usage per {kind} is {e}, but request is {}",
            canonical(r)
        ));
    }
    match lim.get(res) {
        Some(l) if milli(l) < milli(enforced) => Some(format!(
            "minimum {res} usage per {kind} is {e}, but limit is {}",
            canonical(l)
        )),
        _ => None,
    }
}

fn max_constraint(kind: &str, res: &str, enforced: &str, req: &List, lim: &List) -> Option<String> {
    let e = canonical(enforced);
    let Some(l) = lim.get(res) else {
        return Some(format!("maximum {res} usage per {kind} is {e}.  No limit is specified"));
    };
    if milli(l) > milli(enforced) {
        return Some(format!(
            "maximum {res} usage per {kind} is {e}, but limit is {}",
            canonical(l)
        ));
    }
    match req.get(res) {
        Some(r) if milli(r) > milli(enforced) => Some(format!(
            "maximum {res} usage per {kind} is {e}, but request is {}",
            canonical(r)
        )),
        _ => None,
    }
}

fn ratio_constraint(kind: &str, res: &str, enforced: &str, req: &List, lim: &List) -> Option<String> {
    let e = canonical(enforced);
    let r = req.get(res).map(|q| milli(q)).filter(|r| *r != 0);
    let Some(r) = r else {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {e}, but no request is specified or request is 0"
        ));
    };
    let l = lim.get(res).map(|q| milli(q)).filter(|l| *l != 0);
    let Some(l) = l else {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {e}, but no limit is specified or limit is 0"
        ));
    };
    let observed = l as f64 / r as f64;
    (observed * 1000.0 > milli(enforced) as f64)
        .then(|| format!("{res} max limit to request ratio per {kind} is {e}, but provided ratio is {observed:.6}"))
}

fn check(kind: &str, item: &Value, req: &List, lim: &List, errors: &mut Vec<String>) {
    for (res, q) in list(&item["min"]) {
        errors.extend(min_constraint(kind, &res, &q, req, lim));
    }
    for (res, q) in list(&item["max"]) {
        errors.extend(max_constraint(kind, &res, &q, req, lim));
    }
    for (res, q) in list(&item["maxLimitRequestRatio"]) {
        errors.extend(ratio_constraint(kind, &res, &q, req, lim));
    }
}

/// Sums (containers) or takes the larger (init containers, which run one at a time).
fn combine(into: &mut BTreeMap<String, (i64, bool)>, from: &List, sum: bool) {
    for (k, q) in from {
        let m = milli(q);
        let entry = into.entry(k.clone()).or_insert((0, is_binary(q)));
        entry.0 = if sum { entry.0 + m } else { entry.0.max(m) };
        entry.1 |= is_binary(q);
    }
}

fn pod_totals(spec: &Value, field: &str) -> List {
    let mut total = BTreeMap::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        combine(&mut total, &list(&c["resources"][field]), true);
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        combine(&mut total, &list(&c["resources"][field]), false);
    }
    total
        .into_iter()
        .map(|(k, (m, binary))| (k, format_milli(m, binary)))
        .collect()
}

/// Everything about `spec` that breaks `limit_range`, in upstream's order.
pub fn pod_violations(spec: &Value, limit_range: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for item in limit_range["spec"]["limits"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("Container") => {
                for list_name in ["containers", "initContainers"] {
                    for c in spec[list_name].as_array().into_iter().flatten() {
                        let req = list(&c["resources"]["requests"]);
                        let lim = list(&c["resources"]["limits"]);
                        check("Container", item, &req, &lim, &mut errors);
                    }
                }
            }
            Some("Pod") => {
                let (req, lim) = (pod_totals(spec, "requests"), pod_totals(spec, "limits"));
                check("Pod", item, &req, &lim, &mut errors);
            }
            _ => {}
        }
    }
    errors
}

/// A claim's storage request against the PersistentVolumeClaim items.
pub fn claim_violations(claim: &Value, limit_range: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let req = list(&claim["spec"]["resources"]["requests"]);
    let lim = list(&claim["spec"]["resources"]["limits"]);
    for item in limit_range["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"] != "PersistentVolumeClaim" {
            continue;
        }
        for (res, q) in list(&item["min"]) {
            errors.extend(min_constraint("PersistentVolumeClaim", &res, &q, &req, &lim));
        }
        for (res, q) in list(&item["max"]) {
            errors.extend(max_request_constraint("PersistentVolumeClaim", &res, &q, &req));
        }
    }
    errors
}

fn max_request_constraint(kind: &str, res: &str, enforced: &str, req: &List) -> Option<String> {
    let e = canonical(enforced);
    let Some(r) = req.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {e}.  No request is specified"
        ));
    };
    (milli(r) > milli(enforced))
        .then(|| format!("maximum {res} usage per {kind} is {e}, but request is {}", canonical(r)))
}

/// Upstream's error aggregate: one message alone, several as `[a, b]`.
fn aggregate(errors: &[String]) -> String {
    if errors.len() == 1 {
        errors[0].clone()
    } else {
        format!("[{}]", errors.join(", "))
    }
}

// ---- the plugin ------------------------------------------------------------------------

/// What the plugin looks at: new pods (never their updates: containers are immutable),
/// and claims, created or resized.
fn applies(attrs: &Attributes<'_>, obj: &Value) -> Option<&'static str> {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return None;
    }
    if attrs.is_main("", "pods") && attrs.operation == Operation::Create {
        return Some("Pod");
    }
    if attrs.is_main("", "persistentvolumeclaims") && matches!(attrs.operation, Operation::Create | Operation::Update) {
        return Some("PersistentVolumeClaim");
    }
    None
}

async fn limit_ranges(app: &App, ns: &str) -> Result<Vec<Value>, ApiError> {
    let Some(rt) = resources::find("", "v1", "limitranges") else {
        return Ok(vec![]);
    };
    let filter = ObjectFilter::default();
    let scope = Scope {
        rt,
        namespace: Some(ns),
        filter: &filter,
    };
    Ok(app.registry.list(&scope, None, None, None, false).await?.items)
}

pub async fn admit(app: &App, attrs: &Attributes<'_>, obj: &mut Value, _old: Option<&Value>) -> Result<(), ApiError> {
    if applies(attrs, obj) != Some("Pod") {
        return Ok(());
    }
    let Some(ns) = attrs.namespace() else { return Ok(()) };
    let mut notes = Vec::new();
    for lr in limit_ranges(app, ns).await? {
        notes.extend(apply_defaults(&mut obj["spec"], &lr));
    }
    if !notes.is_empty() {
        let m = crate::apiserver::meta::metadata_mut(obj);
        let annotations = m.entry("annotations").or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
    Ok(())
}

pub async fn validate(app: &App, attrs: &Attributes<'_>, obj: &Value, _old: Option<&Value>) -> Result<(), ApiError> {
    let Some(kind) = applies(attrs, obj) else { return Ok(()) };
    let Some(ns) = attrs.namespace() else { return Ok(()) };
    for lr in limit_ranges(app, ns).await? {
        let errors = match kind {
            "Pod" => pod_violations(&obj["spec"], &lr),
            _ => claim_violations(obj, &lr),
        };
        if !errors.is_empty() {
            return Err(super::forbidden(attrs, obj, aggregate(&errors)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(limits: Value) -> Value {
        let mut obj = json!({"spec": {"limits": limits}});
        default_limit_range(&mut obj);
        obj
    }

    #[test]
    fn canonical_quantities() {
        assert_eq!(canonical("2000m"), "2");
        assert_eq!(canonical("500m"), "500m");
        assert_eq!(canonical("1024Mi"), "1Gi");
        assert_eq!(canonical("128Mi"), "128Mi");
        assert_eq!(canonical("1000"), "1k");
        assert_eq!(canonical("1.5"), "1500m");
        assert_eq!(canonical("0"), "0");
    }

    #[test]
    fn limit_range_defaults_follow_max_then_min() {
        let obj = lr(json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]));
        let item = &obj["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(item["defaultRequest"], json!({"cpu": "1", "memory": "64Mi"}));
        let obj = lr(json!([{"type": "Pod", "max": {"cpu": "1"}}]));
        assert!(obj["spec"]["limits"][0]["default"].is_null(), "Pod items get none");
    }

    #[test]
    fn limit_range_validation_names_fields() {
        let mut causes = vec![];
        validate_limit_range(
            &json!({"spec": {"limits": [
                {"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "500m"}},
                {"type": "Pod", "default": {"cpu": "1"}},
                {"type": "PersistentVolumeClaim", "max": {"cpu": "1"}},
                {"min": {"cpu": "x"}},
            ]}}),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.limits[0].min[cpu]"), "{fields:?}");
        assert!(
            fields.contains(&"spec.limits[0].maxLimitRequestRatio[cpu]"),
            "{fields:?}"
        );
        assert!(fields.contains(&"spec.limits[1].default"), "{fields:?}");
        assert!(fields.contains(&"spec.limits[2].limits"), "{fields:?}");
        assert!(fields.contains(&"spec.limits[3].type"), "{fields:?}");
        assert!(fields.contains(&"spec.limits[3].min[cpu]"), "{fields:?}");
        let min_max = causes
            .iter()
            .find(|c| c.field == "spec.limits[0].min[cpu]")
            .map(|c| c.message.clone());
        assert_eq!(
            min_max.as_deref(),
            Some("Invalid value: \"2\": min value 2 is greater than max value 1")
        );
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let range = lr(
            json!([{"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"}}]),
        );
        let mut spec = json!({"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "2"}}},
        ], "initContainers": [{"name": "i"}]});
        let notes = apply_defaults(&mut spec, &range);
        assert_eq!(
            spec["containers"][0]["resources"]["limits"],
            json!({"cpu": "500m", "memory": "128Mi"})
        );
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"cpu": "100m", "memory": "128Mi"})
        );
        assert_eq!(spec["containers"][1]["resources"]["limits"]["cpu"], "2");
        assert_eq!(
            notes,
            vec![
                "cpu, memory request for init container i",
                "cpu, memory limit for init container i",
                "cpu, memory request for container a",
                "cpu, memory limit for container a",
                "memory request for container b",
                "memory limit for container b",
            ]
        );
    }

    #[test]
    fn container_and_pod_limits_speak_upstreams_messages() {
        let range = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}},
            {"type": "Pod", "max": {"memory": "1Gi"}, "maxLimitRequestRatio": {"cpu": "2"}},
        ]}});
        let spec = json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "2", "memory": "768Mi"}, "requests": {"cpu": "500m", "memory": "512Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "1", "memory": "32Mi"}}},
        ]});
        assert_eq!(
            pod_violations(&spec, &range),
            vec![
                "maximum cpu usage per Container is 1, but limit is 2",
                "minimum memory usage per Container is 64Mi, but request is 32Mi",
                "maximum memory usage per Pod is 1Gi, but limit is 1280Mi",
                "cpu max limit to request ratio per Pod is 2, but provided ratio is 2.000000",
            ]
            .into_iter()
            .filter(|m| !m.contains("ratio"))
            .collect::<Vec<_>>(),
            "a ratio of exactly 2 is allowed"
        );
        let spec = json!({"containers": [{"name": "a"}]});
        assert_eq!(
            pod_violations(&spec, &range)[..2],
            [
                "minimum memory usage per Container is 64Mi.  No request is specified",
                "maximum cpu usage per Container is 1.  No limit is specified",
            ]
        );
    }

    #[test]
    fn claims_are_held_to_storage_bounds() {
        let range = json!({"spec": {"limits": [{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]}});
        let claim = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert!(claim_violations(&claim("5Gi"), &range).is_empty());
        assert_eq!(
            claim_violations(&claim("20Gi"), &range),
            vec!["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]
        );
        assert_eq!(
            claim_violations(&claim("512Mi"), &range),
            vec!["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 512Mi"]
        );
    }
}
