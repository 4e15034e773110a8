//! The CustomResourceDefinition object itself: its defaults and the checks a definition
//! must pass before anything is served from it.

use serde_json::{Value, json};

use crate::apiserver::{meta, resources, status::Cause, strategy::is_dns_label};

/// Holds a CRD until its objects are deleted (the controller removes it).
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Defaults on create, as upstream's SetDefaults_CustomResourceDefinition plus the cleanup
/// finalizer and an empty status for the controller to fill.
pub fn default_on_create(crd: &mut Value) {
    default_spec(crd);
    let mut finalizers = meta::finalizers(crd);
    if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
        finalizers.push(CLEANUP_FINALIZER.to_owned());
    }
    meta::metadata_mut(crd).insert("finalizers".into(), json!(finalizers));
    crd["status"] = json!({"conditions": [], "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": []});
}

/// The spec defaults, applied on every write.
pub fn default_spec(crd: &mut Value) {
    let spec = &mut crd["spec"];
    if !spec.is_object() {
        return;
    }
    let kind = spec["names"]["kind"].as_str().unwrap_or_default().to_owned();
    if spec["names"].is_object() && !kind.is_empty() {
        if spec["names"]["singular"].as_str().is_none_or(str::is_empty) {
            spec["names"]["singular"] = json!(kind.to_lowercase());
        }
        if spec["names"]["listKind"].as_str().is_none_or(str::is_empty) {
            spec["names"]["listKind"] = json!(format!("{kind}List"));
        }
    }
    if !spec["conversion"].is_object() {
        spec["conversion"] = json!({"strategy": "None"});
    }
}

/// Checks a definition; `old` is the stored one on updates.
pub fn validate(crd: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') || !group.split('.').all(is_dns_label) {
        causes.push(Cause::invalid(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    } else if resources::RESOURCES.iter().any(|r| r.group == group) {
        causes.push(Cause::invalid(
            "spec.group",
            format!("Invalid value: {group:?}: is served by the API server itself"),
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else if !is_dns_label(plural) {
        causes.push(Cause::invalid(
            "spec.names.plural",
            format!("Invalid value: {plural:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
        ));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.names.kind"));
    }
    let name = meta::name(crd).unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    match spec["scope"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.scope")),
        Some("Cluster" | "Namespaced") => {}
        Some(other) => causes.push(Cause::not_supported(
            "spec.scope",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
    }
    if let Some(strategy) = spec["conversion"]["strategy"].as_str().filter(|s| *s != "None") {
        causes.push(Cause::not_supported(
            "spec.conversion.strategy",
            format!("Unsupported value: {strategy:?}: supported values: \"None\""),
        ));
    }
    validate_versions(spec, causes);
    if let Some(old) = old {
        for field in ["scope", "group"] {
            if old["spec"][field] != spec[field] {
                causes.push(Cause::invalid(
                    format!("spec.{field}"),
                    format!("Invalid value: {}: field is immutable", spec[field]),
                ));
            }
        }
    }
}

fn validate_versions(spec: &Value, causes: &mut Vec<Cause>) {
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::invalid(
            "spec.versions",
            "Invalid value: null: must have exactly one version marked as storage version",
        ));
        return;
    }
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            format!("Invalid value: {storage}: must have exactly one version marked as storage version"),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let name = v["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        } else if !is_dns_label(name) {
            causes.push(Cause::invalid(
                format!("{at}.name"),
                format!("Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-'"),
            ));
        }
        if versions[..i].iter().any(|o| o["name"] == v["name"]) {
            causes.push(Cause::duplicate(
                format!("{at}.name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        let schema = &v["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            causes.push(Cause {
                field: format!("{at}.schema.openAPIV3Schema"),
                reason: "FieldValueRequired",
                message: "Required value: schemas are required".into(),
            });
        } else {
            if schema["type"] != "object" {
                causes.push(Cause {
                    field: format!("{at}.schema.openAPIV3Schema.type"),
                    reason: "FieldValueRequired",
                    message: "Required value: must be object at the root".into(),
                });
            }
            structural(schema, &format!("{at}.schema.openAPIV3Schema"), causes);
        }
        if let Some(scale) = v["subresources"].get("scale").filter(|s| s.is_object()) {
            for (field, prefix) in [("specReplicasPath", ".spec."), ("statusReplicasPath", ".status.")] {
                let path = scale[field].as_str().unwrap_or_default();
                if path.is_empty() {
                    causes.push(Cause::required(format!("{at}.subresources.scale.{field}")));
                } else if !path.starts_with(prefix) {
                    causes.push(Cause::invalid(
                        format!("{at}.subresources.scale.{field}"),
                        format!(
                            "Invalid value: {path:?}: should be a json path under {}",
                            prefix.trim_end_matches('.')
                        ),
                    ));
                }
            }
        }
        if let Some(cols) = v["additionalPrinterColumns"].as_array() {
            for (c, col) in cols.iter().enumerate() {
                for field in ["name", "type", "jsonPath"] {
                    if col[field].as_str().is_none_or(str::is_empty) {
                        causes.push(Cause::required(format!("{at}.additionalPrinterColumns[{c}].{field}")));
                    }
                }
            }
        }
    }
}

/// The structural-schema rules that matter for serving: every node says its type (unless
/// it preserves unknown fields or is an int-or-string), and patterns compile.
fn structural(schema: &Value, at: &str, causes: &mut Vec<Cause>) {
    let typed = schema["type"].as_str().is_some_and(|t| !t.is_empty())
        || schema["x-kubernetes-int-or-string"] == true
        || schema["x-kubernetes-preserve-unknown-fields"] == true;
    if !typed {
        causes.push(Cause {
            field: format!("{at}.type"),
            reason: "FieldValueRequired",
            message: "Required value: must not be empty for specified object fields".into(),
        });
    }
    if let Some(p) = schema["pattern"].as_str()
        && let Err(e) = regex::Regex::new(p)
    {
        causes.push(Cause::invalid(
            format!("{at}.pattern"),
            format!("Invalid value: {p:?}: must be a valid regular expression, but isn't: {e}"),
        ));
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            structural(s, &format!("{at}.properties[{k}]"), causes);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        structural(items, &format!("{at}.items"), causes);
    }
    if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        structural(ap, &format!("{at}.additionalProperties"), causes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}}}]}})
    }

    fn fields(obj: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, None, &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn defaults_and_a_valid_definition() {
        let mut c = crd();
        default_on_create(&mut c);
        assert_eq!(c["spec"]["names"]["singular"], "widget");
        assert_eq!(c["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(c["spec"]["conversion"]["strategy"], "None");
        assert_eq!(c["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        assert!(fields(&c).is_empty(), "{:?}", fields(&c));
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let mut c = crd();
        c["metadata"]["name"] = json!("other.example.com");
        c["spec"]["versions"][0]["storage"] = json!(false);
        c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = json!({"properties": {}});
        c["spec"]["scope"] = json!("Galaxy");
        assert_eq!(
            fields(&c),
            [
                "metadata.name",
                "spec.scope",
                "spec.versions",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].type"
            ]
        );
        let mut c = crd();
        c["spec"]["group"] = json!("apps");
        c["metadata"]["name"] = json!("widgets.apps");
        assert_eq!(fields(&c), ["spec.group"]);
    }
}
