//! The default RBAC for certificates, as upstream's bootstrap policy has it, plus the
//! bindings kubeadm makes for TLS bootstrapping. kubeadm binds its bootstrap roles to the
//! group of its own tokens (`system:bootstrappers:kubeadm:default-node-token`); we bind them
//! to `system:bootstrappers`, which every bootstrap token is in, so a token needs no
//! `auth-extra-groups` to join a node.

use serde_json::{Value, json};

use super::{GROUP, KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING, bootstrap_token};

const LABELS: &str = "rbac-defaults";

fn role(name: &str, rules: Value) -> (&'static str, Value) {
    (
        "clusterroles",
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": LABELS}}, "rules": rules}),
    )
}

fn binding(name: &str, role: &str, group: &str) -> (&'static str, Value) {
    (
        "clusterrolebindings",
        json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        }),
    )
}

pub const NODE_BOOTSTRAPPER: &str = "system:node-bootstrapper";
pub const NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
pub const SELF_NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";

pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    let csr_rule =
        |resource: &str, verbs: &[&str]| json!([{"apiGroups": [GROUP], "resources": [resource], "verbs": verbs}]);
    let approver = |signer: &str| json!([{"apiGroups": [GROUP], "resources": ["signers"], "resourceNames": [signer], "verbs": ["approve"]}]);
    vec![
        role(
            NODE_BOOTSTRAPPER,
            csr_rule("certificatesigningrequests", &["create", "get", "list", "watch"]),
        ),
        role(
            NODE_CLIENT,
            csr_rule("certificatesigningrequests/nodeclient", &["create"]),
        ),
        role(
            SELF_NODE_CLIENT,
            csr_rule("certificatesigningrequests/selfnodeclient", &["create"]),
        ),
        role(
            "system:certificates.k8s.io:kube-apiserver-client-approver",
            approver(KUBE_APISERVER_CLIENT),
        ),
        role(
            "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
            approver(KUBELET_CLIENT),
        ),
        role(
            "system:certificates.k8s.io:kubelet-serving-approver",
            approver(KUBELET_SERVING),
        ),
        binding("kubeadm:kubelet-bootstrap", NODE_BOOTSTRAPPER, bootstrap_token::GROUP),
        binding(
            "kubeadm:node-autoapprove-bootstrap",
            NODE_CLIENT,
            bootstrap_token::GROUP,
        ),
        binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            SELF_NODE_CLIENT,
            "system:nodes",
        ),
    ]
}
