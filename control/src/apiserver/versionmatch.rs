//! `resourceVersionMatch` on lists and watches, checked as upstream's ValidateListOptions
//! checks it (422 Invalid, `ListOptions.meta.k8s.io`, naming the field).

use super::{
    request::Query,
    status::{ApiError, Cause},
};

/// How a list's `resourceVersion` is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionMatch {
    /// Unset or `NotOlderThan`: the current state satisfies it.
    NotOlderThan,
    /// `Exact`: the state at exactly that revision (410 once compacted).
    Exact,
}

fn forbidden(message: &str) -> Cause {
    Cause {
        field: "resourceVersionMatch".into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {message}"),
    }
}

fn not_supported(value: &str, allowed: &[&str]) -> Cause {
    let allowed = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    Cause {
        field: "resourceVersionMatch".into(),
        reason: "FieldValueNotSupported",
        message: format!("Unsupported value: {value:?}: supported values: {allowed}"),
    }
}

/// Validates a list's (`watch` false) or a watch's options.
pub fn validate(query: &Query, watch: bool) -> Result<VersionMatch, ApiError> {
    let Some(m) = query.get("resourceVersionMatch") else {
        return Ok(VersionMatch::NotOlderThan);
    };
    let mut causes = Vec::new();
    if watch {
        if query.get("sendInitialEvents").is_none() {
            causes.push(forbidden(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if m != "NotOlderThan" {
            causes.push(not_supported(m, &["NotOlderThan"]));
        }
    } else {
        if query.get("resourceVersion").is_none() {
            causes.push(forbidden(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !matches!(m, "Exact" | "NotOlderThan") {
            causes.push(not_supported(m, &["Exact", "NotOlderThan", ""]));
        }
        if m == "Exact" && query.get("resourceVersion") == Some("0") {
            causes.push(forbidden(
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if query.get("continue").is_some() {
        causes.push(forbidden("resourceVersionMatch is forbidden when continue is provided"));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", causes));
    }
    Ok(if m == "Exact" {
        VersionMatch::Exact
    } else {
        VersionMatch::NotOlderThan
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    #[test]
    fn combinations_are_checked_as_upstream() {
        assert_eq!(validate(&q(""), false).unwrap(), VersionMatch::NotOlderThan);
        assert_eq!(
            validate(&q("resourceVersion=5&resourceVersionMatch=Exact"), false).unwrap(),
            VersionMatch::Exact
        );
        for bad in [
            "resourceVersionMatch=Exact",
            "resourceVersion=0&resourceVersionMatch=Exact",
            "resourceVersion=5&resourceVersionMatch=Newest",
            "resourceVersion=5&resourceVersionMatch=Exact&continue=abc",
        ] {
            let e = validate(&q(bad), false).unwrap_err();
            assert_eq!(e.code, 422, "{bad}");
            assert!(e.message.contains("resourceVersionMatch"), "{bad}: {}", e.message);
        }
        assert_eq!(
            validate(&q("resourceVersionMatch=NotOlderThan"), true)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            validate(&q("sendInitialEvents=true&resourceVersionMatch=NotOlderThan"), true).unwrap(),
            VersionMatch::NotOlderThan
        );
    }
}
