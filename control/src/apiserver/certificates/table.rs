//! The Table cells `kubectl get csr` shows, as upstream's printer computes them.

use serde_json::{Value, json};

pub fn signer_name(o: &Value) -> Value {
    json!(
        o["spec"]["signerName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>")
    )
}

pub fn requestor(o: &Value) -> Value {
    json!(o["spec"]["username"].as_str().unwrap_or_default())
}

pub fn requested_duration(o: &Value) -> Value {
    match o["spec"]["expirationSeconds"].as_i64() {
        Some(s) => json!(human_duration(s)),
        None => json!("<none>"),
    }
}

/// Denied, else Approved, else Pending; then `,Failed` and `,Issued` when they apply.
pub fn condition(o: &Value) -> Value {
    let conditions = o["status"]["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |ty: &str| conditions.iter().any(|c| c["type"] == ty);
    let mut out = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_owned();
    if has("Failed") {
        out.push_str(",Failed");
    }
    if o["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
        out.push_str(",Issued");
    }
    json!(out)
}

/// apimachinery's `duration.HumanDuration`: two units while they say something, then one.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        }
    } else if y < 2 {
        format!("{d}d")
    } else if y < 8 {
        match d % 365 {
            0 => format!("{y}y"),
            r => format!("{y}y{r}d"),
        }
    } else {
        format!("{y}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_conditions_read_as_kubectl_prints_them() {
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(86400), "24h");
        assert_eq!(human_duration(7 * 86400), "7d");
        assert_eq!(human_duration(365 * 86400), "365d");
        let o = json!({"status": {"conditions": [{"type": "Approved"}], "certificate": "eA=="}});
        assert_eq!(condition(&o), "Approved,Issued");
        assert_eq!(condition(&json!({})), "Pending");
        assert_eq!(
            condition(&json!({"status": {"conditions": [{"type": "Denied"}]}})),
            "Denied"
        );
        assert_eq!(requested_duration(&json!({"spec": {}})), "<none>");
    }
}
