//! Control plane II security as clients see it: bound ServiceAccount tokens from the
//! TokenRequest API (kube-rs and `kubectl create token`), the node authorizer's graph
//! (a node reads only what its pods use), RBAC escalation prevention, and `kubectl auth
//! can-i` answering from the same authorizer.

mod common;

use std::{
    fmt::Debug,
    path::PathBuf,
    time::{Duration, Instant},
};

use base64::Engine as _;
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rudder_control::apiserver::{
    authn::{ServiceAccountClaims, unix_now},
    pki::Credential,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn expect_code<T: Debug>(result: Result<T, kube::Error>, code: u16, what: &str) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(s)) if s.code == code => s,
        other => panic!("{what}: expected HTTP {code}, got {other:?}"),
    }
}

/// Retries `f` until it succeeds (RBAC follows a watch, so a new binding applies within
/// moments); fails the test after `limit`.
async fn within<T: Debug, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) if start.elapsed() < limit => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(e) => panic!("{what}: still failing after {limit:?}: {e:?}"),
        }
    }
}

/// The claims of a JWT, unverified (what a client or a debugging user would look at).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

async fn token_client(server: &common::TestServer, label: &str, token: &str) -> kube::Client {
    common::client_from(&server.user_kubeconfig(label, Credential::Token(token.to_owned()))).await
}

/// A kubeconfig holding a client certificate for `user` in `groups`.
fn cert_kubeconfig(server: &common::TestServer, user: &str, groups: &[&str]) -> PathBuf {
    let (cert_pem, key_pem) = server
        .running
        .pki
        .issue_client_cert(user, groups)
        .expect("issue a client certificate");
    server.user_kubeconfig(user, Credential::ClientCert { cert_pem, key_pem })
}

fn token_request(audiences: &[&str], seconds: Option<i64>, bound: Option<Value>) -> TokenRequest {
    let mut spec = json!({"audiences": audiences});
    if let Some(s) = seconds {
        spec["expirationSeconds"] = json!(s);
    }
    if let Some(b) = bound {
        spec["boundObjectRef"] = b;
    }
    from(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}))
}

fn issued(tr: &TokenRequest) -> String {
    tr.status.as_ref().expect("status").token.clone()
}

/// Grants `view` in `default` to ServiceAccount `name`, so its tokens can list pods.
async fn let_view(admin: &kube::Client, name: &str) {
    let binding: RoleBinding = from(json!({
        "metadata": {"name": format!("{name}-view"), "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_tokens_expire_name_audiences_and_die_with_what_they_are_bound_to() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let pp = PostParams::default();
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), "default");
    let robot = sas
        .create(&pp, &from(json!({"metadata": {"name": "robot"}})))
        .await
        .expect("create SA robot");
    let robot_uid = robot.metadata.uid.clone().expect("uid");
    Api::<Node>::all(admin.clone())
        .create(&pp, &from(json!({"metadata": {"name": "n1"}})))
        .await
        .expect("create node");
    let pods = Api::<Pod>::namespaced(admin.clone(), "default");
    let worker = pods
        .create(
            &pp,
            &from(
                json!({"metadata": {"name": "worker"}, "spec": {"serviceAccountName": "robot", "nodeName": "n1",
                "containers": [{"name": "c", "image": "busybox:1.36"}]}}),
            ),
        )
        .await
        .expect("create pod");
    let worker_uid = worker.metadata.uid.clone().expect("uid");
    let_view(&admin, "robot").await;

    // kube-rs' TokenRequest, bound to the pod.
    let bound = json!({"apiVersion": "v1", "kind": "Pod", "name": "worker", "uid": worker_uid});
    let tr = sas
        .create_token_request("robot", &pp, &token_request(&[], Some(1200), Some(bound.clone())))
        .await
        .expect("TokenRequest bound to the pod");
    let spec = &tr.spec;
    assert_eq!(spec.audiences, ["rudder"], "no audience asked: the API server's");
    assert_eq!(spec.expiration_seconds, Some(1200));
    let pod_token = issued(&tr);
    let c = claims(&pod_token);
    let iat = c["iat"].as_i64().expect("iat");
    assert!((iat - unix_now() as i64).abs() < 60, "{c}");
    assert_eq!(c["exp"].as_i64(), Some(iat + 1200), "{c}");
    assert_eq!(c["nbf"].as_i64(), Some(iat), "{c}");
    assert_eq!(c["aud"], json!(["rudder"]));
    assert_eq!(c["iss"], "rudder");
    assert_eq!(c["sub"], "system:serviceaccount:default:robot");
    let k8s = &c["kubernetes.io"];
    assert_eq!(k8s["namespace"], "default");
    assert_eq!(k8s["serviceaccount"], json!({"name": "robot", "uid": robot_uid}));
    assert_eq!(k8s["pod"], json!({"name": "worker", "uid": worker_uid}));
    assert_eq!(k8s["node"]["name"], "n1");
    assert!(c["jti"].as_str().is_some_and(|j| j.len() == 36), "{c}");
    let expires = tr.status.as_ref().expect("status").expiration_timestamp.0;
    let lifetime = expires.as_second() - iat;
    assert!(
        (1199..=1201).contains(&lifetime),
        "expirationTimestamp {expires} vs iat {iat}"
    );

    // It authenticates as the ServiceAccount.
    let as_pod = token_client(&server, "robot-pod", &pod_token).await;
    let robot_pods = Api::<Pod>::namespaced(as_pod.clone(), "default");
    let lp = ListParams::default();
    within(Duration::from_secs(5), "the bound token lists pods", || {
        robot_pods.list(&lp)
    })
    .await;

    // Another audience: a valid token, but not for this server.
    let vault = issued(
        &sas.create_token_request("robot", &pp, &token_request(&["vault"], None, None))
            .await
            .expect("TokenRequest for vault"),
    );
    assert_eq!(claims(&vault)["aud"], json!(["vault"]));
    let as_vault = token_client(&server, "robot-vault", &vault).await;
    expect_code(
        Api::<Pod>::namespaced(as_vault, "default")
            .list(&ListParams::default())
            .await,
        401,
        "a token for audience vault",
    );
    // Several audiences including the server's: accepted.
    let both = issued(
        &sas.create_token_request("robot", &pp, &token_request(&["vault", "rudder"], None, None))
            .await
            .expect("TokenRequest for both"),
    );
    Api::<Pod>::namespaced(token_client(&server, "robot-both", &both).await, "default")
        .list(&ListParams::default())
        .await
        .expect("a token naming the server among its audiences");

    // Expired: signed by the server's own key for the real ServiceAccount, an hour past exp.
    let signer = server.running.app.authn.service_accounts().expect("signer");
    let now = unix_now();
    let old = ServiceAccountClaims::new("default", "robot", &robot_uid, vec!["rudder".into()], now - 7200, 3600);
    let expired = signer.issue(&old).expect("sign");
    expect_code(
        Api::<Pod>::namespaced(token_client(&server, "robot-expired", &expired).await, "default")
            .list(&ListParams::default())
            .await,
        401,
        "an expired token",
    );
    // The same claims, current: accepted (so the 401 above was the expiry).
    let fresh = signer
        .issue(&ServiceAccountClaims::new(
            "default",
            "robot",
            &robot_uid,
            vec!["rudder".into()],
            now,
            3600,
        ))
        .expect("sign");
    Api::<Pod>::namespaced(token_client(&server, "robot-fresh", &fresh).await, "default")
        .list(&ListParams::default())
        .await
        .expect("a current token signed the same way");

    // Invalid requests.
    let short = sas
        .create_token_request("robot", &pp, &token_request(&[], Some(599), None))
        .await;
    let s = expect_code(short, 422, "expirationSeconds 599");
    assert!(
        s.message.contains("spec.expirationSeconds") && s.message.contains("less than 10 minutes"),
        "{}",
        s.message
    );
    let stale =
        json!({"apiVersion": "v1", "kind": "Pod", "name": "worker", "uid": "00000000-0000-0000-0000-000000000000"});
    expect_code(
        sas.create_token_request("robot", &pp, &token_request(&[], None, Some(stale)))
            .await,
        409,
        "a bound pod UID that is not the pod's",
    );
    let missing = json!({"apiVersion": "v1", "kind": "Pod", "name": "nobody"});
    expect_code(
        sas.create_token_request("robot", &pp, &token_request(&[], None, Some(missing)))
            .await,
        404,
        "a bound pod that does not exist",
    );
    sas.create(&pp, &from(json!({"metadata": {"name": "other"}})))
        .await
        .expect("create SA other");
    let s = expect_code(
        sas.create_token_request("other", &pp, &token_request(&[], None, Some(bound.clone())))
            .await,
        400,
        "a pod running as another ServiceAccount",
    );
    assert!(s.message.contains("different serviceaccount"), "{}", s.message);
    expect_code(
        sas.create_token_request("ghost", &pp, &token_request(&[], None, None))
            .await,
        404,
        "a ServiceAccount that does not exist",
    );

    // A token bound to a Secret dies with the Secret.
    let secrets = Api::<Secret>::namespaced(admin.clone(), "default");
    let secret = secrets
        .create(&pp, &from(json!({"metadata": {"name": "robot-key"}})))
        .await
        .expect("create secret");
    let to_secret = json!({"apiVersion": "v1", "kind": "Secret", "name": "robot-key", "uid": secret.metadata.uid});
    let secret_token = issued(
        &sas.create_token_request("robot", &pp, &token_request(&[], None, Some(to_secret)))
            .await
            .expect("TokenRequest bound to a secret"),
    );
    assert_eq!(claims(&secret_token)["kubernetes.io"]["secret"]["name"], "robot-key");
    let as_secret = Api::<Pod>::namespaced(token_client(&server, "robot-secret", &secret_token).await, "default");
    as_secret
        .list(&ListParams::default())
        .await
        .expect("secret-bound token before the secret goes");
    secrets
        .delete("robot-key", &DeleteParams::default())
        .await
        .expect("delete secret");
    expect_code(
        as_secret.list(&ListParams::default()).await,
        401,
        "token of a deleted secret",
    );

    // Deleting the pod revokes its token; the unbound token lives on.
    robot_pods
        .list(&ListParams::default())
        .await
        .expect("the pod's token just before the pod is deleted");
    pods.delete("worker", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    expect_code(
        robot_pods.list(&ListParams::default()).await,
        401,
        "token of a deleted pod",
    );
    let unbound = Api::<Pod>::namespaced(token_client(&server, "robot-unbound", &both).await, "default");
    unbound.list(&ListParams::default()).await.expect("unbound token");

    // Deleting the ServiceAccount revokes every token; re-creating it does not revive them.
    sas.delete("robot", &DeleteParams::default()).await.expect("delete SA");
    expect_code(unbound.list(&ListParams::default()).await, 401, "token of a deleted SA");
    sas.create(&pp, &from(json!({"metadata": {"name": "robot"}})))
        .await
        .expect("re-create SA robot");
    expect_code(
        unbound.list(&ListParams::default()).await,
        401,
        "token of a re-created SA (new UID)",
    );
    println!(
        "TokenRequest: pod-bound token {lifetime}s with aud/exp/nbf/jti and pod+node claims; 401 for audience vault, \
         expired, deleted secret/pod/SA and re-created SA; 422/409/404/400 for bad requests"
    );
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_gives_working_bound_tokens() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), "default")
        .create(&pp, &from(json!({"metadata": {"name": "deployer"}})))
        .await
        .expect("create SA");
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(
            &pp,
            &from(
                json!({"metadata": {"name": "job"}, "spec": {"serviceAccountName": "deployer",
                "containers": [{"name": "c", "image": "busybox:1.36"}]}}),
            ),
        )
        .await
        .expect("create pod");
    let_view(&admin, "deployer").await;
    let cache = tempfile::tempdir().expect("cache dir");
    for minor in [27, 33, 37] {
        let run = |args: &[&str]| common::run_kubectl(minor, &server.kubeconfig(), cache.path(), args);
        let (ok, out, err) = run(&[
            "create",
            "token",
            "deployer",
            "--audience",
            "rudder",
            "--duration",
            "15m",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "job",
        ]);
        assert!(ok, "kubectl 1.{minor} create token: {err}");
        let token = out.trim();
        let c = claims(token);
        assert_eq!(c["aud"], json!(["rudder"]), "1.{minor}");
        assert_eq!(
            c["exp"].as_i64().zip(c["iat"].as_i64()).map(|(e, i)| e - i),
            Some(900),
            "1.{minor}: --duration 15m"
        );
        assert_eq!(c["kubernetes.io"]["pod"]["name"], "job", "1.{minor}");
        let as_sa = token_client(&server, &format!("deployer-{minor}"), token).await;
        let (sa_pods, lp) = (Api::<Pod>::namespaced(as_sa, "default"), ListParams::default());
        within(Duration::from_secs(5), "kubectl's token lists pods", || {
            sa_pods.list(&lp)
        })
        .await;

        let (ok, out, err) = run(&["create", "token", "deployer", "--audience", "vault"]);
        assert!(ok, "kubectl 1.{minor} create token --audience vault: {err}");
        let as_vault = token_client(&server, &format!("vault-{minor}"), out.trim()).await;
        expect_code(
            Api::<Pod>::namespaced(as_vault, "default")
                .list(&ListParams::default())
                .await,
            401,
            &format!("kubectl 1.{minor}'s token for audience vault"),
        );
        let (ok, _, err) = run(&["create", "token", "deployer", "--duration", "5m"]);
        assert!(
            !ok && err.contains("less than 10 minutes"),
            "1.{minor} --duration 5m: {err}"
        );
    }
    println!("kubectl 1.27, 1.33, 1.37 create token: bound, audience and duration honoured; 401 for audience vault");
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_read_only_what_their_own_pods_use() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let pp = PostParams::default();
    for n in ["n1", "n2"] {
        Api::<Node>::all(admin.clone())
            .create(&pp, &from(json!({"metadata": {"name": n}})))
            .await
            .expect("create node");
    }
    let secrets = Api::<Secret>::namespaced(admin.clone(), "default");
    let cms = Api::<ConfigMap>::namespaced(admin.clone(), "default");
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), "default");
    for name in ["s1", "s2", "unused"] {
        secrets
            .create(
                &pp,
                &from(json!({"metadata": {"name": name}, "stringData": {"k": "v"}})),
            )
            .await
            .expect("create secret");
    }
    for name in ["c1", "c2"] {
        cms.create(&pp, &from(json!({"metadata": {"name": name}})))
            .await
            .expect("create configmap");
    }
    for name in ["sa1", "sa2"] {
        sas.create(&pp, &from(json!({"metadata": {"name": name}})))
            .await
            .expect("create SA");
    }
    let pods = Api::<Pod>::namespaced(admin.clone(), "default");
    let p1 = pods
        .create(
            &pp,
            &from(
                json!({"metadata": {"name": "p1"}, "spec": {"nodeName": "n1", "serviceAccountName": "sa1",
                "volumes": [{"name": "s", "secret": {"secretName": "s1"}}],
                "containers": [{"name": "c", "image": "busybox:1.36",
                    "envFrom": [{"configMapRef": {"name": "c1"}}]}]}}),
            ),
        )
        .await
        .expect("create p1");
    let p2 = pods
        .create(
            &pp,
            &from(
                json!({"metadata": {"name": "p2"}, "spec": {"nodeName": "n2", "serviceAccountName": "sa2",
                "volumes": [{"name": "c", "configMap": {"name": "c2"}}],
                "containers": [{"name": "c", "image": "busybox:1.36",
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}}]}]}}),
            ),
        )
        .await
        .expect("create p2");

    let n1 = server.cert_client("system:node:n1", &["system:nodes"]).await;
    let n1_secrets = Api::<Secret>::namespaced(n1.clone(), "default");
    let n1_cms = Api::<ConfigMap>::namespaced(n1.clone(), "default");
    let n1_sas = Api::<ServiceAccount>::namespaced(n1.clone(), "default");
    n1_secrets.get("s1").await.expect("n1 reads its pod's secret s1");
    n1_cms.get("c1").await.expect("n1 reads its pod's configmap c1");
    n1_sas.get("sa1").await.expect("n1 reads its pod's ServiceAccount");
    // A watch narrowed to the one secret (how kubelets follow a secret) is a read of it.
    n1_secrets
        .list(&ListParams::default().fields("metadata.name=s1"))
        .await
        .expect("n1 lists s1 by name");
    let refused = [
        ("get", "secrets", n1_secrets.get("s2").await.map(|_| ())),
        ("get", "secrets", n1_secrets.get("unused").await.map(|_| ())),
        ("get", "configmaps", n1_cms.get("c2").await.map(|_| ())),
        ("get", "serviceaccounts", n1_sas.get("sa2").await.map(|_| ())),
        (
            "list",
            "secrets",
            n1_secrets.list(&ListParams::default()).await.map(|_| ()),
        ),
        (
            "list",
            "secrets",
            n1_secrets
                .list(&ListParams::default().fields("metadata.name=s2"))
                .await
                .map(|_| ()),
        ),
        (
            "patch",
            "secrets",
            n1_secrets
                .patch(
                    "s1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"stringData": {"k": "w"}})),
                )
                .await
                .map(|_| ()),
        ),
    ];
    for (verb, resource, result) in refused {
        let s = expect_code(result, 403, &format!("n1 {verb} {resource}"));
        assert!(s.message.contains("User \"system:node:n1\""), "{}", s.message);
        assert!(s.message.contains(&format!("resource \"{resource}\"")), "{}", s.message);
    }
    let s = expect_code(n1_secrets.get("s2").await, 403, "n1 reads s2");
    assert!(
        s.message
            .contains("no relationship found between node \"n1\" and this object"),
        "{}",
        s.message
    );

    // Tokens: only for its own pods' ServiceAccounts, bound to such a pod.
    let n1_sa_api = Api::<ServiceAccount>::namespaced(n1.clone(), "default");
    let own = json!({"apiVersion": "v1", "kind": "Pod", "name": "p1", "uid": p1.metadata.uid});
    let tr = n1_sa_api
        .create_token_request("sa1", &pp, &token_request(&[], Some(3607), Some(own)))
        .await
        .expect("n1 gets a token for p1");
    // A kubelet's 3607 s token is valid for a year but reported as 3607 s (upstream's
    // extended expiry, so pods that do not re-read the file keep working while they run).
    let c = claims(&issued(&tr));
    let iat = c["iat"].as_i64().expect("iat");
    assert_eq!(c["kubernetes.io"]["warnafter"].as_i64(), Some(iat + 3607), "{c}");
    assert_eq!(c["exp"].as_i64(), Some(iat + 365 * 24 * 3600), "{c}");
    let reported = tr.status.as_ref().expect("status").expiration_timestamp.0.as_second();
    assert!((reported - iat - 3607).abs() <= 1, "{reported} vs {iat}");
    let other = json!({"apiVersion": "v1", "kind": "Pod", "name": "p2", "uid": p2.metadata.uid});
    expect_code(
        n1_sa_api
            .create_token_request("sa2", &pp, &token_request(&[], None, Some(other.clone())))
            .await,
        403,
        "n1 asks for p2's ServiceAccount token",
    );
    expect_code(
        n1_sa_api
            .create_token_request("sa1", &pp, &token_request(&[], None, None))
            .await,
        403,
        "n1 asks for an unbound token",
    );
    // A pod of n2 running as sa1 would let n1 ask for sa1, but not bind to that pod.
    pods.create(
        &pp,
        &from(
            json!({"metadata": {"name": "p3"}, "spec": {"nodeName": "n2", "serviceAccountName": "sa1",
            "containers": [{"name": "c", "image": "busybox:1.36"}]}}),
        ),
    )
    .await
    .expect("create p3");
    let p3_uid = pods.get("p3").await.expect("p3").metadata.uid;
    let s = expect_code(
        n1_sa_api
            .create_token_request(
                "sa1",
                &pp,
                &token_request(
                    &[],
                    None,
                    Some(json!({"apiVersion": "v1", "kind": "Pod", "name": "p3", "uid": p3_uid})),
                ),
            )
            .await,
        403,
        "n1 binds a token to n2's pod",
    );
    assert!(s.message.contains("pod scheduled on it"), "{}", s.message);

    // Once p1 moves off n1 (deleted), its secret is no longer n1's to read.
    pods.delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete p1");
    expect_code(n1_secrets.get("s1").await, 403, "n1 reads s1 after p1 is gone");

    // kubectl auth can-i answers from the same rules.
    let n2_config = cert_kubeconfig(&server, "system:node:n2", &["system:nodes"]);
    let cache = tempfile::tempdir().expect("cache dir");
    for minor in [27, 33, 37] {
        let can = |args: &[&str]| {
            let mut all = vec!["auth", "can-i"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["-n", "default"]);
            common::run_kubectl(minor, &n2_config, cache.path(), &all)
        };
        let (ok, out, err) = can(&["get", "secret/s2"]);
        assert!(ok && out.trim() == "yes", "1.{minor} n2 can get s2: {out} {err}");
        let (ok, out, _) = can(&["get", "secret/s1"]);
        assert!(!ok && out.trim().starts_with("no"), "1.{minor} n2 cannot get s1: {out}");
        let (ok, out, _) = can(&["get", "configmap/c2"]);
        assert!(ok && out.trim() == "yes", "1.{minor} n2 can get c2: {out}");
        let (ok, out, _) = can(&["update", "secret/s2"]);
        assert!(
            !ok && out.trim().starts_with("no"),
            "1.{minor} n2 cannot update s2: {out}"
        );
        let (ok, out, _) = can(&["list", "pods"]);
        assert!(ok && out.trim() == "yes", "1.{minor} n2 can list pods: {out}");
    }
    println!(
        "node graph: n1 read s1/c1/sa1 of its pod and s1 by fieldSelector; 403 for s2, unused, c2, sa2, list, patch; \
         tokens only for its pods' SAs bound to its pods; s1 403 after p1 deleted; kubectl 1.27/1.33/1.37 auth can-i agrees"
    );
    server.running.stop().await;
}

/// A Role in `team` letting its holder manage Roles and RoleBindings there and read pods.
fn team_admin_role() -> Role {
    from(json!({
        "metadata": {"name": "team-admin", "namespace": "team"},
        "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
             "verbs": ["get", "list", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        ],
    }))
}

fn role(name: &str, resources: &[&str], verbs: &[&str]) -> Role {
    from(json!({
        "metadata": {"name": name, "namespace": "team"},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}],
    }))
}

fn binding(name: &str, kind: &str, role: &str, user: &str) -> RoleBinding {
    from(json!({
        "metadata": {"name": name, "namespace": "team"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
}

fn expect_escalation<T: Debug>(result: Result<T, kube::Error>, missing: &str, what: &str) {
    let s = expect_code(result, 403, what);
    for want in [
        "user \"alice\"",
        "is attempting to grant RBAC permissions not currently held",
        missing,
    ] {
        assert!(s.message.contains(want), "{what}: {:?} lacks {want:?}", s.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_only_what_the_granter_holds_unless_escalate_or_bind() {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let pp = PostParams::default();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&pp, &from(json!({"metadata": {"name": "team"}})))
        .await
        .expect("create namespace");
    let admin_roles = Api::<Role>::namespaced(admin.clone(), "team");
    let admin_bindings = Api::<RoleBinding>::namespaced(admin.clone(), "team");
    admin_roles
        .create(&pp, &team_admin_role())
        .await
        .expect("create team-admin");
    admin_bindings
        .create(&pp, &binding("alice-team-admin", "Role", "team-admin", "alice"))
        .await
        .expect("bind alice");

    let alice = server.cert_client("alice", &[]).await;
    let roles = Api::<Role>::namespaced(alice.clone(), "team");
    let bindings = Api::<RoleBinding>::namespaced(alice.clone(), "team");
    // Within what she holds: allowed (once her binding reached the RBAC cache).
    let pod_reader = role("pod-reader", &["pods"], &["get"]);
    within(Duration::from_secs(5), "alice creates a pod reader", || {
        roles.create(&pp, &pod_reader)
    })
    .await;
    // More than she holds: create, replace and patch are all refused.
    expect_escalation(
        roles.create(&pp, &role("secret-reader", &["secrets"], &["get"])).await,
        "Resources:[\"secrets\"], Verbs:[\"get\"]",
        "alice creates a secret reader",
    );
    expect_escalation(
        roles
            .create(&pp, &role("pod-deleter", &["pods"], &["get", "delete"]))
            .await,
        "Resources:[\"pods\"], Verbs:[\"delete\"]",
        "alice creates a pod deleter",
    );
    let mut wider = roles.get("pod-reader").await.expect("get pod-reader");
    wider.rules = role("x", &["pods", "secrets"], &["get"]).rules;
    expect_escalation(
        roles.replace("pod-reader", &pp, &wider).await,
        "Resources:[\"secrets\"]",
        "alice widens pod-reader by PUT",
    );
    let widen = json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]});
    expect_escalation(
        roles
            .patch("pod-reader", &PatchParams::default(), &Patch::Merge(&widen))
            .await,
        "Verbs:[\"*\"]",
        "alice widens pod-reader by PATCH",
    );
    let unchanged = admin_roles.get("pod-reader").await.expect("pod-reader");
    assert_eq!(unchanged.rules, role("x", &["pods"], &["get"]).rules);

    // Bindings: to a role she holds, yes; to one she does not, no.
    let bob_pod_reader = binding("bob-pod-reader", "Role", "pod-reader", "bob");
    within(Duration::from_secs(5), "alice binds bob to pod-reader", || {
        bindings.create(&pp, &bob_pod_reader)
    })
    .await;
    expect_escalation(
        bindings
            .create(&pp, &binding("bob-edit", "ClusterRole", "edit", "bob"))
            .await,
        "is attempting to grant",
        "alice binds bob to edit",
    );
    let s = expect_code(
        bindings
            .create(&pp, &binding("bob-none", "Role", "no-such-role", "bob"))
            .await,
        404,
        "a binding to a missing role",
    );
    assert!(s.message.contains("no-such-role"), "{}", s.message);

    // `escalate` lets her write roles beyond her own rules; `bind` lets her bind edit.
    let grants: Role = from(json!({
        "metadata": {"name": "grants", "namespace": "team"},
        "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["edit"]},
        ],
    }));
    admin_roles.create(&pp, &grants).await.expect("create grants");
    admin_bindings
        .create(&pp, &binding("alice-grants", "Role", "grants", "alice"))
        .await
        .expect("bind grants");
    let secret_reader = role("secret-reader", &["secrets"], &["get"]);
    within(
        Duration::from_secs(5),
        "alice with escalate creates a secret reader",
        || roles.create(&pp, &secret_reader),
    )
    .await;
    let bob_edit = binding("bob-edit", "ClusterRole", "edit", "bob");
    within(Duration::from_secs(5), "alice with bind binds bob to edit", || {
        bindings.create(&pp, &bob_edit)
    })
    .await;
    // `bind` names edit only: admin is still out of reach.
    expect_escalation(
        bindings
            .create(&pp, &binding("bob-admin", "ClusterRole", "admin", "bob"))
            .await,
        "is attempting to grant",
        "alice binds bob to admin",
    );

    // Cluster scope: rules held in one namespace do not count for a ClusterRole.
    let cr_writer: ClusterRole = from(json!({
        "metadata": {"name": "clusterrole-writer"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]}],
    }));
    Api::<ClusterRole>::all(admin.clone())
        .create(&pp, &cr_writer)
        .await
        .expect("create clusterrole-writer");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &pp,
            &from(json!({
                "metadata": {"name": "alice-clusterrole-writer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "clusterrole-writer"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
            })),
        )
        .await
        .expect("bind clusterrole-writer");
    let cluster_roles = Api::<ClusterRole>::all(alice.clone());
    let own: ClusterRole = from(json!({
        "metadata": {"name": "alice-own"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]}],
    }));
    within(
        Duration::from_secs(5),
        "alice creates a ClusterRole within her cluster rules",
        || cluster_roles.create(&pp, &own),
    )
    .await;
    let pods_everywhere: ClusterRole = from(json!({
        "metadata": {"name": "pods-everywhere"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }));
    expect_escalation(
        cluster_roles.create(&pp, &pods_everywhere).await,
        "Resources:[\"pods\"], Verbs:[\"get\"]",
        "alice's namespaced pod rights do not make a ClusterRole",
    );

    // kubectl auth can-i sees the bind/escalate grants.
    let alice_config = cert_kubeconfig(&server, "alice", &[]);
    let cache = tempfile::tempdir().expect("cache dir");
    for minor in [27, 33, 37] {
        let can = |args: &[&str]| {
            let mut all = vec!["auth", "can-i"];
            all.extend_from_slice(args);
            common::run_kubectl(minor, &alice_config, cache.path(), &all)
        };
        let (ok, out, err) = can(&["escalate", "roles", "-n", "team"]);
        assert!(ok && out.trim() == "yes", "1.{minor} escalate roles: {out} {err}");
        let (ok, out, err) = can(&["bind", "clusterroles/edit", "-n", "team"]);
        assert!(ok && out.trim() == "yes", "1.{minor} bind edit: {out} {err}");
        let (ok, out, _) = can(&["bind", "clusterroles/admin", "-n", "team"]);
        assert!(!ok && out.trim().starts_with("no"), "1.{minor} bind admin: {out}");
        let (ok, out, _) = can(&["get", "secrets", "-n", "team"]);
        assert!(!ok && out.trim().starts_with("no"), "1.{minor} get secrets: {out}");
    }
    println!(
        "RBAC escalation: 403 naming the missing rules for create/PUT/PATCH of a wider Role, bindings to edit/admin and a \
         ClusterRole beyond cluster rules; allowed with escalate / bind (resourceNames edit); kubectl auth can-i agrees"
    );
    server.running.stop().await;
}
