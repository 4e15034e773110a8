//! The four PATCH flavours of the Kubernetes API, applied to objects held as JSON.
//!
//! - [`PatchType::JsonPatch`] (RFC 6902), including `test` operations: kube-rs' finalizer
//!   helpers guard their edits with them, so a failed `test` is its own error
//!   ([`PatchError::TestFailed`]).
//! - [`PatchType::MergePatch`] (RFC 7386): `null` deletes, objects merge, lists replace.
//! - [`PatchType::StrategicMergePatch`]: merge patch, except that the lists of built-in
//!   types that Kubernetes tags with a patch strategy merge (containers by `name`,
//!   Service ports by `port`, conditions by `type`, finalizers as a set, ...: the table
//!   is in `schema.rs`), and the `$patch`, `$retainKeys`, `$setElementOrder/…` and
//!   `$deleteFromPrimitiveList/…` directives apply. Unknown kinds get merge-patch
//!   semantics for their lists, but directives are still honoured and never left in the
//!   result.
//! - [`PatchType::Apply`] (server-side apply) without field ownership: the applied
//!   configuration, YAML or JSON, is merged into the live object with strategic-merge
//!   semantics (fields the applier omits are kept, `null` deletes, `$`-keys are ordinary
//!   fields). The API server uses this only where no field manager is involved (the scale
//!   subresource); requests with a field manager go through `apiserver::managed`, which
//!   tracks `metadata.managedFields`, reports conflicts and removes what an applier stops
//!   applying. Both read list types from this module's table ([`list_type`]).
//!
//! Keeping `metadata.name`, `uid` and the like unchanged is the caller's job: this module
//! only patches.

pub(crate) mod schema;
mod strategic;

pub use schema::{LIST_MAP_KEY_DEFAULTS, ListType, list_type, map_is_atomic};
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

/// The patch flavour, chosen by the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchType {
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
    Apply,
}

impl PatchType {
    /// `None` for anything else, including `application/apply-patch+cbor`: the server
    /// answers those with 415 Unsupported Media Type.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let eq = |m: &str| media.eq_ignore_ascii_case(m);
        Some(if eq("application/json-patch+json") {
            Self::JsonPatch
        } else if eq("application/merge-patch+json") {
            Self::MergePatch
        } else if eq("application/strategic-merge-patch+json") {
            Self::StrategicMergePatch
        } else if eq("application/apply-patch+yaml") {
            Self::Apply
        } else {
            return None;
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::JsonPatch => "application/json-patch+json",
            Self::MergePatch => "application/merge-patch+json",
            Self::StrategicMergePatch => "application/strategic-merge-patch+json",
            Self::Apply => "application/apply-patch+yaml",
        }
    }
}

/// Why a patch could not be applied. Paths are JSON pointers for JSON patches and dotted
/// field paths (`spec.template.spec.containers`) for the merging kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("unable to decode the {format} patch body: {reason}")]
    Decode { format: &'static str, reason: String },
    #[error("the {format} patch body must be a JSON object, not {found}")]
    NotAnObject { format: &'static str, found: &'static str },
    /// A JSON patch `test` operation found a different value, or none, at `path`.
    #[error("json patch test operation failed: the value at {path:?} does not match")]
    TestFailed { path: String },
    /// Any other JSON patch operation that could not be applied, e.g. a missing path.
    #[error("json patch operation {index} ({op}) failed at {path:?}: {reason}")]
    JsonPatch {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// Over [`MAX_JSON_PATCH_OPERATIONS`].
    #[error("the allowed maximum operations in a json patch is {MAX_JSON_PATCH_OPERATIONS}, got {count}")]
    TooManyOperations { count: usize },
    #[error("{path}: unknown strategic merge patch directive {directive:?}")]
    UnknownDirective { path: String, directive: String },
    #[error("{path}: invalid {directive}: {reason}")]
    InvalidDirective {
        path: String,
        directive: String,
        reason: String,
    },
    #[error("{path}: list element {element} does not contain the merge key {key:?}")]
    MissingMergeKey {
        path: String,
        key: &'static str,
        element: String,
    },
}

impl PatchError {
    /// The status Kubernetes answers with: 400 Bad Request for a malformed patch, 422
    /// Unprocessable Entity for a well-formed JSON patch that does not apply, 413 Request
    /// Entity Too Large for too many JSON patch operations.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::TestFailed { .. } | Self::JsonPatch { .. } => 422,
            Self::TooManyOperations { .. } => 413,
            _ => 400,
        }
    }
}

/// Applies `body` to `current` (which may be `Null`, for an apply that creates). `kind`
/// selects the strategic merge metadata; it does not matter for the other types.
pub fn apply_patch(kind: &str, current: &Value, body: &[u8], patch_type: PatchType) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::JsonPatch => json_patch(current, body),
        PatchType::MergePatch => {
            let patch = object(decode_json(body, "merge")?, "merge")?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &Value::Object(patch));
            Ok(doc)
        }
        PatchType::StrategicMergePatch => strategic::merge(
            kind,
            current,
            &object(decode_json(body, "strategic merge")?, "strategic merge")?,
            true,
        ),
        PatchType::Apply => strategic::merge(kind, current, &object(decode_apply(body)?, "apply")?, false),
    }
}

/// Kubernetes' limit.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// What all `copy` operations of one JSON patch may copy, in bytes of JSON: copying a
/// value into itself doubles the object each time, so a few dozen operations could
/// otherwise exhaust memory.
const MAX_JSON_PATCH_COPIED: usize = 3 * 1024 * 1024;

fn json_patch(current: &Value, body: &[u8]) -> Result<Value, PatchError> {
    use json_patch::PatchOperation as Op;
    let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| PatchError::Decode {
        format: "json",
        reason: e.to_string(),
    })?;
    if patch.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations { count: patch.0.len() });
    }
    let mut doc = current.clone();
    let mut copied = 0;
    for (index, op) in patch.0.iter().enumerate() {
        if let Op::Copy(c) = op
            && let Some(source) = doc.pointer(c.from.as_str())
        {
            copied += json_size(source, MAX_JSON_PATCH_COPIED - copied);
            if copied >= MAX_JSON_PATCH_COPIED {
                let reason = format!("the operations copy more than the limit of {MAX_JSON_PATCH_COPIED} bytes");
                return Err(PatchError::JsonPatch {
                    index,
                    op: "copy",
                    path: c.path.to_string(),
                    reason,
                });
            }
        }
        // Like Kubernetes (evanphx/json-patch), testing for `null` at an absent member of an
        // existing object succeeds: kube-rs' finalizer helper tests
        // `/metadata/finalizers` for null before adding the first finalizer.
        if let Op::Test(t) = op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none()
            && t.path
                .parent()
                .is_some_and(|p| doc.pointer(p.as_str()).is_some_and(Value::is_object))
        {
            continue;
        }
        // One operation at a time, on a copy: `json_patch::patch` would roll back, and
        // panics if the rollback fails.
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)).map_err(|e| {
            let path = e.path.to_string();
            let op = match op {
                Op::Test(_) => return PatchError::TestFailed { path },
                Op::Add(_) => "add",
                Op::Remove(_) => "remove",
                Op::Replace(_) => "replace",
                Op::Move(_) => "move",
                Op::Copy(_) => "copy",
            };
            PatchError::JsonPatch {
                index,
                op,
                path,
                reason: e.kind.to_string(),
            }
        })?;
    }
    Ok(doc)
}

/// The length of `v` as JSON, counted up to `limit` (which it returns when exceeded)
/// without serializing anything larger.
fn json_size(v: &Value, limit: usize) -> usize {
    struct Counter(usize, usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > self.1 {
                Err(std::io::ErrorKind::FileTooLarge.into())
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0, limit);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => limit,
    }
}

fn decode_json(body: &[u8], format: &'static str) -> Result<Value, PatchError> {
    serde_json::from_slice(body).map_err(|e| PatchError::Decode {
        format,
        reason: e.to_string(),
    })
}

/// kubectl sends JSON, hand-written applies are YAML. The YAML reading is the one
/// Kubernetes' (YAML 1.1) gives manifests for octal (`defaultMode: 0644` is 420), but
/// `yes`/`on` stay strings: a string field holding a boolean would break every client
/// decoding the object, where Kubernetes would have rejected the apply.
fn decode_apply(body: &[u8]) -> Result<Value, PatchError> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let options = serde_saphyr::options! {
        legacy_octal_numbers: true,
        strict_booleans: true,
        with_snippet: false,
    };
    serde_saphyr::from_slice_with_options(body, options).map_err(|e| PatchError::Decode {
        format: "apply",
        reason: e.to_string(),
    })
}

/// An apply body (YAML or JSON), which must be an object.
pub fn decode_apply_config(body: &[u8]) -> Result<Map<String, Value>, PatchError> {
    object(decode_apply(body)?, "apply")
}

fn object(v: Value, format: &'static str) -> Result<Map<String, Value>, PatchError> {
    let found = match v {
        Value::Object(m) => return Ok(m),
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
    };
    Err(PatchError::NotAnObject { format, found })
}
