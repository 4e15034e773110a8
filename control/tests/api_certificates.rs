//! CertificateSigningRequests end to end: kube-rs and kubectl 1.27/1.33/1.37 create,
//! approve, deny and list them against a real server; the signing controller issues
//! certificates from the cluster CA that then authenticate; bad requests are 422 naming
//! `spec.request`; approving needs `approve` on the signer; bootstrap tokens authenticate
//! (and expire); and a node with only a bootstrap kubeconfig gets its certificate
//! auto-approved and registers its Node.

mod common;

use std::{fmt::Debug, net::Ipv4Addr, path::Path, time::Duration};

use base64::Engine as _;
use k8s_openapi::api::{
    certificates::v1::CertificateSigningRequest,
    core::v1::{Namespace, Node, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use rudder_control::{apiserver::pki::Credential, controllers::csr};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn expect_code<T: Debug>(result: Result<T, kube::Error>, code: u16, what: &str) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(s)) if s.code == code => s,
        other => panic!("{what}: expected HTTP {code}, got {other:?}"),
    }
}

/// A PKCS#10 request (PEM) for `CN=cn` with at most one `O`, and its key (PEM).
fn request(cn: &str, org: Option<&str>) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if let Some(o) = org {
        params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
    }
    let pem = params.serialize_request(&key).expect("request").pem().expect("pem");
    (pem, key.serialize_pem())
}

fn csr_object(
    name: &str,
    request_pem: &str,
    signer: &str,
    usages: &[&str],
    seconds: Option<i64>,
) -> CertificateSigningRequest {
    let mut spec = json!({
        "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
        "signerName": signer,
        "usages": usages,
        // The server must replace these with the authenticated user.
        "username": "someone-else",
        "groups": ["system:masters"],
    });
    if let Some(s) = seconds {
        spec["expirationSeconds"] = json!(s);
    }
    from(
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name}, "spec": spec}),
    )
}

fn signing(server: &common::TestServer, client: Client) -> common::Background {
    let config = csr::signing::Config::new(std::sync::Arc::clone(&server.running.pki));
    common::Background::start(move |shutdown| csr::signing::run(client, config, shutdown))
}

async fn wait_for_certificate(api: &Api<CertificateSigningRequest>, name: &str) -> String {
    common::wait_for(&format!("a certificate for {name}"), LIMIT, || async {
        let csr = api.get(name).await.ok()?;
        let cert = csr.status?.certificate?;
        (!cert.0.is_empty()).then(|| String::from_utf8(cert.0).expect("PEM"))
    })
    .await
}

fn approve_patch(reason: &str) -> Patch<Value> {
    Patch::Merge(
        json!({"status": {"conditions": [{"type": "Approved", "status": "True", "reason": reason, "message": "approved by the test"}]}}),
    )
}

#[tokio::test]
async fn kube_rs_creates_approves_and_the_signed_certificate_authenticates() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let signer = signing(&server, admin.clone());
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());

    let (request_pem, key_pem) = request("alice", Some("team-a"));
    let created = api
        .create(
            &PostParams::default(),
            &csr_object(
                "alice",
                &request_pem,
                "kubernetes.io/kube-apiserver-client",
                &["client auth", "digital signature"],
                Some(3600),
            ),
        )
        .await
        .expect("create the CSR");
    // The requestor is who sent it, not what the body claimed.
    assert_eq!(created.spec.username.as_deref(), Some("rudder-admin"));
    let groups = created.spec.groups.clone().unwrap_or_default();
    assert!(
        groups.contains(&"system:masters".to_owned()) && groups.contains(&"system:authenticated".to_owned()),
        "{groups:?}"
    );

    // The spec is immutable: an update that changes it keeps the stored one.
    let mut changed = created.clone();
    changed.spec.signer_name = "example.com/other".into();
    let replaced = api
        .replace("alice", &PostParams::default(), &changed)
        .await
        .expect("update");
    assert_eq!(replaced.spec.signer_name, "kubernetes.io/kube-apiserver-client");

    let approved = api
        .patch_approval("alice", &PatchParams::default(), &approve_patch("TestApproved"))
        .await
        .expect("approve");
    let conditions = approved.status.and_then(|s| s.conditions).unwrap_or_default();
    assert_eq!(conditions[0].type_, "Approved");
    assert!(conditions[0].last_update_time.is_some());

    let cert_pem = wait_for_certificate(&api, "alice").await;
    let der = pem::parse(&cert_pem).expect("PEM").into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    // One hour as asked, plus the five minutes the signer backdates.
    assert_eq!(lifetime, 3600 + 300, "validity {:?}", cert.validity());
    assert_eq!(
        cert.subject().iter_organization().next().and_then(|o| o.as_str().ok()),
        Some("team-a")
    );

    // The certificate is a credential for alice in team-a.
    let kubeconfig = server.user_kubeconfig("alice", Credential::ClientCert { cert_pem, key_pem });
    let alice = common::client_from(&kubeconfig).await;
    let err = expect_code(
        Api::<Namespace>::all(alice.clone()).get("default").await,
        403,
        "alice reads a namespace",
    );
    assert!(err.message.contains("User \"alice\""), "{}", err.message);
    let binding: ClusterRoleBinding = from(json!({
        "metadata": {"name": "team-a-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "team-a"}],
    }));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind team-a");
    common::wait_for("team-a may list pods", LIMIT, || async {
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(alice.clone(), "default")
            .list(&Default::default())
            .await
            .ok()
    })
    .await;

    // A request for system:masters through kube-apiserver-client is refused at create.
    let (masters, _) = request("mallory", Some("system:masters"));
    let refused = api
        .create(
            &PostParams::default(),
            &csr_object(
                "mallory",
                &masters,
                "kubernetes.io/kube-apiserver-client",
                &["client auth"],
                None,
            ),
        )
        .await;
    let s = expect_code(refused, 403, "a system:masters request");
    assert!(s.message.contains("system:masters"), "{}", s.message);

    // A kubelet signer refuses a subject that is not a node: Failed, no certificate.
    let (not_node, _) = request("alice", None);
    api.create(
        &PostParams::default(),
        &csr_object(
            "not-a-node",
            &not_node,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["client auth"],
            None,
        ),
    )
    .await
    .expect("create");
    api.patch_approval("not-a-node", &PatchParams::default(), &approve_patch("TestApproved"))
        .await
        .expect("approve");
    let failed = common::wait_for("a Failed condition", LIMIT, || async {
        let csr = api.get("not-a-node").await.ok()?;
        let conditions = csr.status?.conditions?;
        conditions.into_iter().find(|c| c.type_ == "Failed")
    })
    .await;
    assert_eq!(failed.reason.as_deref(), Some("SignerValidationFailure"));
    assert!(failed.message.unwrap_or_default().contains("system:nodes"));
    signer.stop(LIMIT).await;
}

#[tokio::test]
async fn bad_requests_are_invalid_and_name_the_field() {
    let server = common::TestServer::start().await;
    let api: Api<CertificateSigningRequest> = Api::all(server.client().await);
    let junk = csr_object(
        "junk",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        None,
    );
    let s = expect_code(
        api.create(&PostParams::default(), &junk).await,
        422,
        "a request that does not parse",
    );
    let causes = s.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
    assert_eq!(
        causes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
        vec!["spec.request"],
        "{s:?}"
    );
    let (good, _) = request("alice", None);
    let not_pem = csr_object(
        "not-pem",
        "hello",
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        None,
    );
    let s = expect_code(api.create(&PostParams::default(), &not_pem).await, 422, "not PEM");
    assert!(s.message.contains("spec.request"), "{}", s.message);
    let short = csr_object(
        "short",
        &good,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        Some(599),
    );
    let s = expect_code(api.create(&PostParams::default(), &short).await, 422, "599 seconds");
    assert!(s.message.contains("spec.expirationSeconds"), "{}", s.message);
    // A request whose signature does not verify (the CN edited after signing).
    let mut der = pem::parse(&good).expect("pem").into_contents();
    let at = der.windows(5).position(|w| w == b"alice").expect("CN");
    der[at] = b'b';
    let forged = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let s = expect_code(
        api.create(
            &PostParams::default(),
            &csr_object(
                "forged",
                &forged,
                "kubernetes.io/kube-apiserver-client",
                &["client auth"],
                None,
            ),
        )
        .await,
        422,
        "a forged request",
    );
    assert!(
        s.message.contains("spec.request") && s.message.contains("signature"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn approving_needs_approve_on_the_signer() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let (pem, _) = request("carol", None);
    api.create(
        &PostParams::default(),
        &csr_object(
            "carol",
            &pem,
            "kubernetes.io/kube-apiserver-client",
            &["client auth"],
            None,
        ),
    )
    .await
    .expect("create");
    let role: ClusterRole = from(json!({
        "metadata": {"name": "csr-approval-writer"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"], "verbs": ["get", "list", "update", "patch"]}],
    }));
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: ClusterRoleBinding = from(json!({
        "metadata": {"name": "bob-approval-writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-approval-writer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
    }));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    let bob: Api<CertificateSigningRequest> = Api::all(server.cert_client("bob", &[]).await);
    let s = expect_code(
        bob.patch_approval("carol", &PatchParams::default(), &approve_patch("Bob"))
            .await,
        403,
        "bob approves without approve",
    );
    assert!(
        s.message
            .contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""),
        "{}",
        s.message
    );
    // The upstream approver role for this signer lets him.
    let approver: ClusterRoleBinding = from(json!({
        "metadata": {"name": "bob-approver"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:certificates.k8s.io:kube-apiserver-client-approver"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
    }));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &approver)
        .await
        .expect("binding");
    common::wait_for("bob may approve", LIMIT, || async {
        bob.patch_approval("carol", &PatchParams::default(), &approve_patch("Bob"))
            .await
            .ok()
    })
    .await;
}

fn kubectl_ok(minor: u32, kubeconfig: &Path, cache: &Path, args: &[&str]) -> String {
    let (ok, out, err) = common::run_kubectl(minor, kubeconfig, cache, args);
    assert!(ok, "kubectl 1.{minor} {args:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_approves_denies_and_lists() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let signer = signing(&server, admin.clone());
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let kubeconfig = server.kubeconfig();
    for minor in [27, 33, 37] {
        let cache = server.dir.path().join(format!("cache-{minor}"));
        let (yes, no) = (format!("yes-{minor}"), format!("no-{minor}"));
        for name in [&yes, &no] {
            let (pem, _) = request(&format!("user-{name}"), None);
            api.create(
                &PostParams::default(),
                &csr_object(
                    name,
                    &pem,
                    "kubernetes.io/kube-apiserver-client",
                    &["client auth"],
                    Some(86400),
                ),
            )
            .await
            .expect("create");
        }
        let out = kubectl_ok(minor, &kubeconfig, &cache, &["certificate", "approve", &yes]);
        assert!(out.contains("approved"), "{out}");
        let out = kubectl_ok(minor, &kubeconfig, &cache, &["certificate", "deny", &no]);
        assert!(out.contains("denied"), "{out}");
        wait_for_certificate(&api, &yes).await;
        let table = kubectl_ok(minor, &kubeconfig, &cache, &["get", "csr"]);
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "AGE",
                "SIGNERNAME",
                "REQUESTOR",
                "REQUESTEDDURATION",
                "CONDITION"
            ],
            "{table}"
        );
        let row = |name: &str| -> Vec<String> {
            table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no row {name} in {table}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            row(&yes)[2..],
            [
                "kubernetes.io/kube-apiserver-client",
                "rudder-admin",
                "24h",
                "Approved,Issued"
            ]
        );
        assert_eq!(row(&no)[5], "Denied");
        // Short name and discovery.
        let out = kubectl_ok(
            minor,
            &kubeconfig,
            &cache,
            &["get", "csr", &yes, "-o", "jsonpath={.status.conditions[0].reason}"],
        );
        assert_eq!(out, "KubectlApprove");
    }
    signer.stop(LIMIT).await;
}

async fn bootstrap_secret(admin: &Client, id: &str, secret: &str, expiration: &str) {
    // Our server does not fold stringData into data, so the values are encoded here.
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let s: Secret = from(json!({
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {
            "token-id": b64(id), "token-secret": b64(secret), "expiration": b64(expiration),
            "usage-bootstrap-authentication": b64("true"), "usage-bootstrap-signing": b64("true"),
            "auth-extra-groups": b64("system:bootstrappers:kubeadm:default-node-token"),
        },
    }));
    Api::<Secret>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &s)
        .await
        .expect("bootstrap token secret");
}

#[tokio::test]
async fn bootstrap_tokens_authenticate_until_they_expire() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    bootstrap_secret(&admin, "abcdef", "0123456789abcdef", "2099-01-01T00:00:00Z").await;
    bootstrap_secret(&admin, "oldold", "0123456789abcdef", "2020-01-01T00:00:00Z").await;

    let token = |t: &str| Credential::Token(t.to_owned());
    let good = common::client_from(&server.user_kubeconfig("bootstrap-good", token("abcdef.0123456789abcdef"))).await;
    let api: Api<CertificateSigningRequest> = Api::all(good.clone());
    let (pem, _) = request("system:node:n9", Some("system:nodes"));
    let created = api
        .create(
            &PostParams::default(),
            &csr_object(
                "n9",
                &pem,
                "kubernetes.io/kube-apiserver-client-kubelet",
                &["client auth"],
                None,
            ),
        )
        .await
        .expect("a bootstrapper creates a CSR");
    assert_eq!(created.spec.username.as_deref(), Some("system:bootstrap:abcdef"));
    let groups = created.spec.groups.unwrap_or_default();
    for g in [
        "system:bootstrappers",
        "system:bootstrappers:kubeadm:default-node-token",
        "system:authenticated",
    ] {
        assert!(groups.contains(&g.to_owned()), "{g} missing from {groups:?}");
    }
    // system:node-bootstrapper gives CSRs and nothing else.
    expect_code(
        Api::<Secret>::namespaced(good.clone(), "kube-system")
            .list(&Default::default())
            .await,
        403,
        "a bootstrapper lists secrets",
    );

    for (what, t) in [
        ("an expired token", "oldold.0123456789abcdef"),
        ("a wrong secret", "abcdef.0123456789abcdee"),
        ("an unknown id", "zzzzzz.0123456789abcdef"),
    ] {
        let client = common::client_from(&server.user_kubeconfig("bootstrap-bad", token(t))).await;
        expect_code(
            Api::<CertificateSigningRequest>::all(client)
                .list(&Default::default())
                .await,
            401,
            what,
        );
    }
}

#[tokio::test]
async fn a_node_with_a_bootstrap_kubeconfig_gets_its_certificate_and_registers() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let signer = signing(&server, admin.clone());
    let approver = {
        let client = admin.clone();
        common::Background::start(move |shutdown| csr::approving::run(client, shutdown))
    };
    bootstrap_secret(&admin, "node01", "0123456789abcdef", "2099-01-01T00:00:00Z").await;
    let bootstrap = server.user_kubeconfig("bootstrap", Credential::Token("node01.0123456789abcdef".into()));
    let kubeconfig = server.dir.path().join("node.kubeconfig");
    assert!(!rudder_control::node::bootstrap::has_valid_client_cert(
        &kubeconfig,
        "n1"
    ));
    rudder_control::node::bootstrap::ensure_kubeconfig(&bootstrap, &kubeconfig, "n1", LIMIT)
        .await
        .expect("TLS bootstrapping");
    assert!(rudder_control::node::bootstrap::has_valid_client_cert(
        &kubeconfig,
        "n1"
    ));

    // The request was auto-approved for the bootstrapper and signed.
    let csrs = Api::<CertificateSigningRequest>::all(admin.clone())
        .list(&Default::default())
        .await
        .expect("list");
    let csr = csrs
        .items
        .into_iter()
        .find(|c| c.spec.username.as_deref() == Some("system:bootstrap:node01"))
        .expect("the node's CSR");
    let approved = csr
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .expect("approved");
    assert_eq!(approved.reason.as_deref(), Some("AutoApproved"));

    // Now the agent runs as the node: it registers its Node as the agent does.
    let node_client = common::client_from(&kubeconfig).await;
    let config = rudder_control::node::Config {
        node_name: "n1".into(),
        node_ip: Ipv4Addr::new(10, 0, 0, 1),
        root_dir: server.dir.path().join("node"),
        cgroup_parent: "unused".into(),
        netns_prefix: "unused-".into(),
        host_path_map: vec![],
        command_map: vec![],
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        max_pods: 10,
        port: 10250,
        serving_cert: None,
        labels: Default::default(),
        cluster_domain: "cluster.local".into(),
        cluster_dns: None,
        lease_duration: std::time::Duration::from_secs(40),
    };
    rudder_control::node::registration::register(&node_client, &config, config.node_ip)
        .await
        .expect("the node registers itself");
    let node = Api::<Node>::all(admin.clone()).get("n1").await.expect("Node n1");
    assert_eq!(node.metadata.name.as_deref(), Some("n1"));
    // Its identity is the node's: another Node is not its to write.
    let other: Node = from(json!({"metadata": {"name": "n2"}}));
    expect_code(
        Api::<Node>::all(node_client.clone())
            .create(&PostParams::default(), &other)
            .await,
        403,
        "n1 creates n2",
    );

    // A renewal by the node itself is approved through selfnodeclient.
    let (pem, _) = request("system:node:n1", Some("system:nodes"));
    let api: Api<CertificateSigningRequest> = Api::all(node_client);
    api.create(
        &PostParams::default(),
        &csr_object(
            "n1-renewal",
            &pem,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["client auth", "digital signature"],
            None,
        ),
    )
    .await
    .expect("renewal request");
    wait_for_certificate(&api, "n1-renewal").await;
    let renewal = api.get("n1-renewal").await.expect("get");
    let message = renewal.status.and_then(|s| s.conditions).unwrap_or_default()[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("self kubelet client"), "{message}");
    approver.stop(LIMIT).await;
    signer.stop(LIMIT).await;
}

#[tokio::test]
async fn csrs_are_served_in_discovery() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let list: Value = client
        .request(
            http::Request::get("/apis/certificates.k8s.io/v1")
                .body(vec![])
                .expect("request"),
        )
        .await
        .expect("resource list");
    let names: Vec<&str> = list["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "certificatesigningrequests",
            "certificatesigningrequests/approval",
            "certificatesigningrequests/status"
        ]
    );
    assert_eq!(list["resources"][0]["namespaced"], false);
    assert_eq!(list["resources"][0]["shortNames"], json!(["csr"]));
}
