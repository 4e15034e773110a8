//! Kubernetes' protobuf request bodies, decoded into the JSON form of the object. kubectl
//! 1.32 and later POSTs protobuf for every typed `kubectl create` subcommand (deployment,
//! service, job, cronjob, role, secret, token, ...) and does not fall back to JSON.
//!
//! Wire format: the magic `k8s\0`, then a `runtime.Unknown` (1: TypeMeta{1: apiVersion,
//! 2: kind}, 2: raw bytes of the object). The object is decoded with the field table in
//! `schema.txt`, generated from upstream's generated.proto files by
//! `generate_schema.py` (field numbers never change upstream, so a newer table reads what
//! older clients send). Proto field names are the JSON names there.

use std::{collections::HashMap, sync::LazyLock};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One protobuf field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64(u64),
    Fixed32(u32),
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
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().map_err(|_| malformed())?))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed())?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes(b.try_into().map_err(|_| malformed())?))
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

/// A scalar's protobuf type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    String,
    Int32,
    Int64,
    Bool,
    Bytes,
    Double,
    Float,
}

#[derive(Debug, Clone, Copy)]
enum Type {
    Scalar(Scalar),
    Message(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Single,
    Repeated,
    /// map<string, T>
    Map,
}

#[derive(Debug)]
struct FieldDef {
    name: &'static str,
    label: Label,
    ty: Type,
}

#[derive(Debug, Default)]
struct Message {
    /// A Go slice type (`+protobuf.nullable=true`): its JSON is the list of its items.
    list: bool,
    fields: HashMap<u64, FieldDef>,
}

static SCHEMA: LazyLock<HashMap<&'static str, Message>> = LazyLock::new(|| parse_schema(include_str!("schema.txt")));

fn parse_schema(text: &'static str) -> HashMap<&'static str, Message> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let (name, list) = match name.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (name, false),
        };
        let mut msg = Message {
            list,
            ..Default::default()
        };
        for w in words {
            let Some((field, rest)) = w.split_once('=') else {
                continue;
            };
            let Some((number, ty)) = rest.split_once(':') else {
                continue;
            };
            let Ok(number) = number.parse() else { continue };
            let (label, ty) = match (ty.strip_prefix('*'), ty.strip_prefix('%')) {
                (Some(t), _) => (Label::Repeated, t),
                (_, Some(t)) => (Label::Map, t),
                _ => (Label::Single, ty),
            };
            let ty = match ty {
                "string" => Type::Scalar(Scalar::String),
                "int32" => Type::Scalar(Scalar::Int32),
                "int64" => Type::Scalar(Scalar::Int64),
                "bool" => Type::Scalar(Scalar::Bool),
                "bytes" => Type::Scalar(Scalar::Bytes),
                "double" => Type::Scalar(Scalar::Double),
                "float" => Type::Scalar(Scalar::Float),
                other => Type::Message(other),
            };
            msg.fields.insert(number, FieldDef { name: field, label, ty });
        }
        out.insert(name, msg);
    }
    out
}

fn b64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

/// The message of a kind: `apps/v1` `Deployment` is `api.apps.v1.Deployment` (a group's
/// first label names its package; the core group's is `core`).
fn message_of(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group.split('.').next() {
        None | Some("") => "core",
        Some(p) => p,
    };
    // Options such as DeleteOptions are meta/v1 types whichever group they are sent to.
    [format!("api.{package}.{version}.{kind}"), format!("{META}{kind}")]
        .iter()
        .find_map(|name| SCHEMA.get_key_value(name.as_str()).map(|(k, _)| *k))
}

const META: &str = "apimachinery.pkg.apis.meta.v1.";

/// Types whose JSON is not an object of their fields.
fn special(name: &str, b: &[u8]) -> Result<Option<Value>, ApiError> {
    let mut ints = [0i64; 3];
    let mut strings = [String::new(), String::new(), String::new()];
    let mut raw: &[u8] = &[];
    let known = matches!(
        name,
        "apimachinery.pkg.apis.meta.v1.Time"
            | "apimachinery.pkg.apis.meta.v1.MicroTime"
            | "apimachinery.pkg.apis.meta.v1.Duration"
            | "apimachinery.pkg.apis.meta.v1.FieldsV1"
            | "apimachinery.pkg.util.intstr.IntOrString"
            | "apimachinery.pkg.api.resource.Quantity"
            | "apimachinery.pkg.runtime.RawExtension"
    );
    if !known {
        return Ok(None);
    }
    for f in fields(b) {
        match f? {
            (n @ 1..=3, Field::Varint(v)) => ints[n as usize - 1] = v as i64,
            (n @ 1..=3, Field::Bytes(x)) => {
                strings[n as usize - 1] = text(x).unwrap_or_default();
                raw = x;
            }
            _ => {}
        }
    }
    let value = match name.strip_prefix(META).unwrap_or(name) {
        "Time" | "MicroTime" => {
            let ts = jiff::Timestamp::new(ints[0], ints[1] as i32)
                .map_err(|e| ApiError::bad_request(format!("a protobuf timestamp is out of range: {e}")))?;
            if name.ends_with("MicroTime") {
                json!(format!("{ts:.6}"))
            } else {
                json!(format!("{ts:.0}"))
            }
        }
        "Duration" => json!(format!("{}s", ints[0] as f64 / 1e9)),
        "apimachinery.pkg.util.intstr.IntOrString" if ints[0] == 1 => json!(strings[2]),
        "apimachinery.pkg.util.intstr.IntOrString" => json!(ints[1] as i32),
        "apimachinery.pkg.api.resource.Quantity" => json!(strings[0]),
        // FieldsV1 and RawExtension carry JSON.
        _ => serde_json::from_slice(raw).unwrap_or(Value::Null),
    };
    Ok(Some(value))
}

fn scalar(s: Scalar, f: &Field<'_>) -> Result<Value, ApiError> {
    Ok(match (s, f) {
        (Scalar::String, Field::Bytes(x)) => json!(text(x)?),
        (Scalar::Bytes, Field::Bytes(x)) => b64(x),
        (Scalar::Int32, Field::Varint(v)) => json!(*v as i64 as i32),
        (Scalar::Int64, Field::Varint(v)) => json!(*v as i64),
        (Scalar::Bool, Field::Varint(v)) => json!(*v != 0),
        (Scalar::Double, Field::Fixed64(v)) => json!(f64::from_bits(*v)),
        (Scalar::Float, Field::Fixed32(v)) => json!(f32::from_bits(*v)),
        _ => return Err(malformed()),
    })
}

/// Packed repeated numbers (one length-delimited field holding several varints).
fn packed(s: Scalar, b: &[u8]) -> Result<Vec<Value>, ApiError> {
    let mut r = Reader { buf: b };
    let mut out = Vec::new();
    while !r.buf.is_empty() {
        let f = match s {
            Scalar::Double => Field::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| malformed())?)),
            Scalar::Float => Field::Fixed32(u32::from_le_bytes(r.take(4)?.try_into().map_err(|_| malformed())?)),
            _ => Field::Varint(r.varint()?),
        };
        out.push(scalar(s, &f)?);
    }
    Ok(out)
}

fn value(ty: Type, f: &Field<'_>, depth: usize) -> Result<Value, ApiError> {
    match (ty, f) {
        (Type::Scalar(s), f) => scalar(s, f),
        (Type::Message(name), Field::Bytes(b)) => message(name, b, depth + 1),
        _ => Err(malformed()),
    }
}

/// Decodes one message. Go writes non-pointer strings even when empty; empty means unset
/// in the JSON form, so single empty strings are left out.
fn message(name: &str, b: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > 64 {
        return Err(ApiError::bad_request("the protobuf body nests too deeply"));
    }
    if let Some(v) = special(name, b)? {
        return Ok(v);
    }
    let def = SCHEMA
        .get(name)
        .ok_or_else(|| ApiError::internal(format!("protobuf message {name} is not in the schema")))?;
    let mut obj = Map::new();
    for f in fields(b) {
        let (number, f) = f?;
        let Some(fd) = def.fields.get(&number) else { continue };
        match fd.label {
            Label::Single => {
                if matches!((fd.ty, &f), (Type::Scalar(Scalar::String), Field::Bytes([]))) {
                    continue;
                }
                obj.insert(fd.name.into(), value(fd.ty, &f, depth)?);
            }
            Label::Repeated => {
                let items = match (fd.ty, &f) {
                    (Type::Scalar(s), Field::Bytes(b)) if !matches!(s, Scalar::String | Scalar::Bytes) => packed(s, b)?,
                    _ => vec![value(fd.ty, &f, depth)?],
                };
                let list = obj.entry(fd.name).or_insert_with(|| json!([]));
                if let Value::Array(a) = list {
                    a.extend(items);
                }
            }
            Label::Map => {
                let Field::Bytes(entry) = f else {
                    return Err(malformed());
                };
                let (mut k, mut v) = (String::new(), None);
                for g in fields(entry) {
                    match g? {
                        (1, Field::Bytes(x)) => k = text(x)?,
                        (2, g) => v = Some(value(fd.ty, &g, depth)?),
                        _ => {}
                    }
                }
                let v = match (v, fd.ty) {
                    (Some(v), _) => v,
                    (None, Type::Scalar(Scalar::String | Scalar::Bytes)) => json!(""),
                    (None, Type::Message(m)) => message(m, &[], depth)?,
                    (None, Type::Scalar(_)) => json!(0),
                };
                let map = obj.entry(fd.name).or_insert_with(|| json!({}));
                if let Value::Object(m) = map {
                    m.insert(k, v);
                }
            }
        }
    }
    if def.list {
        return Ok(obj.remove("items").unwrap_or_else(|| json!([])));
    }
    Ok(Value::Object(obj))
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
    let name = message_of(&api_version, &kind).ok_or_else(|| {
        ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf for {api_version} {kind:?}"
        ))
    })?;
    let mut obj = message(name, raw, 0)?;
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
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

    fn unknown(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(&mut tm, 1, api_version.as_bytes());
        field(&mut tm, 2, kind.as_bytes());
        let mut body = b"k8s\0".to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, raw);
        body
    }

    #[test]
    fn decodes_a_service_with_int_or_string_ports_and_zero_values() {
        // ServicePort{name "", protocol TCP, port 80, targetPort IntOrString{type 1, strVal "http"}, nodePort 0}
        let mut target = Vec::new();
        target.extend_from_slice(&[0x08, 0x01]);
        field(&mut target, 3, b"http");
        let mut port = Vec::new();
        field(&mut port, 1, b"");
        field(&mut port, 2, b"TCP");
        port.extend_from_slice(&[3 << 3, 80]);
        field(&mut port, 4, &target);
        port.extend_from_slice(&[5 << 3, 0]);
        let mut spec = Vec::new();
        field(&mut spec, 1, &port);
        field(&mut spec, 4, b"ClusterIP");
        let mut meta = Vec::new();
        field(&mut meta, 1, b"web");
        // creationTimestamp: Time{seconds 0} is the Unix epoch.
        field(&mut meta, 8, &[]);
        let mut svc = Vec::new();
        field(&mut svc, 1, &meta);
        field(&mut svc, 2, &spec);
        let v = decode(&unknown("v1", "Service", &svc)).unwrap();
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(v["spec"]["type"], "ClusterIP");
        assert_eq!(
            v["spec"]["ports"],
            json!([{"protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 0}])
        );
    }

    #[test]
    fn every_kind_kubectl_creates_has_a_message() {
        for (api_version, kind) in [
            ("apps/v1", "Deployment"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            ("policy/v1", "PodDisruptionBudget"),
            ("scheduling.k8s.io/v1", "PriorityClass"),
            ("networking.k8s.io/v1", "Ingress"),
            ("authentication.k8s.io/v1", "TokenRequest"),
            ("v1", "DeleteOptions"),
        ] {
            let top = message_of(api_version, kind);
            assert!(top.is_some(), "{api_version} {kind}");
            // Every message reachable from it is in the table too.
            let mut todo = vec![top.unwrap_or_default()];
            let mut seen = std::collections::HashSet::new();
            while let Some(name) = todo.pop() {
                if !seen.insert(name) || special(name, &[]).unwrap().is_some() {
                    continue;
                }
                let m = SCHEMA.get(name).unwrap_or_else(|| panic!("{name} (from {kind})"));
                todo.extend(m.fields.values().filter_map(|f| match f.ty {
                    Type::Message(n) => Some(n),
                    Type::Scalar(_) => None,
                }));
            }
        }
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        let mut tm = Vec::new();
        field(&mut tm, 1, b"example.com/v1");
        field(&mut tm, 2, b"Widget");
        let mut body = b"k8s\0".to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, &[0x0a, 0x00]);
        assert_eq!(decode(&body).unwrap_err().code, 415);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
    }
}
