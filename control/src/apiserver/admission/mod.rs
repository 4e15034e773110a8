//! Admission: the plugins every write passes through after authorization, as upstream's
//! admission chain. The registry calls the chain at the points upstream's does — mutating
//! plugins on the defaulted object, then the registry's own validation, then validating
//! plugins, then storage — so create, update, patch, subresource writes and dry runs (the
//! same registry over an overlay store) are all admitted alike.
//!
//! A plugin is a module with `admit` (mutating) and/or `validate` (validating), each given
//! the request's [`Attributes`], the object and, on updates, the stored object. Refusals are
//! `Status` errors naming the object as upstream's `admission.NewForbidden` does
//! (`pods "x" is forbidden: <reason>`).

pub mod default_storage_class;
pub mod default_toleration_seconds;
pub mod limit_ranger;
pub mod namespace_lifecycle;
pub mod node_restriction;
pub mod pod_security;
pub mod pss;
pub mod resource_quota;
pub mod service_account;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{
    App,
    authn::UserInfo,
    request::{ResourceRequest, Verb},
    status::{ApiError, Details},
};

/// What a write does to its object, as upstream's admission.Operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

/// Who asks for what: what every plugin decides on.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub user: &'a UserInfo,
    pub req: &'a ResourceRequest,
    pub operation: Operation,
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// The request's namespace (`None` for cluster-scoped objects).
    pub fn namespace(&self) -> Option<&str> {
        self.req.namespace.as_deref().filter(|_| self.req.resource.namespaced)
    }

    /// Whether this is a write of the object itself (no subresource) of `group`/`plural`.
    pub fn is_main(&self, group: &str, plural: &str) -> bool {
        self.req.resource.group == group && self.req.resource.plural == plural && self.req.subresource.is_none()
    }
}

/// The plugins, in upstream's order (its `AllOrderedPlugins`); each entry says whether
/// it mutates, validates, or both. The chain runs every enabled mutating plugin in this
/// order, then (after the registry's validation) every enabled validating one.
pub const PLUGINS: &[Plugin] = &[
    Plugin::new("NamespaceLifecycle", true, false),
    Plugin::new("LimitRanger", true, true),
    Plugin::new("ServiceAccount", true, false),
    Plugin::new("NodeRestriction", false, true),
    Plugin::new("PodSecurity", false, true),
    Plugin::new("DefaultTolerationSeconds", true, false),
    Plugin::new("DefaultStorageClass", true, false),
    Plugin::new("ResourceQuota", false, true),
];

/// One admission plugin as the chain knows it.
#[derive(Debug, Clone, Copy)]
pub struct Plugin {
    pub name: &'static str,
    pub mutating: bool,
    pub validating: bool,
}

impl Plugin {
    const fn new(name: &'static str, mutating: bool, validating: bool) -> Self {
        Self {
            name,
            mutating,
            validating,
        }
    }
}

/// Which plugins run and how (`rudder server`'s admission flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Names of the enabled plugins; the chain runs them in [`PLUGINS`] order whatever
    /// order they are given in, as upstream does.
    pub enabled: Vec<String>,
    /// DefaultTolerationSeconds' `--default-not-ready-toleration-seconds`.
    pub not_ready_toleration: Duration,
    /// DefaultTolerationSeconds' `--default-unreachable-toleration-seconds`.
    pub unreachable_toleration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: PLUGINS.iter().map(|p| p.name.to_owned()).collect(),
            not_ready_toleration: Duration::from_secs(300),
            unreachable_toleration: Duration::from_secs(300),
        }
    }
}

/// An unknown plugin name in `--enable-admission-plugins` or `--disable-admission-plugins`.
#[derive(Debug, thiserror::Error)]
#[error("unknown admission plugin {name:?} (known: {known})")]
pub struct UnknownPlugin {
    pub name: String,
    pub known: String,
}

impl Config {
    /// The default set, plus `enable`, minus `disable` (upstream's flags: every
    /// recommended plugin is on unless disabled).
    pub fn with_flags(enable: &[String], disable: &[String]) -> Result<Self, UnknownPlugin> {
        for name in enable.iter().chain(disable) {
            if !PLUGINS.iter().any(|p| p.name == name) {
                return Err(UnknownPlugin {
                    name: name.clone(),
                    known: PLUGINS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
                });
            }
        }
        let mut config = Self::default();
        config.enabled.retain(|p| !disable.contains(p));
        for name in enable {
            if !config.enabled.contains(name) {
                config.enabled.push(name.clone());
            }
        }
        Ok(config)
    }

    fn on(&self, name: &str) -> bool {
        self.enabled.iter().any(|e| e == name)
    }
}

/// What the registry calls: mutating admission on the defaulted object, validating
/// admission on the validated one. `old` is the stored object on updates.
#[async_trait]
pub trait Admission: Send + Sync {
    async fn mutate(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError>;
    async fn validate(&self, obj: &Value, old: Option<&Value>) -> Result<(), ApiError>;
}

/// No admission: the server's own writes (bootstrap objects, controllers inside the server).
pub struct Nothing;

#[async_trait]
impl Admission for Nothing {
    async fn mutate(&self, _: &mut Value, _: Option<&Value>) -> Result<(), ApiError> {
        Ok(())
    }
    async fn validate(&self, _: &Value, _: Option<&Value>) -> Result<(), ApiError> {
        Ok(())
    }
}

/// The chain for one request.
pub struct Chain<'a> {
    pub app: &'a App,
    pub attrs: Attributes<'a>,
    /// What plugins want the client told (PodSecurity's `warn` mode), in `Warning` headers.
    warnings: std::sync::Mutex<Vec<String>>,
}

impl<'a> Chain<'a> {
    pub fn new(app: &'a App, user: &'a UserInfo, req: &'a ResourceRequest, dry_run: bool) -> Self {
        let operation = match req.verb {
            Verb::Create => Operation::Create,
            Verb::Delete | Verb::DeleteCollection => Operation::Delete,
            _ => Operation::Update,
        };
        Self {
            app,
            attrs: Attributes {
                user,
                req,
                operation,
                dry_run,
            },
            warnings: std::sync::Mutex::default(),
        }
    }

    /// The plugins' warnings so far, for the response's `Warning` headers.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn warn(&self, more: Vec<String>) {
        if let Ok(mut w) = self.warnings.lock() {
            w.extend(more);
        }
    }

    /// An update that creates (PUT of a missing Lease, server-side apply of a new object)
    /// is admitted as a create, as upstream's.
    fn attrs_for(&self, old: Option<&Value>) -> Attributes<'a> {
        let mut attrs = self.attrs;
        if old.is_none() && attrs.operation == Operation::Update {
            attrs.operation = Operation::Create;
        }
        attrs
    }

    fn enabled(&self) -> impl Iterator<Item = &'static Plugin> + '_ {
        PLUGINS.iter().filter(|p| self.app.admission.on(p.name))
    }

    /// A DELETE: the plugins see no new object (upstream passes none either).
    pub async fn admit_delete(&self) -> Result<(), ApiError> {
        let mut nothing = Value::Null;
        self.mutate(&mut nothing, None).await?;
        self.validate(&nothing, None).await
    }
}

#[async_trait]
impl Admission for Chain<'_> {
    async fn mutate(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let attrs = self.attrs_for(old);
        let app = self.app;
        for plugin in self.enabled().filter(|p| p.mutating) {
            match plugin.name {
                "NamespaceLifecycle" => namespace_lifecycle::admit(app, &attrs, obj, old).await,
                "LimitRanger" => limit_ranger::admit(app, &attrs, obj, old).await,
                "ServiceAccount" => service_account::admit(app, &attrs, obj, old).await,
                "DefaultTolerationSeconds" => default_toleration_seconds::admit(app, &attrs, obj, old).await,
                "DefaultStorageClass" => default_storage_class::admit(app, &attrs, obj, old).await,
                _ => Ok(()),
            }
            .inspect_err(|e| tracing::debug!(plugin = plugin.name, error = %e.message, "admission refused"))?;
        }
        Ok(())
    }

    async fn validate(&self, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let attrs = self.attrs_for(old);
        let app = self.app;
        for plugin in self.enabled().filter(|p| p.validating) {
            match plugin.name {
                "LimitRanger" => limit_ranger::validate(app, &attrs, obj, old).await,
                "NodeRestriction" => node_restriction::validate(app, &attrs, obj, old).await,
                "PodSecurity" => pod_security::evaluate(app, &attrs, obj, old)
                    .await
                    .map(|w| self.warn(w)),
                "ResourceQuota" => resource_quota::validate(app, &attrs, obj, old).await,
                _ => Ok(()),
            }
            .inspect_err(|e| tracing::debug!(plugin = plugin.name, error = %e.message, "admission refused"))?;
        }
        // Not a plugin upstream (RBAC's storage does it) and never off: granting more than
        // one holds is refused whatever the admission flags say.
        if attrs.operation != Operation::Delete && !obj.is_null() {
            super::escalation::admit(app, attrs.user, attrs.req, obj).await?;
        }
        Ok(())
    }
}

/// Adds each warning as its own `Warning: 299 - "..."` header, quoted as RFC 7234 asks
/// (kubectl prints them as `Warning: ...`).
pub fn with_warnings<B>(mut resp: http::Response<B>, warnings: &[String]) -> http::Response<B> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(http::header::WARNING, v);
        }
    }
    resp
}

/// The name a refusal names: the object's, else its generateName (upstream's admission
/// runs before names are generated), else the request's.
fn object_name<'o>(attrs: &'o Attributes<'_>, obj: &'o Value) -> &'o str {
    let m = &obj["metadata"];
    m["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| m["generateName"].as_str().filter(|n| !n.is_empty()))
        .or(attrs.req.name.as_deref())
        .unwrap_or("Unknown")
}

/// Upstream's `admission.NewForbidden`: 403 `pods "x" is forbidden: <why>`.
pub fn forbidden(attrs: &Attributes<'_>, obj: &Value, why: impl std::fmt::Display) -> ApiError {
    let rt = attrs.req.resource;
    let name = object_name(attrs, obj);
    ApiError {
        details: Some(Box::new(Details {
            name: name.to_owned(),
            group: rt.group.to_owned(),
            kind: rt.plural.to_owned(),
            causes: vec![],
        })),
        ..ApiError::forbidden(format!("{} \"{name}\" is forbidden: {why}", rt.group_resource()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_enable_and_disable_by_name() {
        let c = Config::with_flags(&[], &["LimitRanger".into()]).expect("known");
        assert!(!c.on("LimitRanger"));
        assert!(c.on("ServiceAccount"));
        let e = Config::with_flags(&["AlwaysPullImages".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("AlwaysPullImages"), "{e}");
    }
}
