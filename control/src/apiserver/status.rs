//! API errors and the `Status` objects clients parse them from.
//!
//! Every 4xx/5xx body is a `meta/v1 Status`: kubectl, kube-rs and the Python client all
//! decode it, and the `reason` (not the message) is what their retry logic keys on.

use serde_json::{Value, json};

/// One invalid field, as `details.causes[]` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// JSON path of the field, e.g. `spec.ports[0].port`.
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`.
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: message.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: message.into(),
        }
    }
    pub fn not_supported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: message.into(),
        }
    }
}

/// An error the API reports to its client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status: the object the error is about, and field causes.
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, Default)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let resource = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        Self {
            details: Some(Box::new(Details {
                name: name.into(),
                group: group.into(),
                kind: plural.into(),
                causes: vec![],
            })),
            ..Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
        }
    }
    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let resource = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        Self {
            details: Some(Box::new(Details {
                name: name.into(),
                group: group.into(),
                kind: plural.into(),
                causes: vec![],
            })),
            ..Self::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"))
        }
    }
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        let resource = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        Self {
            details: Some(Box::new(Details {
                name: name.into(),
                group: group.into(),
                kind: plural.into(),
                causes: vec![],
            })),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            )
        }
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, and protobuf for built-in kinds (got {content_type:?})"
            ),
        )
    }
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            details: Some(Box::new(Details {
                name: name.into(),
                group: group.into(),
                kind: kind.into(),
                causes,
            })),
            ..Self::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {summary}"))
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = json!({});
            // Go's omitempty: a cause about no field (an eviction's DisruptionBudget) has none.
            for (key, value) in [("name", &d.name), ("group", &d.group), ("kind", &d.kind)] {
                if !value.is_empty() {
                    details[key] = json!(value);
                }
            }
            if !d.causes.is_empty() {
                details["causes"] = d
                    .causes
                    .iter()
                    .map(|c| {
                        let mut cause = json!({ "reason": c.reason, "message": c.message });
                        if !c.field.is_empty() {
                            cause["field"] = json!(c.field);
                        }
                        cause
                    })
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

/// A `Success` Status, as DELETE returns for objects that are gone at once.
pub fn success(kind_plural: &str, group: &str, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": name, "group": group, "kind": kind_plural, "uid": uid },
    })
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        match e {
            S::Compacted { requested, compacted } => Self::gone(format!(
                "The resourceVersion for the provided list is too old (requested {requested}, oldest available {compacted})"
            )),
            other => {
                tracing::error!(error = %other, "storage error");
                Self::internal(format!("storage error: {other}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_each_field_in_causes() {
        let e = ApiError::invalid(
            "Service",
            "",
            "web",
            vec![Cause::invalid(
                "spec.ports[0].port",
                "must be between 1 and 65535, inclusive",
            )],
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.ports[0].port");
        assert!(s["message"].as_str().unwrap().contains("spec.ports[0].port"));
    }

    #[test]
    fn not_found_names_group_resource() {
        let s = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["group"], "apps");
    }
}
