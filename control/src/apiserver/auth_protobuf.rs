//! Protobuf bodies of the two authentication/authorization requests kubectl >= 1.32 sends
//! that way: TokenRequest (`kubectl create token`) and SelfSubjectAccessReview (`kubectl
//! auth can-i`). Field numbers are those of k8s.io/api's generated.proto. Other kinds are
//! left to `protobuf` (None here).

use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf body is malformed")
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn varint(buf: &mut &[u8]) -> Result<u64, ApiError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or_else(malformed)?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed())
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ApiError> {
    if n > buf.len() {
        return Err(malformed());
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Every (field number, value) of one message.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ApiError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                take(&mut buf, 8)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| malformed())?;
                Field::Bytes(take(&mut buf, len)?)
            }
            5 => {
                take(&mut buf, 4)?;
                Field::Other
            }
            _ => return Err(malformed()),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| ApiError::bad_request("a protobuf string field is not UTF-8"))
}

/// The string fields of a message, by number to JSON name (empty strings are unset).
fn strings(b: &[u8], names: &[(u64, &str)]) -> Result<Map<String, Value>, ApiError> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        if let (Some((_, name)), Field::Bytes(x)) = (names.iter().find(|(k, _)| *k == n), f)
            && !x.is_empty()
        {
            m.insert((*name).to_owned(), json!(text(x)?));
        }
    }
    Ok(m)
}

fn token_request_spec(b: &[u8]) -> Result<Value, ApiError> {
    let mut audiences = Vec::new();
    let mut spec = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => audiences.push(json!(text(x)?)),
            (3, Field::Bytes(x)) => {
                let names = [(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")];
                spec.insert("boundObjectRef".into(), Value::Object(strings(x, &names)?));
            }
            // int64 on the wire as a varint (two's complement for negatives).
            (4, Field::Varint(v)) => {
                spec.insert("expirationSeconds".into(), json!(v as i64));
            }
            _ => {}
        }
    }
    spec.insert("audiences".into(), Value::Array(audiences));
    Ok(Value::Object(spec))
}

fn access_review_spec(b: &[u8]) -> Result<Value, ApiError> {
    let mut spec = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                let names = [
                    (1, "namespace"),
                    (2, "verb"),
                    (3, "group"),
                    (4, "version"),
                    (5, "resource"),
                    (6, "subresource"),
                    (7, "name"),
                ];
                spec.insert("resourceAttributes".into(), Value::Object(strings(x, &names)?));
            }
            (2, Field::Bytes(x)) => {
                let names = [(1, "path"), (2, "verb")];
                spec.insert("nonResourceAttributes".into(), Value::Object(strings(x, &names)?));
            }
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

/// The JSON form of a protobuf TokenRequest or SelfSubjectAccessReview; `None` for other
/// kinds.
pub fn decode(body: &[u8]) -> Result<Option<Value>, ApiError> {
    let Some(unknown) = body.strip_prefix(MAGIC) else {
        return Ok(None);
    };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &unknown[..0]);
    for (n, f) in fields(unknown)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (m, g) in fields(tm)? {
                    match (m, g) {
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
    let spec_of: fn(&[u8]) -> Result<Value, ApiError> = match kind.as_str() {
        "TokenRequest" => token_request_spec,
        "SelfSubjectAccessReview" => access_review_spec,
        _ => return Ok(None),
    };
    let mut spec = json!({});
    for (n, f) in fields(raw)? {
        if let (2, Field::Bytes(x)) = (n, f) {
            spec = spec_of(x)?;
        }
    }
    Ok(Some(json!({"apiVersion": api_version, "kind": kind, "spec": spec})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, n: u8, b: &[u8]) {
        out.push((n << 3) | 2);
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }

    fn wrap(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(&mut tm, 1, api_version.as_bytes());
        field(&mut tm, 2, kind.as_bytes());
        let mut body = MAGIC.to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, raw);
        body
    }

    #[test]
    fn decodes_a_token_request_like_kubectl_create_token() {
        let mut bound = Vec::new();
        field(&mut bound, 1, b"Pod");
        field(&mut bound, 2, b"v1");
        field(&mut bound, 3, b"job");
        let mut spec = Vec::new();
        field(&mut spec, 1, b"rudder");
        field(&mut spec, 1, b"vault");
        field(&mut spec, 3, &bound);
        spec.extend_from_slice(&[4 << 3, 0x84, 0x07]); // expirationSeconds 900
        let mut tr = Vec::new();
        field(&mut tr, 1, &[]);
        field(&mut tr, 2, &spec);
        let v = decode(&wrap("authentication.k8s.io/v1", "TokenRequest", &tr))
            .expect("decodes")
            .expect("a TokenRequest");
        assert_eq!(
            v,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": ["rudder", "vault"], "expirationSeconds": 900,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "job"}}})
        );
    }

    #[test]
    fn decodes_a_self_subject_access_review_like_kubectl_auth_can_i() {
        let mut ra = Vec::new();
        field(&mut ra, 1, b"default");
        field(&mut ra, 2, b"get");
        field(&mut ra, 3, b"");
        field(&mut ra, 5, b"secrets");
        field(&mut ra, 7, b"s1");
        let mut spec = Vec::new();
        field(&mut spec, 1, &ra);
        let mut review = Vec::new();
        field(&mut review, 2, &spec);
        let v = decode(&wrap("authorization.k8s.io/v1", "SelfSubjectAccessReview", &review))
            .expect("decodes")
            .expect("a review");
        assert_eq!(
            v["spec"],
            json!({"resourceAttributes": {"namespace": "default", "verb": "get", "resource": "secrets", "name": "s1"}})
        );
        assert_eq!(decode(&wrap("v1", "ConfigMap", &[])).expect("ok"), None);
        assert_eq!(decode(b"{}").expect("ok"), None);
        assert!(decode(&wrap("v1", "TokenRequest", &[0x12, 0x05, 0x0a])).is_err());
    }
}
