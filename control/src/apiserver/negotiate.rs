//! Content negotiation by `Accept`: which form of a response the client asked for.
//!
//! Clients name a form with media-type parameters (`application/json;as=Table;g=meta.k8s.io;v=v1`)
//! and list fallbacks after it, comma-separated; the first alternative we can serve wins, as
//! upstream's negotiation does. A request whose every alternative names a form we do not
//! serve gets 406 rather than a silently different body.

use super::status::ApiError;

/// One alternative of an Accept header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    /// `application/json`, `*/*`, ...
    pub base: String,
    /// The `as`, `g` and `v` parameters (empty when absent).
    pub kind: String,
    pub group: String,
    pub version: String,
}

/// Splits an Accept header into its alternatives, in the client's order.
pub fn media_ranges(accept: &str) -> Vec<MediaRange> {
    accept
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|alt| {
            let mut parts = alt.split(';');
            let base = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let mut range = MediaRange {
                base,
                kind: String::new(),
                group: String::new(),
                version: String::new(),
            };
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                let v = v.trim().trim_matches('"').to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "as" => range.kind = v,
                    "g" => range.group = v,
                    "v" => range.version = v,
                    _ => {}
                }
            }
            range
        })
        .collect()
}

impl MediaRange {
    /// True for a JSON alternative naming `as=<kind>` in group `group` (any of `versions`).
    fn names(&self, kind: &str, group: &str, versions: &[&'static str]) -> Option<&'static str> {
        if self.base != "application/json" || self.kind != kind || self.group != group {
            return None;
        }
        versions.iter().copied().find(|v| *v == self.version)
    }

    /// An alternative that accepts the resource's own form (any JSON, YAML or protobuf we
    /// answer with JSON today, as before negotiation existed).
    fn plain(&self) -> bool {
        self.kind.is_empty()
            && matches!(
                self.base.as_str(),
                "application/json"
                    | "application/yaml"
                    | "application/vnd.kubernetes.protobuf"
                    | "application/*"
                    | "*/*"
                    | "*"
            )
    }
}

/// What a resource request's response holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    /// The objects themselves.
    Object,
    /// `PartialObjectMetadata` (one object, or each watch event's object) of meta.k8s.io/`version`.
    Metadata { version: &'static str },
    /// `PartialObjectMetadataList` of meta.k8s.io/`version`.
    MetadataList { version: &'static str },
    /// `Table` of meta.k8s.io/`version`.
    Table { version: &'static str },
}

/// Which responses a request produces: a list answers with a list kind, a get (or a write)
/// and each watch event with a single-object kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Single,
    List,
    Watch,
}

const META_VERSIONS: &[&str] = &["v1", "v1beta1"];
const META: &str = "meta.k8s.io";

impl Rendering {
    /// The Content-Type naming this form, as upstream sets it.
    pub fn content_type(self) -> String {
        match self {
            Rendering::Object => "application/json".to_owned(),
            Rendering::Metadata { version } => {
                format!("application/json;as=PartialObjectMetadata;g={META};v={version}")
            }
            Rendering::MetadataList { version } => {
                format!("application/json;as=PartialObjectMetadataList;g={META};v={version}")
            }
            Rendering::Table { version } => format!("application/json;as=Table;g={META};v={version}"),
        }
    }
}

/// Picks the first alternative of `accept` we serve for `target`; an absent header means the
/// object itself.
pub fn rendering(accept: &str, target: Target) -> Result<Rendering, ApiError> {
    let ranges = media_ranges(accept);
    if ranges.is_empty() {
        return Ok(Rendering::Object);
    }
    for r in &ranges {
        if r.plain() {
            return Ok(Rendering::Object);
        }
        if let Some(version) = r.names("Table", META, META_VERSIONS) {
            return Ok(Rendering::Table { version });
        }
        let single = r.names("PartialObjectMetadata", META, META_VERSIONS);
        let list = r.names("PartialObjectMetadataList", META, META_VERSIONS);
        match (target, single, list) {
            (Target::Single | Target::Watch, Some(version), _) => return Ok(Rendering::Metadata { version }),
            (Target::List, _, Some(version)) => return Ok(Rendering::MetadataList { version }),
            _ => {}
        }
    }
    Err(not_acceptable(accept))
}

/// The aggregated discovery version (`v2` or `v2beta1`) the client asked for first, or None
/// when it prefers (or only takes) the legacy documents.
pub fn aggregated_discovery(accept: &str) -> Option<&'static str> {
    for r in media_ranges(accept) {
        if let Some(v) = r.names("APIGroupDiscoveryList", "apidiscovery.k8s.io", &["v2", "v2beta1"]) {
            return Some(v);
        }
        if r.plain() {
            return None;
        }
    }
    None
}

pub fn not_acceptable(accept: &str) -> ApiError {
    ApiError {
        code: 406,
        reason: "NotAcceptable",
        message: format!(
            "none of the media types in Accept {accept:?} can be served; accepted: application/json, \
             application/yaml, application/vnd.kubernetes.protobuf, and application/json with \
             as=Table, as=PartialObjectMetadata or as=PartialObjectMetadataList (g=meta.k8s.io, v=v1 or v1beta1)"
        ),
        details: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_asks_for_tables_first() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            rendering(accept, Target::List).unwrap(),
            Rendering::Table { version: "v1" }
        );
        assert_eq!(rendering("application/json", Target::List).unwrap(), Rendering::Object);
        assert_eq!(rendering("", Target::Single).unwrap(), Rendering::Object);
    }

    #[test]
    fn metadata_forms_follow_the_target() {
        let single = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        let list = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1beta1";
        assert_eq!(
            rendering(single, Target::Single).unwrap(),
            Rendering::Metadata { version: "v1" }
        );
        assert_eq!(
            rendering(single, Target::Watch).unwrap(),
            Rendering::Metadata { version: "v1" }
        );
        assert_eq!(
            rendering(list, Target::List).unwrap(),
            Rendering::MetadataList { version: "v1beta1" }
        );
        // A list cannot be answered as one PartialObjectMetadata: upstream says 406.
        assert_eq!(rendering(single, Target::List).unwrap_err().code, 406);
        // ...unless the client named a fallback.
        assert_eq!(
            rendering(&format!("{single},application/json"), Target::List).unwrap(),
            Rendering::Object
        );
        assert_eq!(
            rendering("application/json;as=Bogus;g=meta.k8s.io;v=v1", Target::Single)
                .unwrap_err()
                .code,
            406
        );
    }

    #[test]
    fn discovery_versions_in_client_order() {
        let kube_rs = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_discovery(kube_rs), Some("v2"));
        let kubectl_127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_discovery(kubectl_127), Some("v2beta1"));
        let protobuf_first = "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        assert_eq!(aggregated_discovery(protobuf_first), Some("v2"));
        assert_eq!(aggregated_discovery("application/json"), None);
        assert_eq!(aggregated_discovery(""), None);
    }
}
