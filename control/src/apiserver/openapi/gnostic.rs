//! The swagger 2.0 document as the protobuf message client-go reads from `/openapi/v2`
//! (gnostic's `openapi.v2.Document`): kubectl asks for it only in that form and builds its
//! client-side validator and `explain --output plaintext-openapiv2` from it.
//!
//! Only what a definitions-only document needs is encoded: `swagger`, `info`, `paths`
//! (empty) and `definitions`, and in each schema the keywords client-go's parser reads.
//! Field numbers are those of gnostic's OpenAPIv2.proto. Vendor extensions and other
//! free-form values travel as gnostic `Any { yaml }`; JSON text is valid YAML.

use serde_json::{Map, Value};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes(out, field, s.as_bytes());
    }
}

fn boolean(out: &mut Vec<u8>, field: u32, b: bool) {
    if b {
        tag(out, field, 0);
        out.push(1);
    }
}

fn int(out: &mut Vec<u8>, field: u32, v: &Value) {
    if let Some(n) = v.as_i64().filter(|n| *n != 0) {
        tag(out, field, 0);
        // Negative int64s are ten-byte two's-complement varints.
        varint(out, n as u64);
    }
}

fn double(out: &mut Vec<u8>, field: u32, v: &Value) {
    if let Some(f) = v.as_f64() {
        tag(out, field, 1);
        out.extend_from_slice(&f.to_le_bytes());
    }
}

/// gnostic `Any` holding `v` as YAML (field 2).
fn any(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 2, &serde_json::to_string(v).unwrap_or_default());
    out
}

/// `NamedX { name = 1; value = 2 }`.
fn named(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, name);
    bytes(&mut out, 2, value);
    out
}

/// gnostic `Schema`.
pub fn schema(s: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(o) = s.as_object() else {
        return out;
    };
    let str_of = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
    string(&mut out, 1, str_of("$ref"));
    string(&mut out, 2, str_of("format"));
    string(&mut out, 3, str_of("title"));
    string(&mut out, 4, str_of("description"));
    if let Some(d) = o.get("default") {
        bytes(&mut out, 5, &any(d));
    }
    let num = |k: &str| o.get(k).unwrap_or(&Value::Null);
    double(&mut out, 6, num("multipleOf"));
    double(&mut out, 7, num("maximum"));
    boolean(&mut out, 8, num("exclusiveMaximum").as_bool().unwrap_or(false));
    double(&mut out, 9, num("minimum"));
    boolean(&mut out, 10, num("exclusiveMinimum").as_bool().unwrap_or(false));
    int(&mut out, 11, num("maxLength"));
    int(&mut out, 12, num("minLength"));
    string(&mut out, 13, str_of("pattern"));
    int(&mut out, 14, num("maxItems"));
    int(&mut out, 15, num("minItems"));
    boolean(&mut out, 16, num("uniqueItems").as_bool().unwrap_or(false));
    int(&mut out, 17, num("maxProperties"));
    int(&mut out, 18, num("minProperties"));
    for r in o.get("required").and_then(Value::as_array).into_iter().flatten() {
        string(&mut out, 19, r.as_str().unwrap_or(""));
    }
    for e in o.get("enum").and_then(Value::as_array).into_iter().flatten() {
        bytes(&mut out, 20, &any(e));
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Vec::new();
            tag(&mut item, 2, 0);
            item.push(u8::from(*b));
            bytes(&mut out, 21, &item);
        }
        Some(s @ Value::Object(_)) => {
            let mut item = Vec::new();
            bytes(&mut item, 1, &schema(s));
            bytes(&mut out, 21, &item);
        }
        _ => {}
    }
    let types: Vec<&str> = match o.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut item = Vec::new();
        for t in types {
            string(&mut item, 1, t);
        }
        bytes(&mut out, 22, &item);
    }
    match o.get("items") {
        Some(s @ Value::Object(_)) => {
            let mut item = Vec::new();
            bytes(&mut item, 1, &schema(s));
            bytes(&mut out, 23, &item);
        }
        Some(Value::Array(ss)) => {
            let mut item = Vec::new();
            for s in ss {
                bytes(&mut item, 1, &schema(s));
            }
            bytes(&mut out, 23, &item);
        }
        _ => {}
    }
    for s in o.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        bytes(&mut out, 24, &schema(s));
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        let mut item = Vec::new();
        for (name, s) in props {
            bytes(&mut item, 1, &named(name, &schema(s)));
        }
        bytes(&mut out, 25, &item);
    }
    boolean(
        &mut out,
        27,
        o.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
    );
    for (k, v) in o.iter().filter(|(k, _)| k.starts_with("x-")) {
        bytes(&mut out, 31, &named(k, &any(v)));
    }
    out
}

/// gnostic `Document` of a swagger 2.0 document with the given definitions.
pub fn document(title: &str, version: &str, definitions: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, "2.0");
    let mut info = Vec::new();
    string(&mut info, 1, title);
    string(&mut info, 2, version);
    bytes(&mut out, 2, &info);
    bytes(&mut out, 8, &[]);
    let mut defs = Vec::new();
    for (name, s) in definitions {
        bytes(&mut defs, 1, &named(name, &schema(s)));
    }
    bytes(&mut out, 9, &defs);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A minimal protobuf reader: the fields of one message, as (number, wire, payload).
    fn fields(mut b: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
        fn read_varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = read_varint(&mut b);
            let wire = (key & 7) as u8;
            let payload = match wire {
                0 => read_varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                2 => {
                    let len = read_varint(&mut b) as usize;
                    let p = b[..len].to_vec();
                    b = &b[len..];
                    p
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, wire, payload));
        }
        out
    }

    fn field(b: &[u8], n: u64) -> Vec<Vec<u8>> {
        fields(b).into_iter().filter(|f| f.0 == n).map(|f| f.2).collect()
    }

    #[test]
    fn schema_fields_use_gnostic_numbers() {
        let s = json!({
            "description": "a long description ".repeat(10),
            "type": "object",
            "required": ["spec"],
            "properties": {"spec": {"$ref": "#/definitions/a.Spec", "description": "d"}},
            "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}],
        });
        let b = schema(&s);
        assert_eq!(field(&b, 4), vec!["a long description ".repeat(10).into_bytes()]);
        assert_eq!(field(&field(&b, 22)[0], 1), vec![b"object".to_vec()]);
        assert_eq!(field(&b, 19), vec![b"spec".to_vec()]);
        let props = &field(&b, 25)[0];
        let spec = &field(props, 1)[0];
        assert_eq!(field(spec, 1), vec![b"spec".to_vec()]);
        assert_eq!(field(&field(spec, 2)[0], 1), vec![b"#/definitions/a.Spec".to_vec()]);
        let ext = &field(&b, 31)[0];
        assert_eq!(field(ext, 1), vec![b"x-kubernetes-group-version-kind".to_vec()]);
        let yaml = String::from_utf8(field(&field(ext, 2)[0], 2)[0].clone()).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&yaml).unwrap(),
            s["x-kubernetes-group-version-kind"]
        );
    }

    #[test]
    fn document_carries_version_info_and_definitions() {
        let mut defs = Map::new();
        defs.insert("a.B".into(), json!({"type": "string"}));
        let d = document("Kubernetes", "v1.33.0", &defs);
        assert_eq!(field(&d, 1), vec![b"2.0".to_vec()]);
        assert_eq!(field(&field(&d, 2)[0], 2), vec![b"v1.33.0".to_vec()]);
        let named = &field(&field(&d, 9)[0], 1)[0];
        assert_eq!(field(named, 1), vec![b"a.B".to_vec()]);
    }
}
