//! The `pod-template-hash`: what names a Deployment's ReplicaSet for one pod template and
//! labels its pods, so the ReplicaSets of one Deployment never select each other's pods.
//!
//! Upstream hashes Go's printed form of the template, which we cannot reproduce; we hash
//! its JSON (FNV-1a, 32 bits) and spell the number as upstream does. The value only has to
//! be stable for one template and differ between templates, which this is and does.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

pub const LABEL: &str = "pod-template-hash";

/// Upstream's SafeEncodeString alphabet: no vowels (no words), no look-alikes.
pub const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash of `template` (with any pod-template-hash label left out) and the
/// Deployment's `collisionCount`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&comparable(template)).unwrap_or_default();
    if let Some(n) = collision_count {
        bytes.extend_from_slice(n.to_string().as_bytes());
    }
    safe_hash(&bytes)
}

/// FNV-1a (32 bits) of `bytes`, its decimal digits spelt in upstream's SafeEncodeString
/// alphabet: the form of both the pod-template-hash and ControllerRevision names.
pub fn safe_hash(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The template as JSON without the pod-template-hash label (and without a labels map
/// that only held it), for hashing and comparing.
pub fn comparable(template: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(LABEL);
        if labels.is_empty()
            && let Some(meta) = v.pointer_mut("/metadata").and_then(Value::as_object_mut)
        {
            meta.remove("labels");
        }
    }
    v
}

/// Whether two templates are the same but for the pod-template-hash label (upstream's
/// EqualIgnoreHash).
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, PodSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn template(image: &str, labels: &[(&str, &str)]) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_hash_is_stable_ignores_its_own_label_and_tells_templates_apart() {
        let a = template("nginx:1.27", &[("app", "web"), ("tier", "a")]);
        let h = template_hash(&a, None);
        assert_eq!(
            h,
            template_hash(&template("nginx:1.27", &[("tier", "a"), ("app", "web")]), None)
        );
        assert_eq!(
            h,
            template_hash(
                &template("nginx:1.27", &[("app", "web"), ("tier", "a"), (LABEL, &h)]),
                None
            )
        );
        assert_ne!(
            h,
            template_hash(&template("nginx:1.28", &[("app", "web"), ("tier", "a")]), None)
        );
        assert_ne!(h, template_hash(&a, Some(1)), "a collision count gives another name");
        assert!(h.len() <= 10 && h.bytes().all(|b| ALPHANUMS.contains(&b)), "{h}");
        assert!(same_template(
            &a,
            &template("nginx:1.27", &[("app", "web"), ("tier", "a"), (LABEL, "x")])
        ));
    }
}
