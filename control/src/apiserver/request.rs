//! What a request asks for: the verb, the resource and the query, parsed from the URL the
//! way Kubernetes' RequestInfoFactory does.

use std::collections::HashMap;

use http::Method;

use super::{
    resources::{self, ResourceType},
    status::ApiError,
};

/// The non-resource endpoints.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Health,
    Version,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`
    ResourceList {
        group: String,
        version: String,
    },
    OpenApiV2,
    /// `/openapi/v3` (None) or `/openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`
    OpenApiV3(Option<String>),
    Resource(ResourceRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The RBAC verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A request for a resource (or one of its subresources).
#[derive(Debug, Clone)]
pub struct ResourceRequest {
    pub verb: Verb,
    pub resource: &'static ResourceType,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub query: Query,
}

/// Query parameters, decoded.
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
    /// A non-negative integer parameter; a malformed one is a 400 naming it.
    pub fn number(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid value for query parameter {key}: {v:?}")))
            })
            .transpose()
    }
}

pub fn parse(method: &Method, path: &str, raw_query: Option<&str>) -> Result<Endpoint, ApiError> {
    parse_with(method, path, raw_query, &|_, _, _| None)
}

/// Looks up a type the static table does not hold (group, version, plural): the custom
/// types of CustomResourceDefinitions.
pub type CustomLookup<'a> = dyn Fn(&str, &str, &str) -> Option<&'static ResourceType> + 'a;

/// `parse`, also routing to the types `custom` knows.
pub fn parse_with(
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
    custom: &CustomLookup<'_>,
) -> Result<Endpoint, ApiError> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = Query::parse(raw_query);
    match parts.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => Ok(Endpoint::Health),
        ["version"] => Ok(Endpoint::Version),
        ["api"] => Ok(Endpoint::CoreVersions),
        ["apis"] => Ok(Endpoint::Groups),
        ["apis", group] => Ok(Endpoint::Group((*group).to_owned())),
        ["api", version] => Ok(Endpoint::ResourceList {
            group: String::new(),
            version: (*version).to_owned(),
        }),
        ["apis", group, version] => Ok(Endpoint::ResourceList {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        }),
        ["openapi", "v2"] | ["swagger.json"] => Ok(Endpoint::OpenApiV2),
        ["openapi", "v3"] => Ok(Endpoint::OpenApiV3(None)),
        ["openapi", "v3", rest @ ..] => Ok(Endpoint::OpenApiV3(Some(rest.join("/")))),
        ["api", version, rest @ ..] => resource_request(method, "", version, rest, query, path, custom),
        ["apis", group, version, rest @ ..] => resource_request(method, group, version, rest, query, path, custom),
        _ => Err(ApiError::path_not_found(path)),
    }
}

fn resource_request(
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    query: Query,
    path: &str,
    custom: &CustomLookup<'_>,
) -> Result<Endpoint, ApiError> {
    // The legacy `/watch/` path prefix means the same as `?watch=true`.
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        // `namespaces/{name}/status|finalize` is the Namespace's own subresource.
        ["namespaces", _ns, "status" | "finalize"] => (None, rest),
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(ApiError::path_not_found(path)),
    };
    let resource = resources::find(group, version, plural)
        .or_else(|| custom(group, version, plural))
        .ok_or_else(|| ApiError::path_not_found(path))?;
    if let Some(sub) = &subresource
        && !resource.has_subresource(sub)
    {
        return Err(ApiError::path_not_found(path));
    }
    if resource.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::path_not_found(path));
    }
    let watch = legacy_watch || query.flag("watch");
    let verb = match (method, name.is_some()) {
        (&Method::GET, _) if watch => Verb::Watch,
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => Verb::List,
        // `pods/{name}/binding` is a create on the subresource.
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )));
        }
    };
    let namespace = if resource.namespaced { namespace } else { None };
    Ok(Endpoint::Resource(ResourceRequest {
        verb,
        resource,
        namespace,
        name,
        subresource,
        query,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: Method, path: &str, q: Option<&str>) -> ResourceRequest {
        match parse(&method, path, q).expect("parses") {
            Endpoint::Resource(r) => r,
            other => panic!("not a resource request: {other:?}"),
        }
    }

    #[test]
    fn namespaced_paths() {
        let r = res(Method::GET, "/api/v1/namespaces/default/pods", Some("limit=500"));
        assert_eq!(
            (r.verb, r.resource.plural, r.namespace.as_deref()),
            (Verb::List, "pods", Some("default"))
        );
        assert_eq!(r.query.number("limit").unwrap(), Some(500));
        let r = res(Method::PUT, "/api/v1/namespaces/default/pods/p/status", None);
        assert_eq!(
            (r.verb, r.name.as_deref(), r.subresource.as_deref()),
            (Verb::Update, Some("p"), Some("status"))
        );
        let r = res(Method::GET, "/apis/apps/v1/namespaces/x/deployments/d", None);
        assert_eq!((r.verb, r.resource.kind), (Verb::Get, "Deployment"));
    }

    #[test]
    fn namespaces_themselves() {
        let r = res(Method::GET, "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (r.resource.plural, r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = res(Method::PUT, "/api/v1/namespaces/kube-system/finalize", None);
        assert_eq!(r.subresource.as_deref(), Some("finalize"));
    }

    #[test]
    fn watches() {
        let r = res(Method::GET, "/api/v1/services", Some("watch=true&resourceVersion=7"));
        assert_eq!((r.verb, r.namespace), (Verb::Watch, None));
        assert_eq!(r.query.get("resourceVersion"), Some("7"));
        let r = res(Method::GET, "/api/v1/watch/namespaces/a/pods", None);
        assert_eq!((r.verb, r.namespace.as_deref()), (Verb::Watch, Some("a")));
    }

    #[test]
    fn unknown_things_are_not_found() {
        assert!(parse(&Method::GET, "/api/v1/widgets", None).is_err());
        assert!(parse(&Method::GET, "/api/v1/namespaces/a/pods/p/frobnicate", None).is_err());
        assert!(parse(&Method::GET, "/api/v1/pods/p", None).is_err());
        assert!(
            res(Method::GET, "/api/v1/pods", Some("labelSelector=a%3Db"))
                .query
                .get("labelSelector")
                == Some("a=b")
        );
    }
}
