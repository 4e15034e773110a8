//! `metadata.managedFields` read and written: one entry per manager, operation,
//! subresource (and, for updates, apiVersion), as upstream keys them.

use serde_json::{Map, Value, json};

use super::fieldset::FieldSet;

pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`; anything else a client wrote is kept as written (it owns
    /// nothing it did not claim, and goes once its set is empty).
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    /// Empty for the main resource.
    pub subresource: String,
    pub fields: FieldSet,
}

impl Entry {
    pub fn new(manager: &str, operation: &str, api_version: &str, subresource: &str) -> Self {
        Entry {
            manager: manager.to_owned(),
            operation: operation.to_owned(),
            api_version: api_version.to_owned(),
            time: None,
            subresource: subresource.to_owned(),
            fields: FieldSet::new(),
        }
    }

    /// Upstream's manager identity: applies by one manager are one entry whatever version
    /// they used; updates are kept apart per apiVersion.
    pub fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == APPLY || self.api_version == other.api_version)
    }

    /// As conflict messages name it: `"kubectl-edit" using apps/v1`, `"a"`,
    /// `"kubectl" with subresource "scale" using apps/v1`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation != APPLY {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn decode(v: &Value) -> Result<Entry, String> {
        let Value::Object(m) = v else {
            return Err("an entry must be an object".into());
        };
        let text = |field: &str| -> Result<String, String> {
            match m.get(field) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{field} must be a string")),
            }
        };
        let fields = match m.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::new(),
            Some(f) => {
                match text("fieldsType")?.as_str() {
                    "FieldsV1" => {}
                    other => return Err(format!("fieldsType {other:?} is not FieldsV1")),
                }
                FieldSet::from_fields_v1(f)?
            }
        };
        let time = text("time")?;
        Ok(Entry {
            manager: text("manager")?,
            operation: text("operation")?,
            api_version: text("apiVersion")?,
            time: (!time.is_empty()).then_some(time),
            subresource: text("subresource")?,
            fields,
        })
    }

    fn encode(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        };
        put("manager", &self.manager);
        put("operation", &self.operation);
        put("apiVersion", &self.api_version);
        put("time", self.time.as_deref().unwrap_or_default());
        put("subresource", &self.subresource);
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        Value::Object(m)
    }
}

/// The entries of an object; none when it has none. An entry that does not decode makes
/// the whole list unusable, as upstream treats it.
pub fn decode(obj: &Value) -> Result<Vec<Entry>, String> {
    match &obj["metadata"]["managedFields"] {
        Value::Null => Ok(vec![]),
        Value::Array(items) => items.iter().map(Entry::decode).collect(),
        _ => Err("metadata.managedFields must be a list".into()),
    }
}

/// Writes `entries` (those that own something) into `obj`, in upstream's order: applies
/// first, then by time, manager, apiVersion and subresource. No entries: no field.
pub fn encode_into(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let meta = crate::apiserver::meta::metadata_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::encode).collect()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_sort_applies_first() {
        let obj = json!({"metadata": {"managedFields": [
            {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "apps/v1",
             "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:paused": {}}}},
            {"manager": "a", "operation": "Apply", "apiVersion": "apps/v1",
             "time": "2026-01-02T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "gone", "operation": "Update", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {}},
        ]}});
        let entries = decode(&obj).unwrap();
        assert_eq!(entries.len(), 3);
        let mut out = json!({"metadata": {}});
        encode_into(&mut out, entries);
        let list = out["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(list.len(), 2, "the entry that owns nothing goes");
        assert_eq!(list[0]["manager"], "a");
        assert_eq!(list[1]["fieldsV1"], json!({"f:spec": {"f:paused": {}}}));
    }

    #[test]
    fn identity_and_description_follow_upstream() {
        let a1 = Entry::new("a", APPLY, "apps/v1", "");
        let a2 = Entry::new("a", APPLY, "apps/v1beta1", "");
        assert!(a1.same_manager(&a2));
        let u1 = Entry::new("a", UPDATE, "apps/v1", "");
        let u2 = Entry::new("a", UPDATE, "apps/v1beta1", "");
        assert!(!u1.same_manager(&u2) && !u1.same_manager(&a1));
        assert_eq!(a1.describe(), "\"a\"");
        assert_eq!(u1.describe(), "\"a\" using apps/v1");
        assert_eq!(
            Entry::new("kubectl", UPDATE, "apps/v1", "scale").describe(),
            "\"kubectl\" with subresource \"scale\" using apps/v1"
        );
    }

    #[test]
    fn malformed_entries_are_reported() {
        assert!(decode(&json!({"metadata": {"managedFields": "x"}})).is_err());
        assert!(decode(&json!({"metadata": {"managedFields": [{"fieldsType": "FieldsV2", "fieldsV1": {}}]}})).is_err());
        assert_eq!(decode(&json!({"metadata": {"managedFields": [{}]}})).unwrap().len(), 1);
    }
}
