//! The schemas of the built-in kinds, generated from k8s-openapi's `schemars` impls (which
//! carry upstream's names, descriptions and required lists) rather than embedded from
//! upstream's spec files.
//!
//! The table below covers every kind this server serves or is likely to serve soon, plus
//! the kinds of subresources (`Scale`, `Eviction`, ...); a kind is only published when
//! `resources.rs` serves it (or it is the body of a served subresource).

use schemars::{SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value};

use k8s_openapi::{
    api::{
        admissionregistration::v1 as admissionregistration,
        apps::v1 as apps,
        authentication::v1 as authentication,
        authorization::v1 as authorization,
        autoscaling::{v1 as autoscaling_v1, v2 as autoscaling_v2},
        batch::v1 as batch,
        certificates::v1 as certificates,
        coordination::v1 as coordination,
        core::v1 as core,
        discovery::v1 as discovery,
        events::v1 as events,
        flowcontrol::v1 as flowcontrol,
        networking::v1 as networking,
        node::v1 as node,
        policy::v1 as policy,
        rbac::v1 as rbac,
        scheduling::v1 as scheduling,
        storage::v1 as storage,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions,
    kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration,
};

/// A group/version/kind, as `x-kubernetes-group-version-kind` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvk {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
}

type Generate = fn(&mut SchemaGenerator) -> Value;

macro_rules! kinds {
    ($( $group:literal $version:literal $kind:literal => $ty:ty, )*) => {
        /// Every kind we can describe, with the function adding its schema (and the
        /// schemas it refers to) to a generator.
        static KINDS: &[(Gvk, Generate)] = &[
            $( (Gvk { group: $group, version: $version, kind: $kind }, |g| g.subschema_for::<$ty>().to_value()), )*
        ];
    };
}

kinds! {
    "" "v1" "Binding" => core::Binding,
    "" "v1" "ComponentStatus" => core::ComponentStatus,
    "" "v1" "ConfigMap" => core::ConfigMap,
    "" "v1" "Endpoints" => core::Endpoints,
    "" "v1" "Event" => core::Event,
    "" "v1" "LimitRange" => core::LimitRange,
    "" "v1" "Namespace" => core::Namespace,
    "" "v1" "Node" => core::Node,
    "" "v1" "PersistentVolume" => core::PersistentVolume,
    "" "v1" "PersistentVolumeClaim" => core::PersistentVolumeClaim,
    "" "v1" "Pod" => core::Pod,
    "" "v1" "PodTemplate" => core::PodTemplate,
    "" "v1" "ReplicationController" => core::ReplicationController,
    "" "v1" "ResourceQuota" => core::ResourceQuota,
    "" "v1" "Secret" => core::Secret,
    "" "v1" "Service" => core::Service,
    "" "v1" "ServiceAccount" => core::ServiceAccount,
    "admissionregistration.k8s.io" "v1" "MutatingWebhookConfiguration" => admissionregistration::MutatingWebhookConfiguration,
    "admissionregistration.k8s.io" "v1" "ValidatingAdmissionPolicy" => admissionregistration::ValidatingAdmissionPolicy,
    "admissionregistration.k8s.io" "v1" "ValidatingAdmissionPolicyBinding" => admissionregistration::ValidatingAdmissionPolicyBinding,
    "admissionregistration.k8s.io" "v1" "ValidatingWebhookConfiguration" => admissionregistration::ValidatingWebhookConfiguration,
    "apiextensions.k8s.io" "v1" "CustomResourceDefinition" => apiextensions::CustomResourceDefinition,
    "apiregistration.k8s.io" "v1" "APIService" => apiregistration::APIService,
    "apps" "v1" "ControllerRevision" => apps::ControllerRevision,
    "apps" "v1" "DaemonSet" => apps::DaemonSet,
    "apps" "v1" "Deployment" => apps::Deployment,
    "apps" "v1" "ReplicaSet" => apps::ReplicaSet,
    "apps" "v1" "StatefulSet" => apps::StatefulSet,
    "authentication.k8s.io" "v1" "SelfSubjectReview" => authentication::SelfSubjectReview,
    "authentication.k8s.io" "v1" "TokenRequest" => authentication::TokenRequest,
    "authentication.k8s.io" "v1" "TokenReview" => authentication::TokenReview,
    "authorization.k8s.io" "v1" "LocalSubjectAccessReview" => authorization::LocalSubjectAccessReview,
    "authorization.k8s.io" "v1" "SelfSubjectAccessReview" => authorization::SelfSubjectAccessReview,
    "authorization.k8s.io" "v1" "SelfSubjectRulesReview" => authorization::SelfSubjectRulesReview,
    "authorization.k8s.io" "v1" "SubjectAccessReview" => authorization::SubjectAccessReview,
    "autoscaling" "v1" "HorizontalPodAutoscaler" => autoscaling_v1::HorizontalPodAutoscaler,
    "autoscaling" "v1" "Scale" => autoscaling_v1::Scale,
    "autoscaling" "v2" "HorizontalPodAutoscaler" => autoscaling_v2::HorizontalPodAutoscaler,
    "batch" "v1" "CronJob" => batch::CronJob,
    "batch" "v1" "Job" => batch::Job,
    "certificates.k8s.io" "v1" "CertificateSigningRequest" => certificates::CertificateSigningRequest,
    "coordination.k8s.io" "v1" "Lease" => coordination::Lease,
    "discovery.k8s.io" "v1" "EndpointSlice" => discovery::EndpointSlice,
    "events.k8s.io" "v1" "Event" => events::Event,
    "flowcontrol.apiserver.k8s.io" "v1" "FlowSchema" => flowcontrol::FlowSchema,
    "flowcontrol.apiserver.k8s.io" "v1" "PriorityLevelConfiguration" => flowcontrol::PriorityLevelConfiguration,
    "networking.k8s.io" "v1" "Ingress" => networking::Ingress,
    "networking.k8s.io" "v1" "IngressClass" => networking::IngressClass,
    "networking.k8s.io" "v1" "NetworkPolicy" => networking::NetworkPolicy,
    "node.k8s.io" "v1" "RuntimeClass" => node::RuntimeClass,
    "policy" "v1" "Eviction" => policy::Eviction,
    "policy" "v1" "PodDisruptionBudget" => policy::PodDisruptionBudget,
    "rbac.authorization.k8s.io" "v1" "ClusterRole" => rbac::ClusterRole,
    "rbac.authorization.k8s.io" "v1" "ClusterRoleBinding" => rbac::ClusterRoleBinding,
    "rbac.authorization.k8s.io" "v1" "Role" => rbac::Role,
    "rbac.authorization.k8s.io" "v1" "RoleBinding" => rbac::RoleBinding,
    "scheduling.k8s.io" "v1" "PriorityClass" => scheduling::PriorityClass,
    "storage.k8s.io" "v1" "CSIDriver" => storage::CSIDriver,
    "storage.k8s.io" "v1" "CSINode" => storage::CSINode,
    "storage.k8s.io" "v1" "StorageClass" => storage::StorageClass,
    "storage.k8s.io" "v1" "VolumeAttachment" => storage::VolumeAttachment,
}

/// The kind a subresource's body is, as upstream publishes it next to the resource.
pub fn subresource_kind(subresource: &str) -> Option<Gvk> {
    let (group, kind) = match subresource {
        "scale" => ("autoscaling", "Scale"),
        "binding" => ("", "Binding"),
        "eviction" => ("policy", "Eviction"),
        "token" => ("authentication.k8s.io", "TokenRequest"),
        _ => return None,
    };
    KINDS
        .iter()
        .map(|(gvk, _)| *gvk)
        .find(|g| g.group == group && g.kind == kind)
}

/// Whether we have a schema for this kind.
pub fn known(group: &str, version: &str, kind: &str) -> Option<Gvk> {
    KINDS
        .iter()
        .map(|(gvk, _)| *gvk)
        .find(|g| g.group == group && g.version == version && g.kind == kind)
}

/// The schemas of `kinds` and of everything they refer to, by upstream name
/// (`io.k8s.api.apps.v1.Deployment`), with references as `#/definitions/<name>`; plus the
/// name each kind's schema got.
pub fn generate(kinds: &[Gvk]) -> (Map<String, Value>, Vec<(Gvk, String)>) {
    let settings = SchemaSettings::draft07().with(|s| {
        s.definitions_path = "/definitions".into();
        s.meta_schema = None;
        s.transforms.clear();
    });
    let mut generator = settings.into_generator();
    let mut named = Vec::new();
    for gvk in kinds {
        let Some((_, add)) = KINDS.iter().find(|(g, _)| g == gvk) else {
            continue;
        };
        let reference = add(&mut generator);
        if let Some(name) = reference["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/definitions/"))
        {
            named.push((*gvk, name.to_owned()));
        }
    }
    (generator.take_definitions(false), named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::RESOURCES;

    #[test]
    fn every_served_kind_and_subresource_body_has_a_schema() {
        for r in RESOURCES {
            assert!(
                known(r.group, r.version, r.kind).is_some(),
                "no schema for {}/{}",
                r.group,
                r.kind
            );
            for sub in r.subresources {
                if matches!(*sub, "scale" | "binding" | "eviction" | "token") {
                    assert!(subresource_kind(sub).is_some(), "no schema for {sub}");
                }
            }
        }
    }

    #[test]
    fn deployment_refers_to_its_spec_by_upstream_name() {
        let apps = Gvk {
            group: "apps",
            version: "v1",
            kind: "Deployment",
        };
        let (defs, named) = generate(&[apps]);
        assert_eq!(named, vec![(apps, "io.k8s.api.apps.v1.Deployment".to_owned())]);
        let deployment = &defs["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        let spec = &defs["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(spec["properties"]["replicas"]["type"], "integer");
        assert!(spec["required"].as_array().unwrap().contains(&"selector".into()));
        assert!(defs.contains_key("io.k8s.api.core.v1.PodSpec"));
    }
}
