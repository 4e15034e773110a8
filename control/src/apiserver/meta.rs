//! Reading and writing the `metadata` of objects held as JSON.

use serde_json::{Map, Value, json};

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random RFC 4122 version-4 UUID, as Kubernetes uses for `metadata.uid`.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Five lowercase alphanumerics, for `generateName`.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The object's metadata map, created if missing or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("made an object above");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("made an object above")
}

pub fn str_field<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    metadata(obj)?.get(field)?.as_str()
}

pub fn name(obj: &Value) -> Option<&str> {
    str_field(obj, "name").filter(|s| !s.is_empty())
}

pub fn namespace(obj: &Value) -> Option<&str> {
    str_field(obj, "namespace").filter(|s| !s.is_empty())
}

pub fn uid(obj: &Value) -> &str {
    str_field(obj, "uid").unwrap_or_default()
}

pub fn resource_version(obj: &Value) -> Option<&str> {
    str_field(obj, "resourceVersion").filter(|s| !s.is_empty())
}

pub fn set_resource_version(obj: &mut Value, rv: i64) {
    metadata_mut(obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

pub fn deletion_timestamp(obj: &Value) -> Option<&str> {
    str_field(obj, "deletionTimestamp")
}

pub fn labels(obj: &Value) -> std::collections::BTreeMap<String, String> {
    metadata(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a stored value and stamps the store's revision on it as `resourceVersion`.
pub fn decode_stored(kv: &crate::store::KeyValue) -> Result<Value, super::status::ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| super::status::ApiError::internal(format!("stored object at {} is not JSON: {e}", kv.key)))?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// Serializes an object for storage. The resourceVersion is the store's, never the body's.
/// Objects served in several versions are stored in one (see `events`).
pub fn encode_for_store(obj: &Value) -> Vec<u8> {
    let mut obj = super::events::to_storage(obj);
    metadata_mut(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// The `PartialObjectMetadata` (meta.k8s.io/`version`) view of an object: its metadata only,
/// what metadata-only clients (kube-rs `get_metadata`, `metadata_watcher`) ask for.
pub fn partial_object_metadata(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A `PartialObjectMetadataList` of `items`, with the list's resourceVersion and continue token.
pub fn partial_object_metadata_list(
    items: &[Value],
    version: &str,
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": metadata,
        "items": items.iter().map(|o| partial_object_metadata(o, version)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_metadata_drops_everything_but_metadata() {
        let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"containers": []}});
        let p = partial_object_metadata(&pod, "v1");
        assert_eq!(
            p,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "p", "labels": {"a": "b"}}})
        );
        let list = partial_object_metadata_list(&[pod], "v1beta1", "9", Some("tok"));
        assert_eq!(list["apiVersion"], "meta.k8s.io/v1beta1");
        assert_eq!(list["metadata"], json!({"resourceVersion": "9", "continue": "tok"}));
        assert_eq!(list["items"][0]["metadata"]["name"], "p");
    }

    #[test]
    fn uids_look_like_v4_uuids() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
    }

    #[test]
    fn stored_form_has_no_resource_version() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode_for_store(&obj);
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(back["metadata"].get("resourceVersion").is_none());
    }
}
