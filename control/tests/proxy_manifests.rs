//! The proxy's manifests as an operator applies them: every kustomize overlay under
//! proxy/deploy/overlays renders with a real `kubectl kustomize`, equals the rendered copy
//! `rudder up` applies, carries a KubeProxyConfiguration the proxy's own `--config` parser
//! accepts, and applies to our API server with server-side apply and strict field
//! validation (which a misspelt field fails). Its role grants exactly what
//! `rudder-proxy run` reads.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::ListParams};
use rudder_proxy::{agent::config_file, dataplane::Mode};
use serde_json::Value;

const MODES: [(&str, Mode); 4] = [
    ("ebpf", Mode::Ebpf),
    ("nftables", Mode::Nftables),
    ("iptables", Mode::Iptables),
    ("ipvs", Mode::Ipvs),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/deploy")
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(common::kubectl(33))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write kubectl's stdin");
    }
    drop(pipe);
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rendered/<mode>.yaml`'s header: what it is and how it stays current.
fn header(mode: &str) -> String {
    format!(
        "# Rendered from proxy/deploy/overlays/{mode} by `kubectl kustomize` (kubectl 1.33); `rudder up`\n\
         # applies it. Edit the base or the overlay, not this: the proxy_manifests test fails\n\
         # while this differs from a fresh render, and RUDDER_RENDER_MANIFESTS=1 makes it rewrite it.\n"
    )
}

fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|d| serde_saphyr::from_str::<Value>(d).expect("a rendered document parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Runs blocking kubectl off the runtime's threads: the API server answering it runs there.
async fn kubectl_async(args: Vec<String>, stdin: Option<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&args, stdin.as_deref())
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_renders_applies_strictly_and_carries_a_valid_config() {
    let server = common::TestServer::start().await;
    let cache = tempfile::tempdir().expect("kubectl cache dir");
    let connect = vec![
        "--kubeconfig".to_owned(),
        server.kubeconfig().display().to_string(),
        "--cache-dir".to_owned(),
        cache.path().display().to_string(),
    ];
    let apply = |extra: &[&str]| {
        let mut a = connect.clone();
        a.extend(
            ["apply", "--server-side", "--validate=strict", "-f", "-"]
                .iter()
                .chain(extra)
                .map(|s| (*s).to_owned()),
        );
        a
    };

    let mut ebpf_render = String::new();
    for (name, mode) in MODES {
        let overlay = deploy_dir().join("overlays").join(name);
        let (ok, rendered, stderr) = kubectl_async(vec!["kustomize".into(), overlay.display().to_string()], None).await;
        assert!(ok, "kubectl kustomize {} failed:\n{stderr}", overlay.display());

        // What `rudder up` applies is this render, byte for byte.
        let committed_path = deploy_dir().join("rendered").join(format!("{name}.yaml"));
        let fresh = format!("{}{rendered}", header(name));
        if std::env::var_os("RUDDER_RENDER_MANIFESTS").is_some() {
            std::fs::write(&committed_path, &fresh).expect("rewrite the rendered manifest");
        }
        let committed = std::fs::read_to_string(&committed_path).expect("the rendered manifest");
        assert!(
            committed == fresh,
            "{} differs from a fresh `kubectl kustomize {}`: run this test with RUDDER_RENDER_MANIFESTS=1",
            committed_path.display(),
            overlay.display()
        );

        let docs = documents(&rendered);
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet"
            ],
            "{name}"
        );
        let (cm, ds) = (&docs[3], &docs[4]);

        // The shipped configuration passes the proxy's own parser, asks for this mode,
        // names no field we lack, and leaves the CIDRs to the operator.
        let config = cm["data"]["config.conf"].as_str().expect("config.conf");
        let parsed = config_file::parse(config).unwrap_or_else(|e| panic!("{name}'s config.conf: {e}"));
        assert_eq!(parsed.mode, Some(mode), "{name}");
        assert!(parsed.ignored.is_empty(), "{name}: {:?}", parsed.ignored);
        assert_eq!(parsed.cluster_cidr, None, "{name}: no hard-coded pod CIDR");
        let kubeconfig = cm["data"]["kubeconfig.conf"].as_str().expect("kubeconfig.conf");
        kube::config::Kubeconfig::from_yaml(kubeconfig).expect("kubeconfig.conf reads");

        // The DaemonSet passes that file with --config and nothing that a config should say.
        let pod = &ds["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "rudder-proxy:0.1.0");
        assert_eq!(
            container["args"],
            serde_json::json!([
                "run",
                "--config=/var/lib/kube-proxy/config.conf",
                "--hostname-override=$(NODE_NAME)"
            ])
        );
        let volumes = pod["volumes"].as_array().expect("volumes");
        let config_volume = volumes
            .iter()
            .find(|v| v["name"] == "config")
            .expect("the config volume");
        assert_eq!(config_volume["configMap"]["name"], cm["metadata"]["name"], "{name}");
        for (volume, path) in [
            ("xtables-lock", "/run/xtables.lock"),
            ("lib-modules", "/lib/modules"),
            ("bpffs", "/sys/fs/bpf"),
            ("cgroup", "/sys/fs/cgroup"),
        ] {
            assert!(
                volumes
                    .iter()
                    .any(|v| v["name"] == volume && v["hostPath"]["path"] == path),
                "{name}: hostPath {path}"
            );
        }
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(
            pod["hostPID"].as_bool().unwrap_or(false),
            mode == Mode::Ebpf,
            "{name}: hostPID"
        );

        let (ok, stdout, stderr) = kubectl_async(apply(&[]), Some(rendered.clone())).await;
        assert!(ok, "{name}: the API server refused the overlay:\n{stdout}\n{stderr}");
        assert_eq!(stdout.matches("serverside-applied").count(), 5, "{name}:\n{stdout}");
        if mode == Mode::Ebpf {
            ebpf_render = rendered;
        }
    }

    // Strict validation is real: a misspelt field in the same objects is refused.
    let typo = ebpf_render.replace("hostNetwork: true", "hostNetwrok: true");
    assert_ne!(typo, ebpf_render);
    let (ok, stdout, stderr) = kubectl_async(apply(&[]), Some(typo)).await;
    assert!(!ok, "a misspelt field must fail strict validation:\n{stdout}");
    // Our server's strict decoding, not a client-side check, names the field.
    assert!(
        stderr.contains("strict decoding error") && stderr.contains("unknown field \"spec.template.spec.hostNetwrok\""),
        "the refusal must name the field:\n{stderr}"
    );

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
