//! DefaultStorageClass: a new claim that does not name a class (the field absent, not
//! `""`, which asks for no class) gets the class annotated as the default. When several
//! are, the newest wins, as upstream since 1.26.

use serde_json::{Value, json};

use super::{Attributes, Operation};
use crate::apiserver::{App, filter::ObjectFilter, registry::Scope, resources, status::ApiError, volumes};

pub async fn admit(app: &App, attrs: &Attributes<'_>, obj: &mut Value, _old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.operation != Operation::Create || !attrs.is_main("", "persistentvolumeclaims") {
        return Ok(());
    }
    if obj["spec"].get("storageClassName").is_some_and(|v| !v.is_null()) {
        return Ok(());
    }
    let Some(rt) = resources::find("storage.k8s.io", "v1", "storageclasses") else {
        return Ok(());
    };
    let filter = ObjectFilter::default();
    let scope = Scope {
        rt,
        namespace: None,
        filter: &filter,
    };
    let classes = app.registry.list(&scope, None, None, None, false).await?.items;
    if let Some(name) = default_class(&classes)
        && obj["spec"].is_object()
    {
        obj["spec"]["storageClassName"] = json!(name);
    }
    Ok(())
}

/// The default class's name: the newest of those annotated, ties broken by name.
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| volumes::is_default_class(c))
        .max_by(|a, b| {
            let key = |c: &Value| {
                (
                    c["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    c["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                )
            };
            key(a).cmp(&key(b))
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_annotated_class_is_the_default() {
        let class = |name: &str, ts: &str, default: bool| {
            json!({"metadata": {"name": name, "creationTimestamp": ts,
                "annotations": {volumes::DEFAULT_CLASS_ANNOTATION: if default { "true" } else { "false" }}}})
        };
        assert_eq!(default_class(&[class("a", "2024-01-01T00:00:00Z", false)]), None);
        let all = [
            class("old", "2024-01-01T00:00:00Z", true),
            class("new", "2024-02-01T00:00:00Z", true),
            class("newest-but-not-default", "2024-03-01T00:00:00Z", false),
        ];
        assert_eq!(default_class(&all).as_deref(), Some("new"));
    }
}
