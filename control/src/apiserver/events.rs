//! One storage for `core/v1` and `events.k8s.io/v1` Events, as upstream: both are kept in
//! the core form under one key prefix, and the events.k8s.io view is converted on the way
//! in and out, with the field renames of upstream's conversion (pkg/apis/events/v1).

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

/// events.k8s.io/v1 name ↔ core/v1 name; the other fields are spelled the same in both.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

const EVENTS_V1: &str = "events.k8s.io/v1";

fn is_events_v1(obj: &Value) -> bool {
    obj["apiVersion"] == EVENTS_V1 && obj["kind"] == "Event"
}

/// The group whose storage keys `rt` uses: the events.k8s.io Events are the core ones.
pub fn storage_group(rt: &ResourceType) -> &'static str {
    match (rt.group, rt.plural) {
        ("events.k8s.io", "events") | ("", _) => "core",
        (g, _) => g,
    }
}

fn rename(obj: &Value, api_version: &str, from_view: bool) -> Value {
    let Value::Object(src) = obj else { return obj.clone() };
    let mut out = Map::new();
    for (k, v) in src {
        let renamed = RENAMES.iter().find_map(|(view, core)| {
            let (from, to) = if from_view { (view, core) } else { (core, view) };
            (k == from).then_some(*to)
        });
        out.insert(renamed.unwrap_or(k).to_owned(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

/// The stored (core/v1) form of an object about to be written.
pub fn to_storage(obj: &Value) -> Value {
    if is_events_v1(obj) {
        rename(obj, "v1", true)
    } else {
        obj.clone()
    }
}

/// A stored object as `rt` serves it.
pub fn to_view(rt: &ResourceType, obj: Value) -> Value {
    if rt.group == "events.k8s.io" && obj["apiVersion"] == "v1" && obj["kind"] == "Event" {
        rename(&obj, EVENTS_V1, false)
    } else {
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_renamed_both_ways() {
        let view = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "note": "pulled", "reportingController": "kubelet", "reportingInstance": "n1",
            "regarding": {"kind": "Pod", "name": "p"}, "deprecatedCount": 3, "action": "Pull", "reason": "Pulled"});
        let core = to_storage(&view);
        assert_eq!(
            core,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
                "message": "pulled", "reportingComponent": "kubelet", "reportingInstance": "n1",
                "involvedObject": {"kind": "Pod", "name": "p"}, "count": 3, "action": "Pull", "reason": "Pulled"})
        );
        let rt = super::super::resources::find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(to_view(rt, core.clone()), view);
        let core_rt = super::super::resources::find("", "v1", "events").unwrap();
        assert_eq!(to_view(core_rt, core.clone()), core);
        assert_eq!(to_storage(&core), core);
    }
}
