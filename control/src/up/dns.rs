//! The cluster DNS add-on as kubeadm deploys CoreDNS: a ServiceAccount allowed to watch
//! Services, EndpointSlices and Pods, a Deployment (`rudder-dns`, label `k8s-app: kube-dns`)
//! running `rudder dns` with the node's resolvers as upstream (`dnsPolicy: Default`), and the
//! `kube-dns` Service at the tenth address of the Service CIDR, which every node agent
//! writes into pods' resolv.conf.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{SERVICE_CIDR, manifests::apply};

/// Where the node agents find the rudder binary for the DNS pods (the process runtime has
/// no images: `--command-map` points this at the build).
pub const DNS_COMMAND: &str = "/usr/local/bin/rudder";

/// The tenth address of the Service CIDR (`10.96.0.10`), as kubeadm gives kube-dns.
pub fn cluster_dns_ip() -> Result<Ipv4Addr> {
    let net: ipnet::Ipv4Net = SERVICE_CIDR.parse().context("the Service CIDR")?;
    Ok(Ipv4Addr::from(u32::from(net.network()) + 10))
}

pub fn objects(api_url: &str, upstream: &[String]) -> Result<Vec<Value>> {
    let ip = cluster_dns_ip()?;
    let labels = json!({"k8s-app": "kube-dns"});
    // The pod's own ServiceAccount token and CA, with the API server's address (as the
    // proxy's kubeconfig.conf).
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt\n    server: {api_url}\ncontexts:\n- name: default\n  context: {{cluster: default, user: default}}\ncurrent-context: default\nusers:\n- name: default\n  user:\n    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n"
    );
    let mut args = vec![
        "dns".to_owned(),
        "--listen=$(HOST_IP):53".to_owned(),
        "--kubeconfig=/etc/rudder-dns/kubeconfig.conf".to_owned(),
        "--health-listen=0.0.0.0:8080".to_owned(),
    ];
    if !upstream.is_empty() {
        args.push(format!("--upstream={}", upstream.join(",")));
    }
    Ok(vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "rudder-dns", "namespace": "kube-system"}}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:rudder-dns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:rudder-dns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:rudder-dns"},
            "subjects": [{"kind": "ServiceAccount", "name": "rudder-dns", "namespace": "kube-system"}],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "rudder-dns", "namespace": "kube-system"},
            "data": {"kubeconfig.conf": kubeconfig},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "rudder-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "rudder-dns",
                        // The local cluster's host has no routes to pod CIDRs, so a pod
                        // cannot reach the API server there; on the node's network it can
                        // (the proxy runs so too). Two replicas land on two nodes (port 53).
                        "hostNetwork": true,
                        "dnsPolicy": "Default",
                        "containers": [{
                            "name": "dns",
                            "image": "rudder:0.1.0",
                            "command": [DNS_COMMAND],
                            // The node's address, not 0.0.0.0: a UDP reply from a wildcard
                            // socket takes the route's source address, and for a pod on the
                            // same node that is the pod bridge's, which is not the address
                            // the Service's DNAT sent the query to; conntrack then does not
                            // see the reply, and the pod drops it.
                            "env": [{"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
                            "args": args,
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                {"name": "health", "containerPort": 8080, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10,
                                              "failureThreshold": 5},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/rudder-dns", "readOnly": true}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "rudder-dns"}}],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        }),
    ])
}

pub async fn deploy(client: &kube::Client, api_url: &str, upstream: &[String]) -> Result<()> {
    for obj in objects(api_url, upstream)? {
        apply(client, &obj).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_at_the_tenth_service_address() {
        assert_eq!(cluster_dns_ip().unwrap(), Ipv4Addr::new(10, 96, 0, 10));
        let objs = objects("https://10.250.0.1:6443", &[]).unwrap();
        let svc = objs.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc["metadata"]["name"], "kube-dns");
        let cm = objs.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        let kc: Value = serde_saphyr::from_str(cm["data"]["kubeconfig.conf"].as_str().unwrap()).unwrap();
        assert_eq!(kc["clusters"][0]["cluster"]["server"], "https://10.250.0.1:6443");
        let dep = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(dep["spec"]["template"]["metadata"]["labels"]["k8s-app"], "kube-dns");
    }
}
