//! The proxy's DaemonSet, RBAC and ServiceAccount manifests (proxy/deploy/) apply with a
//! real kubectl, and the role grants exactly what `rudder-proxy run` reads: its
//! ServiceAccount can list and watch Services, EndpointSlices and Nodes, and nothing else.

mod common;

use std::process::Command;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::ListParams};

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy/deploy/rudder-proxy.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_manifests_apply_and_grant_what_the_proxy_reads() {
    let server = common::TestServer::start().await;
    let cache = tempfile::tempdir().expect("kubectl cache dir");
    let mut kubectl = Command::new(common::kubectl(33));
    kubectl
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .arg("--cache-dir")
        .arg(cache.path());
    kubectl.args(["apply", "-f", MANIFESTS]);
    // Off the runtime's threads: the API server answering kubectl runs on them.
    let out = tokio::task::spawn_blocking(move || kubectl.output())
        .await
        .expect("join")
        .expect("run kubectl");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "kubectl apply refused the manifests:\n{stdout}\n{stderr}"
    );
    for created in [
        "configmap/rudder-proxy created",
        "serviceaccount/rudder-proxy created",
        "clusterrole.rbac.authorization.k8s.io/system:rudder-proxy created",
        "clusterrolebinding.rbac.authorization.k8s.io/system:rudder-proxy created",
        "daemonset.apps/rudder-proxy created",
    ] {
        assert!(stdout.contains(created), "missing {created:?} in:\n{stdout}");
    }
    let admin = server.client().await;
    let ds: DaemonSet = Api::namespaced(admin, "kube-system")
        .get("rudder-proxy")
        .await
        .expect("the DaemonSet");
    let spec = ds.spec.and_then(|s| s.template.spec).expect("a pod template");
    assert_eq!(
        spec.host_network,
        Some(true),
        "the proxy programs the host's network namespace"
    );
    assert_eq!(spec.service_account_name.as_deref(), Some("rudder-proxy"));

    // The identity the DaemonSet's pods get.
    let sa = server
        .cert_client(
            "system:serviceaccount:kube-system:rudder-proxy",
            &["system:serviceaccounts", "system:authenticated"],
        )
        .await;
    let lp = ListParams::default();
    Api::<Service>::all(sa.clone())
        .list(&lp)
        .await
        .expect("the proxy may list Services");
    Api::<EndpointSlice>::all(sa.clone())
        .list(&lp)
        .await
        .expect("the proxy may list EndpointSlices");
    Api::<Node>::all(sa.clone())
        .list(&lp)
        .await
        .expect("the proxy may list Nodes");
    let secrets = Api::<Secret>::all(sa).list(&lp).await;
    assert!(
        matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403),
        "the proxy must not read Secrets: {secrets:?}"
    );
}
