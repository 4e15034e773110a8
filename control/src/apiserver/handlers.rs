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
    crd, discovery, discovery_aggregated, dryrun,
    filter::ObjectFilter,
    managed::FieldManager,
    meta,
    negotiate::{self, Rendering, Target},
    patch::PatchType,
    registry::{self, DeleteOptions, Scope},
    request::{self, Endpoint, ResourceRequest, Verb},
    status::ApiError,
    table::{self, TableOptions},
    versionmatch,
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

/// A JSON body under a Content-Type that names its form (`application/json;as=Table;...`).
fn typed_response(code: u16, value: &Value, content_type: String) -> Response<Body> {
    let mut resp = json_response(code, value);
    if let Ok(v) = header::HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn accept<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// How one negotiated response renders its objects.
#[derive(Debug, Clone, Copy)]
struct Output {
    rendering: Rendering,
    table: TableOptions,
}

impl Output {
    fn negotiate(accept: &str, r: &ResourceRequest) -> Result<Self, ApiError> {
        let target = match r.verb {
            Verb::List | Verb::DeleteCollection => Target::List,
            Verb::Watch => Target::Watch,
            _ => Target::Single,
        };
        let rendering = negotiate::rendering(accept, target)?;
        let version = match rendering {
            Rendering::Table { version } => version,
            _ => "v1",
        };
        let include = table::IncludeObject::from_query(r.query.get("includeObject"))?;
        Ok(Self {
            rendering,
            table: TableOptions { version, include },
        })
    }

    /// One object (a get's or a write's answer, or a watch event's object) in this form.
    /// Status answers (a delete that completed at once) pass through.
    fn object(&self, rt: &super::resources::ResourceType, obj: Value) -> Value {
        if obj["kind"] == "Status" {
            return obj;
        }
        match self.rendering {
            Rendering::Object => obj,
            Rendering::Metadata { version } | Rendering::MetadataList { version } => {
                meta::partial_object_metadata(&obj, version)
            }
            Rendering::Table { .. } => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                table::table(rt, &[obj], &rv, None, self.table)
            }
        }
    }

    fn list(
        &self,
        rt: &super::resources::ResourceType,
        items: Vec<Value>,
        rv: &str,
        cont: Option<&str>,
    ) -> Response<Body> {
        let body = match self.rendering {
            Rendering::Table { .. } => table::table(rt, &items, rv, cont, self.table),
            Rendering::Metadata { version } | Rendering::MetadataList { version } => {
                meta::partial_object_metadata_list(&items, version, rv, cont)
            }
            Rendering::Object => {
                let mut metadata = json!({"resourceVersion": rv});
                if let Some(c) = cont {
                    metadata["continue"] = json!(c);
                }
                json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": items})
            }
        };
        typed_response(200, &body, self.rendering.content_type())
    }

    fn respond(&self, code: u16, rt: &super::resources::ResourceType, obj: Value) -> Response<Body> {
        let body = self.object(rt, obj);
        if body["kind"] == "Status" {
            return json_response(code, &body);
        }
        typed_response(code, &body, self.rendering.content_type())
    }
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
    if req.method() == http::Method::POST && req.uri().path() == super::certificates::access_review::PATH {
        let user = user.ok_or_else(ApiError::unauthorized)?;
        let (bytes, ct) = read_body(req).await?;
        let review = decode_object(&bytes, &ct)?;
        let answered = super::certificates::access_review::subject_access_review(&app, &user, &review).await?;
        return Ok(json_response(201, &answered));
    }
    let crds = &app.registry.crds;
    let endpoint = request::parse_with(req.method(), req.uri().path(), req.uri().query(), &|g, v, p| {
        crds.find(g, v, p)
    })?;
    if matches!(endpoint, Endpoint::Health) {
        return Ok(Response::new(full("ok")));
    }
    if matches!(endpoint, Endpoint::Version) {
        return Ok(json_response(200, &discovery::version()));
    }
    let user = user.ok_or_else(ApiError::unauthorized)?;
    match endpoint {
        Endpoint::Health | Endpoint::Version => unreachable!("answered above"),
        Endpoint::CoreVersions => Ok(match negotiate::aggregated_discovery(accept(&req)) {
            Some(v) => typed_response(
                200,
                &discovery_aggregated::core(v),
                discovery_aggregated::content_type(v),
            ),
            None => json_response(200, &discovery::core_versions()),
        }),
        Endpoint::Groups => Ok(match negotiate::aggregated_discovery(accept(&req)) {
            Some(v) => typed_response(
                200,
                &discovery_aggregated::groups(v, &app.registry.crds),
                discovery_aggregated::content_type(v),
            ),
            None => {
                let mut doc = discovery::groups();
                crd::discovery::extend_groups(&mut doc, &app.registry.crds);
                json_response(200, &doc)
            }
        }),
        Endpoint::Group(g) => discovery::group(&g)
            .or_else(|| crd::discovery::group(&app.registry.crds, &g))
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::path_not_found(req.uri().path())),
        Endpoint::ResourceList { group, version } => discovery::resource_list(&group, &version)
            .or_else(|| crd::discovery::resource_list(&app.registry.crds, &group, &version))
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::path_not_found(req.uri().path())),
        Endpoint::OpenApiV3(gv) => {
            super::openapi::v3(crds, gv.as_deref(), req.uri().query(), req.uri().path(), req.headers())
        }
        Endpoint::OpenApiV2 => super::openapi::v2(crds, req.headers()),
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
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(bytes)?,
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
    if super::streaming::is_streaming(sub) {
        return super::streaming::proxy(&app, req, &r, user).await;
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Negotiated before anything is written, so a 406 never follows a change. Logs are text.
    let out = if sub == Some("log") {
        Output {
            rendering: Rendering::Object,
            table: TableOptions {
                version: "v1",
                include: table::IncludeObject::Metadata,
            },
        }
    } else {
        Output::negotiate(&accept, &r)?
    };
    let dry_run = match r.verb {
        Verb::Create => dryrun::requested(r.query.get("dryRun"), "CreateOptions")?,
        Verb::Update => dryrun::requested(r.query.get("dryRun"), "UpdateOptions")?,
        Verb::Patch => dryrun::requested(r.query.get("dryRun"), "PatchOptions")?,
        // DeleteOptions may also ask for it in the body (kubectl does); see delete_options.
        Verb::Delete | Verb::DeleteCollection => dryrun::requested(r.query.get("dryRun"), "DeleteOptions")?,
        Verb::Get | Verb::List | Verb::Watch => false,
    };
    let registry = if dry_run {
        app.registry.dry_run()
    } else {
        Arc::clone(&app.registry)
    };
    let registry = &registry;
    let chain = super::admission::Chain::new(&app, user, &r, dry_run);
    match r.verb {
        Verb::Get if sub == Some("log") => super::logs::pod_log(&app, ns.unwrap_or("default"), name, &r.query).await,
        _ if sub == Some("log") => Err(ApiError::method_not_allowed(format!(
            "{} is not supported on pods/log",
            r.verb.as_str()
        ))),
        Verb::Get if sub == Some("scale") => Ok(json_response(200, &registry.get_scale(rt, ns, name).await?)),
        Verb::Get => Ok(out.respond(200, rt, registry.get(rt, ns, name).await?)),
        Verb::List => {
            let filter = ObjectFilter::from_query(rt, r.query.get("labelSelector"), r.query.get("fieldSelector"))?;
            let limit = r.query.number("limit")?.filter(|l| *l > 0).map(|l| l as usize);
            let exact = versionmatch::validate(&r.query, false)? == versionmatch::VersionMatch::Exact;
            let scope = Scope {
                rt,
                namespace: ns,
                filter: &filter,
            };
            let page = registry
                .list(
                    &scope,
                    limit,
                    r.query.get("continue"),
                    r.query.get("resourceVersion"),
                    exact,
                )
                .await?;
            let rv = page.resource_version.to_string();
            Ok(out.list(rt, page.items, &rv, page.continue_token.as_deref()))
        }
        Verb::Watch => watch(app.clone(), r, out).await,
        Verb::Create => {
            let fm = field_manager(&req, &r, false)?;
            let (bytes, ct) = read_body(req).await?;
            let mut body = decode_object(&bytes, &ct)?;
            if sub == Some("binding") {
                let status = registry.bind_pod(ns.unwrap_or("default"), name, &body).await?;
                return Ok(json_response(201, &status));
            }
            if sub == Some("eviction") {
                let status = super::eviction::evict(registry, dry_run, ns.unwrap_or("default"), name, &body).await?;
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
            super::certificates::admit_create(user, &r, &mut body)?;
            let created = registry.create_admitted(rt, ns, body, Some(&fm), &chain).await?;
            let resp = with_warning(out.respond(201, rt, unstored(created, dry_run)), warning);
            Ok(super::admission::with_warnings(resp, &chain.warnings()))
        }
        // A Scale body is not the parent's type: the parent's field validation does not apply.
        Verb::Update if sub == Some("scale") => {
            let fm = field_manager(&req, &r, false)?;
            let (bytes, ct) = read_body(req).await?;
            let body = decode_object(&bytes, &ct)?;
            let pinned = body["metadata"]["resourceVersion"].is_string();
            let scale = registry
                .write_scale(rt, ns, name, pinned, |_| Ok(body.clone()), Some(&fm), &chain)
                .await?;
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
            let fm = field_manager(&req, &r, patch_type == PatchType::Apply)?;
            let (bytes, _) = read_body(req).await?;
            let pinned =
                serde_json::from_slice::<Value>(&bytes).is_ok_and(|p| p["metadata"]["resourceVersion"].is_string());
            let change = |current: &Value| {
                super::patch::apply_patch("Scale", current, &bytes, patch_type)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            };
            let scale = registry
                .write_scale(rt, ns, name, pinned, change, Some(&fm), &chain)
                .await?;
            Ok(json_response(200, &scale))
        }
        Verb::Update => {
            let fm = field_manager(&req, &r, false)?;
            let (bytes, ct) = read_body(req).await?;
            let body = decode_object(&bytes, &ct)?;
            let warning = field_validation(&r, &body)?;
            super::certificates::admit_write(&app, user, &r).await?;
            let (obj, created) = registry
                .update_admitted(rt, ns, name, body, sub, Some(&fm), &chain)
                .await?;
            let resp = with_warning(
                out.respond(if created { 201 } else { 200 }, rt, unstored(obj, dry_run)),
                warning,
            );
            Ok(super::admission::with_warnings(resp, &chain.warnings()))
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
            // Custom objects have no strategic merge metadata; upstream refuses such patches.
            if patch_type == PatchType::StrategicMergePatch && rt.custom.is_some() {
                return Err(ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {media:?})"
                    ),
                    details: None,
                });
            }
            if patch_type == PatchType::Apply && r.query.get("fieldManager").is_none() {
                return Err(ApiError::bad_request(
                    "PATCH with apply-patch requires the fieldManager query parameter",
                ));
            }
            let fm = field_manager(&req, &r, patch_type == PatchType::Apply)?;
            let (bytes, _) = read_body(req).await?;
            let warning = match serde_json::from_slice::<Value>(&bytes) {
                Ok(body) if patch_type != PatchType::JsonPatch => field_validation(&r, &body)?,
                _ => None,
            };
            super::certificates::admit_write(&app, user, &r).await?;
            let obj = registry
                .patch_admitted(rt, ns, name, patch_type, &bytes, sub, Some(&fm), &chain)
                .await?;
            let resp = with_warning(out.respond(200, rt, unstored(obj, dry_run)), warning);
            Ok(super::admission::with_warnings(resp, &chain.warnings()))
        }
        Verb::Delete => {
            let grace = r.query.number("gracePeriodSeconds")?;
            let (bytes, ct) = read_body(req).await?;
            let (body, body_dry_run) = delete_options(&bytes, &ct)?;
            let opts = DeleteOptions::from_body(&body, grace, r.query.get("propagationPolicy"))?;
            let registry = if body_dry_run {
                app.registry.dry_run()
            } else {
                Arc::clone(registry)
            };
            chain.admit_delete().await?;
            let obj = registry.delete(rt, ns, name, &opts).await?;
            Ok(out.respond(200, rt, obj))
        }
        Verb::DeleteCollection => {
            let filter = ObjectFilter::from_query(rt, r.query.get("labelSelector"), r.query.get("fieldSelector"))?;
            let grace = r.query.number("gracePeriodSeconds")?;
            let (bytes, ct) = read_body(req).await?;
            let (body, body_dry_run) = delete_options(&bytes, &ct)?;
            let scope = Scope {
                rt,
                namespace: ns,
                filter: &filter,
            };
            let opts = DeleteOptions::from_body(&body, grace, r.query.get("propagationPolicy"))?;
            let registry = if body_dry_run {
                app.registry.dry_run()
            } else {
                Arc::clone(registry)
            };
            let deleted = registry.delete_collection(&scope, &opts).await?;
            let rv = registry.store.current_revision().await.unwrap_or_default();
            Ok(out.list(rt, deleted, &rv.to_string(), None))
        }
    }
}

/// Who a write is recorded for in `metadata.managedFields`.
fn field_manager<B>(req: &Request<B>, r: &ResourceRequest, apply: bool) -> Result<FieldManager, ApiError> {
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    FieldManager::from_request(r.query.get("fieldManager"), user_agent, r.query.get("force"), apply)
}

/// A dry-run create consumed no revision: its reply carries none (as upstream's).
fn unstored(mut obj: Value, dry_run: bool) -> Value {
    if dry_run && obj["metadata"]["resourceVersion"] == "0" {
        super::meta::metadata_mut(&mut obj).remove("resourceVersion");
    }
    obj
}

/// Decodes a DELETE body (DeleteOptions; empty is allowed) and whether it asks for a dry
/// run. A body that does not decode is a 400, as upstream's; it is never read as "no options".
fn delete_options(bytes: &[u8], content_type: &str) -> Result<(Value, bool), ApiError> {
    if bytes.is_empty() {
        return Ok((Value::Null, false));
    }
    let body = decode_object(bytes, content_type)
        .map_err(|e| ApiError::bad_request(format!("the DeleteOptions body could not be decoded: {}", e.message)))?;
    let wrong = |field: &str, want: &str| {
        ApiError::bad_request(format!(
            "the DeleteOptions body could not be decoded: {field} must be {want}"
        ))
    };
    if !body.is_object() {
        return Err(wrong("the body", "an object"));
    }
    for (field, ok) in [
        ("gracePeriodSeconds", body["gracePeriodSeconds"].is_i64()),
        ("propagationPolicy", body["propagationPolicy"].is_string()),
        ("orphanDependents", body["orphanDependents"].is_boolean()),
        ("preconditions", body["preconditions"].is_object()),
        ("dryRun", body["dryRun"].is_array()),
    ] {
        if !ok && !body[field].is_null() {
            let want = match field {
                "gracePeriodSeconds" => "an integer",
                "orphanDependents" => "a boolean",
                "preconditions" => "an object",
                "dryRun" => "a list of strings",
                _ => "a string",
            };
            return Err(wrong(field, want));
        }
    }
    let mut dry_run = false;
    for v in body["dryRun"].as_array().into_iter().flatten() {
        let v = v.as_str().ok_or_else(|| wrong("dryRun", "a list of strings"))?;
        dry_run |= dryrun::requested(Some(v).filter(|v| !v.is_empty()), "DeleteOptions")?;
    }
    Ok((body, dry_run))
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
async fn watch(app: Arc<App>, r: ResourceRequest, out: Output) -> Result<Response<Body>, ApiError> {
    let rt = r.resource;
    let filter = ObjectFilter::from_query(rt, r.query.get("labelSelector"), r.query.get("fieldSelector"))?;
    versionmatch::validate(&r.query, true)?;
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
            let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
            // Bookmarks take the stream's form too: a metadata watcher decodes every object
            // as PartialObjectMetadata (upstream converts bookmarks the same way).
            let object = match out.rendering {
                Rendering::Metadata { .. } => out.object(rt, object),
                _ => object,
            };
            json!({"type": "BOOKMARK", "object": object})
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
                Some(Some(Ok(ev))) if ev.kind == registry::PROGRESS => {
                    // Safe to hand out: every event up to it has already been sent or
                    // filtered out, so resuming from it neither replays nor misses one.
                    last_rv = last_rv.max(ev.revision);
                    continue;
                }
                Some(Some(Ok(ev))) => {
                    last_rv = last_rv.max(ev.revision);
                    line(json!({"type": ev.kind, "object": out.object(rt, ev.object)}))
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
