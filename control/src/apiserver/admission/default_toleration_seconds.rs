//! DefaultTolerationSeconds: a new pod tolerates a node that is not ready or unreachable
//! (the taints the node lifecycle puts on such nodes, effect NoExecute) for five minutes
//! by default, then it is evicted, unless it says otherwise.

use serde_json::{Value, json};

use super::{Attributes, Operation};
use crate::apiserver::{App, status::ApiError};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

pub async fn admit(app: &App, attrs: &Attributes<'_>, obj: &mut Value, _old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.operation != Operation::Create || !attrs.is_main("", "pods") {
        return Ok(());
    }
    let config = &app.admission;
    add_tolerations(
        &mut obj["spec"],
        config.not_ready_toleration.as_secs(),
        config.unreachable_toleration.as_secs(),
    );
    Ok(())
}

/// Adds the two tolerations unless the pod already tolerates the taint for NoExecute (a
/// toleration with that key, or one for every key, whose effect is NoExecute or empty).
pub fn add_tolerations(spec: &mut Value, not_ready_seconds: u64, unreachable_seconds: u64) {
    if !spec.is_object() {
        return;
    }
    let existing = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let tolerates = |key: &str| {
        existing.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            let k = t["key"].as_str().unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute") && (k == key || k.is_empty())
        })
    };
    let mut added = Vec::new();
    for (key, seconds) in [(NOT_READY, not_ready_seconds), (UNREACHABLE, unreachable_seconds)] {
        if !tolerates(key) {
            added.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
    if added.is_empty() {
        return;
    }
    let mut all = existing;
    all.extend(added);
    spec["tolerations"] = Value::Array(all);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_both_unless_tolerated() {
        let mut spec = json!({"containers": []});
        add_tolerations(&mut spec, 300, 300);
        assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(spec["tolerations"][0]["key"], NOT_READY);
        assert_eq!(spec["tolerations"][1]["tolerationSeconds"], 300);

        let mut spec = json!({"tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]});
        add_tolerations(&mut spec, 60, 300);
        let t = spec["tolerations"].as_array().cloned().unwrap_or_default();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5, "the pod's own is kept");
        assert_eq!(t[1]["key"], NOT_READY);
        assert_eq!(t[1]["tolerationSeconds"], 60);

        let mut spec = json!({"tolerations": [{"operator": "Exists"}]});
        add_tolerations(&mut spec, 300, 300);
        assert_eq!(
            spec["tolerations"].as_array().map(Vec::len),
            Some(1),
            "tolerates everything"
        );

        let mut spec = json!({"tolerations": [{"key": NOT_READY, "operator": "Exists", "effect": "NoSchedule"}]});
        add_tolerations(&mut spec, 300, 300);
        assert_eq!(
            spec["tolerations"].as_array().map(Vec::len),
            Some(3),
            "NoSchedule is not NoExecute"
        );
    }
}
