//! Just enough of Kubernetes' protobuf encoding to accept what kubectl >= 1.32 sends for
//! `create namespace|configmap|secret` (it POSTs protobuf there and does not fall back
//! to JSON). Bodies of other kinds still get 415 with a message saying so.
//!
//! Wire format: the magic `k8s\0`, then a `runtime.Unknown` (1: TypeMeta{1: apiVersion,
//! 2: kind}, 2: raw bytes of the object). Field numbers are those of k8s.io/api's
//! generated.proto.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One protobuf field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
}

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf body is malformed")
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(malformed)?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed())?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Other
            }
            _ => return Err(malformed()),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn fields(buf: &[u8]) -> impl Iterator<Item = Result<(u64, Field<'_>), ApiError>> {
    let mut r = Reader { buf };
    std::iter::from_fn(move || r.next().transpose())
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| ApiError::bad_request("a protobuf string field is not UTF-8"))
}

/// A map entry (1: key, 2: value).
fn entry(b: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let (mut k, mut v) = (String::new(), &b[..0]);
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => k = text(x)?,
            (2, Field::Bytes(x)) => v = x,
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for f in fields(b) {
        match f? {
            // Go's generated code writes empty strings too; empty means unset here.
            (1..=3, Field::Bytes([])) => {}
            (1, Field::Bytes(x)) => {
                m.insert("name".into(), json!(text(x)?));
            }
            (2, Field::Bytes(x)) => {
                m.insert("generateName".into(), json!(text(x)?));
            }
            (3, Field::Bytes(x)) => {
                m.insert("namespace".into(), json!(text(x)?));
            }
            (11, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                labels.insert(k, json!(text(v)?));
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                annotations.insert(k, json!(text(v)?));
            }
            (14, Field::Bytes(x)) => finalizers.push(json!(text(x)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn b64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

/// Decodes a protobuf body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("protobuf body lacks the k8s magic prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &unknown[..0]);
    for f in fields(unknown) {
        match f? {
            (1, Field::Bytes(tm)) => {
                for g in fields(tm) {
                    match g? {
                        (1, Field::Bytes(x)) => api_version = text(x)?,
                        (2, Field::Bytes(x)) => kind = text(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    if !matches!(kind.as_str(), "ConfigMap" | "Secret" | "Namespace") {
        return Err(ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf for kind {kind:?}"
        )));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let (mut data, mut binary, mut string_data) = (Map::new(), Map::new(), Map::new());
    for f in fields(raw) {
        let f = f?;
        match (kind.as_str(), f) {
            (_, (1, Field::Bytes(x))) => {
                obj.insert("metadata".into(), object_meta(x)?);
            }
            ("ConfigMap", (2, Field::Bytes(x))) => {
                let (k, v) = entry(x)?;
                data.insert(k, json!(text(v)?));
            }
            ("ConfigMap", (3, Field::Bytes(x))) => {
                let (k, v) = entry(x)?;
                binary.insert(k, b64(v));
            }
            ("ConfigMap", (4, Field::Varint(v))) | ("Secret", (5, Field::Varint(v))) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", (2, Field::Bytes(x))) => {
                let (k, v) = entry(x)?;
                data.insert(k, b64(v));
            }
            ("Secret", (3, Field::Bytes(x))) if !x.is_empty() => {
                obj.insert("type".into(), json!(text(x)?));
            }
            ("Secret", (4, Field::Bytes(x))) => {
                let (k, v) = entry(x)?;
                string_data.insert(k, json!(text(v)?));
            }
            ("Namespace", (2, Field::Bytes(spec))) => {
                let mut finalizers = Vec::new();
                for g in fields(spec) {
                    if let (1, Field::Bytes(x)) = g? {
                        finalizers.push(json!(text(x)?));
                    }
                }
                obj.insert("spec".into(), json!({"finalizers": finalizers}));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, n: u8, b: &[u8]) {
        out.push((n << 3) | 2);
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }

    fn entry_bytes(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        field(&mut e, 1, k.as_bytes());
        field(&mut e, 2, v);
        e
    }

    #[test]
    fn decodes_a_configmap_like_kubectl_sends() {
        let mut meta = Vec::new();
        field(&mut meta, 1, b"cm1");
        field(&mut meta, 11, &entry_bytes("app", b"web"));
        let mut cm = Vec::new();
        field(&mut cm, 1, &meta);
        field(&mut cm, 2, &entry_bytes("a", b"b"));
        let mut tm = Vec::new();
        field(&mut tm, 1, b"v1");
        field(&mut tm, 2, b"ConfigMap");
        let mut unknown = b"k8s\0".to_vec();
        field(&mut unknown, 1, &tm);
        field(&mut unknown, 2, &cm);
        let v = decode(&unknown).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "labels": {"app": "web"}}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        let mut tm = Vec::new();
        field(&mut tm, 2, b"Pod");
        let mut body = b"k8s\0".to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, &[0x0a, 0x00]);
        assert_eq!(decode(&body).unwrap_err().code, 415);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
    }
}
