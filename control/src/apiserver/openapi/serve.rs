//! HTTP for the OpenAPI documents, as upstream's handlers answer:
//! - every document has an ETag (its hash) and `If-None-Match` gets a 304;
//! - `/openapi/v3/<gv>?hash=<current>` is immutable (kubectl's disk cache keeps it a year),
//!   an outdated hash is redirected (301) to the current URL;
//! - `/openapi/v2` is JSON or gnostic protobuf by `Accept` (client-go asks only for
//!   protobuf), anything else is 406.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Response, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

use super::documents::{Served, current};
use crate::apiserver::{crd::Catalog, status::ApiError};

type Body = BoxBody<Bytes, Infallible>;

pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// What upstream labels the protobuf answer (Go's media type parser rejects the `@`).
const V2_PROTOBUF_RESPONSE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

fn body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn respond(served: &Served, content_type: &str, headers: &HeaderMap) -> Response<Body> {
    let etag = format!("\"{}\"", served.hash);
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let mut resp = if fresh {
        let mut r = Response::new(body(Bytes::new()));
        *r.status_mut() = http::StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(body(served.bytes.clone()))
    };
    let h = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if !fresh && let Ok(v) = header::HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn not_acceptable(accept: &str) -> ApiError {
    ApiError {
        code: 406,
        reason: "NotAcceptable",
        message: format!("the server cannot produce a response in any of the accepted media types ({accept:?})"),
        details: None,
    }
}

/// The media types of an `Accept` header, in the client's order, without parameters.
fn accepted(headers: &HeaderMap) -> (String, Vec<String>) {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut types: Vec<String> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if types.is_empty() {
        types.push("*/*".into());
    }
    (accept, types)
}

fn is_json(t: &str) -> bool {
    matches!(t, "application/json" | "application/*" | "*/*")
}

fn query_hash(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "hash")
        .map(|(_, v)| v.into_owned())
}

/// `/openapi/v3` (`gv` None) and `/openapi/v3/<gv>`.
pub fn v3(
    catalog: &Catalog,
    gv: Option<&str>,
    query: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let (accept, types) = accepted(headers);
    if !types.iter().any(|t| is_json(t)) {
        return Err(not_acceptable(&accept));
    }
    let docs = current(catalog);
    let Some(gv) = gv else {
        return Ok(respond(&docs.index, "application/json", headers));
    };
    let gv = gv.split('?').next().unwrap_or(gv);
    let served = docs.group_version(gv).ok_or_else(|| ApiError::path_not_found(path))?;
    let Some(hash) = query_hash(query) else {
        return Ok(respond(served, "application/json", headers));
    };
    if hash != served.hash {
        let mut resp = Response::new(body(Bytes::new()));
        *resp.status_mut() = http::StatusCode::MOVED_PERMANENTLY;
        if let Ok(v) = header::HeaderValue::from_str(&format!("/openapi/v3/{gv}?hash={}", served.hash)) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    let mut resp = respond(served, "application/json", headers);
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, immutable"),
    );
    let next_year = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365);
    let printer = jiff::fmt::rfc2822::DateTimePrinter::new();
    if let Ok(text) = printer.timestamp_to_rfc9110_string(&next_year)
        && let Ok(v) = header::HeaderValue::from_str(&text)
    {
        h.insert(header::EXPIRES, v);
    }
    Ok(resp)
}

/// `/openapi/v2`: the first of the client's acceptable types we speak.
pub fn v2(catalog: &Catalog, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let (accept, types) = accepted(headers);
    let docs = current(catalog);
    for t in &types {
        let mut resp = if is_json(t) {
            respond(docs.v2_json(), "application/json", headers)
        } else if t == V2_PROTOBUF || t == V2_PROTOBUF_RESPONSE {
            respond(docs.v2_protobuf(), V2_PROTOBUF_RESPONSE, headers)
        } else {
            continue;
        };
        resp.headers_mut()
            .insert(header::VARY, header::HeaderValue::from_static("Accept"));
        return Ok(resp);
    }
    Err(not_acceptable(&accept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, header::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn v2_answers_protobuf_json_or_406_by_accept() {
        let catalog = Catalog::default();
        let pb = v2(&catalog, &headers(&[(header::ACCEPT, V2_PROTOBUF)])).unwrap();
        assert_eq!(pb.headers()[header::CONTENT_TYPE], V2_PROTOBUF_RESPONSE);
        let json = v2(&catalog, &headers(&[(header::ACCEPT, "application/json")])).unwrap();
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(v2(&catalog, &HeaderMap::new()).unwrap().status(), 200);
        let err = v2(&catalog, &headers(&[(header::ACCEPT, "application/yaml")])).unwrap_err();
        assert_eq!(err.code, 406);
    }

    #[test]
    fn etags_give_304_and_hashes_are_immutable_or_redirected() {
        let catalog = Catalog::default();
        let first = v3(&catalog, None, None, "/openapi/v3", &HeaderMap::new()).unwrap();
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = v3(
            &catalog,
            None,
            None,
            "/openapi/v3",
            &headers(&[(header::IF_NONE_MATCH, &etag)]),
        )
        .unwrap();
        assert_eq!(again.status(), 304);

        let hash = current(&catalog).group_version("api/v1").unwrap().hash.clone();
        let q = format!("hash={hash}");
        let ok = v3(
            &catalog,
            Some("api/v1"),
            Some(&q),
            "/openapi/v3/api/v1",
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "public, immutable");
        assert!(ok.headers().contains_key(header::EXPIRES));
        let old = v3(
            &catalog,
            Some("api/v1"),
            Some("hash=0000"),
            "/openapi/v3/api/v1",
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(old.status(), 301);
        assert_eq!(old.headers()[header::LOCATION], format!("/openapi/v3/api/v1?{q}"));
        let missing = v3(
            &catalog,
            Some("apis/nope/v1"),
            None,
            "/openapi/v3/apis/nope/v1",
            &HeaderMap::new(),
        );
        assert_eq!(missing.unwrap_err().code, 404);
    }
}
