//! PodDisruptionBudget (`policy/v1`) strategy: a created budget starts with an empty
//! status (the disruption controller fills it; a client must not hand itself disruptions),
//! and upstream's spec validation.

use serde_json::{Value, json};

use super::{selector::LabelSelector, selector::SelectorError, status::Cause};

/// The status upstream's PrepareForCreate leaves: every count zero.
pub fn default_on_create(obj: &mut Value) {
    obj["status"] = json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0});
}

const POLICIES: &[&str] = &["AlwaysAllow", "IfHealthyBudget"];

/// Upstream's ValidatePodDisruptionBudgetSpec: not both limits, each a non-negative count or
/// a percentage of at most 100%, a valid selector and a known unhealthy-pod policy.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if min.is_some() && max.is_some() {
        causes.push(Cause::invalid(
            "spec",
            "Invalid value: the spec: minAvailable and maxUnavailable cannot be both set",
        ));
    }
    if let Some(v) = min {
        validate_int_or_percent(v, "spec.minAvailable", causes);
    }
    if let Some(v) = max {
        validate_int_or_percent(v, "spec.maxUnavailable", causes);
    }
    if let Some(selector) = spec.get("selector")
        && let Err(e) = LabelSelector::from_label_selector_json(selector)
    {
        let (field, reason) = match e {
            SelectorError::InvalidObject { field, reason } => (format!("spec.selector.{field}"), reason),
            other => ("spec.selector".to_owned(), other.to_string()),
        };
        causes.push(Cause::invalid(field, format!("Invalid value: {reason}")));
    }
    if let Some(policy) = spec.get("unhealthyPodEvictionPolicy").and_then(Value::as_str)
        && !POLICIES.contains(&policy)
    {
        causes.push(Cause::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            format!("Unsupported value: {policy:?}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""),
        ));
    }
}

/// Upstream's ValidatePositiveIntOrPercent and IsNotMoreThan100Percent.
fn validate_int_or_percent(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    match v {
        Value::Number(n) => {
            if n.as_i64().is_none_or(|n| n < 0) {
                causes.push(Cause::invalid(
                    field,
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
            }
        }
        Value::String(s) => {
            let digits = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match digits.map(str::parse::<u64>) {
                Some(Ok(p)) if p <= 100 => {}
                Some(_) => causes.push(Cause::invalid(
                    field,
                    format!("Invalid value: {s:?}: must not be greater than 100%"),
                )),
                None => causes.push(Cause::invalid(
                    field,
                    format!(
                        "Invalid value: {s:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
                    ),
                )),
            }
        }
        other => causes.push(Cause::invalid(
            field,
            format!("Invalid value: {other}: must be an integer or a percentage"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(spec: Value) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        validate(&json!({"spec": spec}), &mut out);
        out.into_iter().map(|c| (c.field, c.reason)).collect()
    }

    #[test]
    fn valid_budgets_pass() {
        assert!(causes(json!({"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}})).is_empty());
        assert!(causes(json!({"maxUnavailable": "25%", "unhealthyPodEvictionPolicy": "AlwaysAllow"})).is_empty());
        assert!(causes(json!({"minAvailable": "100%"})).is_empty());
        assert!(causes(json!({})).is_empty(), "upstream allows neither limit");
    }

    #[test]
    fn each_bad_field_is_named() {
        let invalid = "FieldValueInvalid";
        assert_eq!(
            causes(json!({"minAvailable": -1})),
            [("spec.minAvailable".to_owned(), invalid)]
        );
        assert_eq!(
            causes(json!({"minAvailable": "1O%"})),
            [("spec.minAvailable".to_owned(), invalid)]
        );
        assert_eq!(
            causes(json!({"maxUnavailable": "101%"})),
            [("spec.maxUnavailable".to_owned(), invalid)]
        );
        assert_eq!(
            causes(json!({"minAvailable": 1, "maxUnavailable": 1})),
            [("spec".to_owned(), invalid)]
        );
        assert_eq!(
            causes(json!({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})),
            [("spec.selector.matchExpressions[0].values".to_owned(), invalid)]
        );
        assert_eq!(
            causes(json!({"unhealthyPodEvictionPolicy": "Sometimes"})),
            [("spec.unhealthyPodEvictionPolicy".to_owned(), "FieldValueNotSupported")]
        );
    }
}
