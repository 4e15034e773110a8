//! HTTP in, registry calls out: decoding bodies, content negotiation and watch streaming.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use super::{
    App,
    authn::UserInfo,
    discovery,
    filter::ObjectFilter,
    patch::PatchType,
    registry::{DeleteOptions, Scope},
    request::{self, Endpoint, ResourceRequest, Verb},
    status::ApiError,
    table,
};

pub type Body = BoxBody<Bytes, Infallible>;

/// Requests larger than this are refused, as upstream's 3 MiB limit does.
const MAX_BODY: usize = 3 * 1024 * 1024;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Handles one request from `user` (None: no credentials were presented).
pub async fn handle(app: Arc<App>, req: Request<Incoming>, user: Option<UserInfo>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = route(app, req, user).await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code, reason = e.reason, "request failed");
            error_response(&e)
        }
    }
}

async fn route(app: Arc<App>, req: Request<Incoming>, user: Option<UserInfo>) -> Result<Response<Body>, ApiError> {
    if req.method() == http::Method::POST && req.uri().path() == super::authz::SELF_SUBJECT_ACCESS_REVIEWS {
        let user = user.ok_or_else(ApiError::unauthorized)?;
        let (bytes, ct) = read_body(req).await?;
        let review = decode_object(&bytes, &ct)?;
        let answered = app
            .authz
            .self_subject_access_review(&user, &review, &app.registry)
            .await?;
        return Ok(json_response(201, &answered));
    }
    let endpoint = request::parse(req.method(), req.uri().path(), req.uri().query())?;
    if matches!(endpoint, Endpoint::Health) {
        return Ok(Response::new(full("ok")));
    }
    if matches!(endpoint, Endpoint::Version) {
        return Ok(json_response(200, &discovery::version()));
    }
    let user = user.ok_or_else(ApiError::unauthorized)?;
    match endpoint {
        Endpoint::Health | Endpoint::Version => unreachable!("answered above"),
        Endpoint::CoreVersions => Ok(json_response(200, &discovery::core_versions())),
        Endpoint::Groups => Ok(json_response(200, &discovery::groups())),
        Endpoint::Group(g) => discovery::group(&g)
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::path_not_found(req.uri().path())),
        Endpoint::ResourceList { group, version } => discovery::resource_list(&group, &version)
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::path_not_found(req.uri().path())),
        Endpoint::OpenApiV3(None) => Ok(json_response(200, &super::openapi::index())),
        Endpoint::OpenApiV3(Some(gv)) => super::openapi::group_version(&gv)
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::path_not_found(req.uri().path())),
        Endpoint::OpenApiV2 => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (content_type, bytes) = super::openapi::v2(accept);
            let mut resp = Response::new(full(bytes));
            if let Ok(v) = header::HeaderValue::from_str(content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            Ok(resp)
        }
        Endpoint::Resource(r) => {
            app.authorize(&user, &r).await?;
            resource(app, req, r, &user).await
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<(Bytes, String), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("request body could not be read: {e}"),
            details: None,
        })?
        .to_bytes();
    Ok((bytes, content_type))
}

/// Decodes a JSON or YAML object body. Protobuf gets 415, so clients see why.
fn decode_object(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let value: Value = match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))?
        }
        "application/vnd.kubernetes.protobuf" => match super::auth_protobuf::decode(bytes)? {
            Some(review_or_token_request) => review_or_token_request,
            None => super::protobuf::decode(bytes)?,
        },
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(value)
}

async fn resource(
    app: Arc<App>,
    req: Request<Incoming>,
    r: ResourceRequest,
    user: &UserInfo,
) -> Result<Response<Body>, ApiError> {
    let rt = r.resource;
    let ns = r.namespace.as_deref();
    let name = r.name.as_deref().unwrap_or_default();
    let sub = r.subresource.as_deref();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let registry = &app.registry;
    // Server-side dry run is not implemented: refuse it (as upstream did with the feature
    // off) rather than persist what the client only asked to try (kubectl diff).
    if r.query.get("dryRun").is_some() && !matches!(r.verb, Verb::Get | Verb::List | Verb::Watch) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by this server; nothing was changed",
        ));
    }
    match r.verb {
        Verb::Get if sub == Some("log") => super::logs::pod_log(&app, ns.unwrap_or("default"), name, &r.query).await,
        _ if sub == Some("log") => Err(ApiError::method_not_allowed(format!(
            "{} is not supported on pods/log",
            r.verb.as_str()
        ))),
        Verb::Get if sub == Some("scale") => Ok(json_response(200, &registry.get_scale(rt, ns, name).await?)),
        Verb::Get => {
            let obj = registry.get(rt, ns, name).await?;
            if table::wants_table(&accept) {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                return Ok(json_response(200, &table::table(rt, &[obj], &rv, None)));
            }
            Ok(json_response(200, &obj))
        }
        Verb::List => {
            let filter = ObjectFilter::from_query(rt, r.query.get("labelSelector"), r.query.get("fieldSelector"))?;
            let limit = r.query.number("limit")?.filter(|l| *l > 0).map(|l| l as usize);
            let scope = Scope {
                rt,
                namespace: ns,
                filter: &filter,
            };
            let page = registry
                .list(&scope, limit, r.query.get("continue"), r.query.get("resourceVersion"))
                .await?;
            let rv = page.resource_version.to_string();
            if table::wants_table(&accept) {
                return Ok(json_response(
                    200,
                    &table::table(rt, &page.items, &rv, page.continue_token.as_deref()),
                ));
            }
            let mut metadata = json!({"resourceVersion": rv});
            if let Some(c) = &page.continue_token {
                metadata["continue"] = json!(c);
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": page.items}),
            ))
        }
        Verb::Watch => watch(app.clone(), r).await,
        Verb::Create => {
            let (bytes, ct) = read_body(req).await?;
            let body = decode_object(&bytes, &ct)?;
            if sub == Some("binding") {
                let status = registry.bind_pod(ns.unwrap_or("default"), name, &body).await?;
                return Ok(json_response(201, &status));
            }
            if sub == Some("token") {
                let created = super::sa_token::token_request(&app, user, ns.unwrap_or("default"), name, body).await?;
                return Ok(json_response(201, &created));
            }
            if sub.is_some() || r.name.is_some() {
                return Err(ApiError::method_not_allowed(format!(
                    "POST is not supported on {}",
                    req_path(&r)
                )));
            }
            let warning = field_validation(&r, &body)?;
            super::authz::admit_create(user, &r, &body)?;
            super::escalation::admit(&app, user, &r, &body).await?;
            let created = registry.create(rt, ns, body).await?;
            Ok(with_warning(json_response(201, &created), warning))
        }
        // A Scale body is not the parent's type: the parent's field validation does not apply.
        Verb::Update if sub == Some("scale") => {
            let (bytes, ct) = read_body(req).await?;
            let body = decode_object(&bytes, &ct)?;
            let pinned = body["metadata"]["resourceVersion"].is_string();
            let scale = registry.write_scale(rt, ns, name, pinned, |_| Ok(body.clone())).await?;
            Ok(json_response(200, &scale))
        }
        Verb::Patch if sub == Some("scale") => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let media = ct.split(';').next().unwrap_or_default().trim().to_owned();
            let patch_type =
                PatchType::from_content_type(&media).ok_or_else(|| ApiError::unsupported_media_type(&media))?;
            let (bytes, _) = read_body(req).await?;
            let pinned =
                serde_json::from_slice::<Value>(&bytes).is_ok_and(|p| p["metadata"]["resourceVersion"].is_string());
            let scale = registry
                .write_scale(rt, ns, name, pinned, |current| {
                    super::patch::apply_patch("Scale", current, &bytes, patch_type)
                        .map_err(|e| ApiError::bad_request(e.to_string()))
                })
                .await?;
            Ok(json_response(200, &scale))
        }
        Verb::Update => {
            let (bytes, ct) = read_body(req).await?;
            let body = decode_object(&bytes, &ct)?;
            let warning = field_validation(&r, &body)?;
            super::escalation::admit(&app, user, &r, &body).await?;
            let (obj, created) = registry.update(rt, ns, name, body, sub).await?;
            Ok(with_warning(
                json_response(if created { 201 } else { 200 }, &obj),
                warning,
            ))
        }
        Verb::Patch => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let media = ct.split(';').next().unwrap_or_default().trim().to_owned();
            let patch_type =
                PatchType::from_content_type(&media).ok_or_else(|| ApiError::unsupported_media_type(&media))?;
            if patch_type == PatchType::Apply && r.query.get("fieldManager").is_none() {
                return Err(ApiError::bad_request(
                    "PATCH with apply-patch requires the fieldManager query parameter",
                ));
            }
            let (bytes, _) = read_body(req).await?;
            let warning = match serde_json::from_slice::<Value>(&bytes) {
                Ok(body) if patch_type != PatchType::JsonPatch => field_validation(&r, &body)?,
                _ => None,
            };
            super::escalation::admit_patch(&app, user, &r, patch_type, &bytes).await?;
            let obj = registry.patch(rt, ns, name, patch_type, &bytes, sub).await?;
            Ok(with_warning(json_response(200, &obj), warning))
        }
        Verb::Delete => {
            let grace = r.query.number("gracePeriodSeconds")?;
            let (bytes, _) = read_body(req).await?;
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            let opts = DeleteOptions::from_body(&body, grace, r.query.get("propagationPolicy"))?;
            let obj = registry.delete(rt, ns, name, &opts).await?;
            Ok(json_response(200, &obj))
        }
        Verb::DeleteCollection => {
            let filter = ObjectFilter::from_query(rt, r.query.get("labelSelector"), r.query.get("fieldSelector"))?;
            let grace = r.query.number("gracePeriodSeconds")?;
            let (bytes, _) = read_body(req).await?;
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            let scope = Scope {
                rt,
                namespace: ns,
                filter: &filter,
            };
            let opts = DeleteOptions::from_body(&body, grace, r.query.get("propagationPolicy"))?;
            let deleted = registry.delete_collection(&scope, &opts).await?;
            let rv = registry.store.current_revision().await.unwrap_or_default();
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
            ))
        }
    }
}

/// Applies `fieldValidation` (Strict, Warn (the default) or Ignore) to a body: Strict
/// refuses unknown fields, Warn returns them as a `Warning` header, as upstream does.
fn field_validation(r: &ResourceRequest, body: &Value) -> Result<Option<String>, ApiError> {
    let mode = r.query.get("fieldValidation").unwrap_or("Warn");
    if !["Strict", "Warn", "Ignore"].contains(&mode) {
        return Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Ignore, Warn or Strict, not {mode:?}"
        )));
    }
    if mode == "Ignore" {
        return Ok(None);
    }
    let unknown = super::strategy::unknown_fields(r.resource, body);
    if unknown.is_empty() {
        return Ok(None);
    }
    let list = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if mode == "Strict" {
        return Err(ApiError::bad_request(format!("strict decoding error: {list}")));
    }
    Ok(Some(list))
}

fn with_warning(mut resp: Response<Body>, warning: Option<String>) -> Response<Body> {
    if let Some(w) = warning {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().insert(header::WARNING, v);
        }
    }
    resp
}

fn req_path(r: &ResourceRequest) -> String {
    format!(
        "{}/{}",
        r.resource.group_resource(),
        r.name.as_deref().unwrap_or_default()
    )
}

/// Streams newline-delimited watch events. Compaction arrives as an in-stream ERROR with a
/// 410 Status inside a 200 response: kube-rs relists only on that form.
async fn watch(app: Arc<App>, r: ResourceRequest) -> Result<Response<Body>, ApiError> {
    let rt = r.resource;
    let filter = ObjectFilter::from_query(rt, r.query.get("labelSelector"), r.query.get("fieldSelector"))?;
    let bookmarks = r.query.flag("allowWatchBookmarks");
    let send_initial = r.query.flag("sendInitialEvents");
    let timeout = Duration::from_secs(r.query.number("timeoutSeconds")?.map_or(1800, |t| t.max(1) as u64));
    let rv = if send_initial {
        None
    } else {
        r.query.get("resourceVersion").map(str::to_owned)
    };
    let scope = Scope {
        rt,
        namespace: r.namespace.as_deref(),
        filter: &filter,
    };
    let mut events = app.registry.watch(&scope, rv.as_deref()).await?;
    let initial_rv = match rv.as_deref() {
        Some(v) => v.parse::<i64>().unwrap_or(0),
        None => app.registry.store.current_revision().await.unwrap_or(0),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let bookmark_every = app.bookmark_interval;
    let api_version = rt.api_version();
    let kind = rt.kind;
    tokio::spawn(async move {
        let line = |v: Value| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            b.push(b'\n');
            Ok(Frame::data(Bytes::from(b)))
        };
        let bookmark = |rv: i64, initial_end: bool| {
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": metadata}})
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        let mut last_rv = initial_rv;
        let mut initial_pending = send_initial;
        loop {
            // With sendInitialEvents, the initial ADDED events are followed by the
            // bookmark that marks their end; they are all queued before live events.
            let next = if initial_pending {
                match tokio::time::timeout(Duration::from_millis(0), events.next()).await {
                    Ok(item) => Some(item),
                    Err(_) => {
                        initial_pending = false;
                        if tx.send(line(bookmark(last_rv, true))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    item = events.next() => Some(item),
                    _ = ticker.tick(), if bookmarks => None,
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                }
            };
            let frame = match next {
                None => line(bookmark(last_rv, false)),
                Some(None) => return,
                Some(Some(Ok(ev))) => {
                    last_rv = last_rv.max(ev.revision);
                    line(json!({"type": ev.kind, "object": ev.object}))
                }
                Some(Some(Err(e))) => {
                    let _ = tx.send(line(json!({"type": "ERROR", "object": e.to_status()}))).await;
                    return;
                }
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream_from(rx);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
