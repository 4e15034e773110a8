"""The official PyPI `kubernetes` client against `rudder server`.

Run by control/tests/api_python.rs with the venv `cargo xtask setup` creates and KUBECONFIG
set to the server's admin kubeconfig. Every check raises on failure; each passed step prints
one line. Exit status 0 means everything held.
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

NS = "py-client"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(line):
    print(f"ok: {line}", flush=True)


def expect_api_error(status, fn, *args, **kwargs):
    """Calls fn, which must fail with an ApiException of this HTTP status."""
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        check(e.status == status, f"expected HTTP {status}, got {e.status}: {e.body}")
        return e
    raise AssertionError(f"expected HTTP {status} from {fn.__name__}, but it succeeded")


def names(items):
    return sorted(i.metadata.name for i in items)


def create_objects(v1):
    # Plain dicts: no apiVersion, no kind, and (this client) no Content-Type header.
    ns = v1.create_namespace(body={"metadata": {"name": NS}})
    check(ns.metadata.name == NS, f"namespace name {ns.metadata.name}")
    check(ns.status.phase == "Active", f"namespace phase {ns.status.phase}")
    check(ns.metadata.uid and ns.metadata.resource_version, "uid and resourceVersion set")
    for i in range(5):
        cm = v1.create_namespaced_config_map(
            NS,
            body={
                "metadata": {"name": f"cm{i}", "labels": {"app": "py", "tier": "a" if i < 3 else "b"}},
                "data": {"i": str(i)},
            },
        )
        check(cm.kind == "ConfigMap" and cm.api_version == "v1", f"kind filled in: {cm.kind} {cm.api_version}")
        check(cm.metadata.namespace == NS, f"namespace filled in: {cm.metadata.namespace}")
    # A typed model body, as most users write it.
    typed = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="typed", labels={"app": "other"}), data={"k": "v"}
    )
    v1.create_namespaced_config_map(NS, typed)
    e = expect_api_error(409, v1.create_namespaced_config_map, NS, typed)
    check("AlreadyExists" in e.body, f"409 body names AlreadyExists: {e.body}")
    svc = v1.create_namespaced_service(
        NS,
        body={"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    )
    ip = svc.spec.cluster_ip
    check(ip and ip.startswith("10.96."), f"ClusterIP {ip} in 10.96.0.0/16")
    check(svc.spec.type == "ClusterIP" and svc.spec.ports[0].protocol == "TCP", "Service defaults filled")
    ok(f"create: namespace {NS}, 6 configmaps (dict and model bodies), service web with ClusterIP {ip}; duplicate -> 409")
    return ip


def list_with_selectors(v1):
    got = names(v1.list_namespaced_config_map(NS, label_selector="app=py,tier=a").items)
    check(got == ["cm0", "cm1", "cm2"], f"app=py,tier=a: {got}")
    got = names(v1.list_namespaced_config_map(NS, label_selector="tier in (b)").items)
    check(got == ["cm3", "cm4"], f"tier in (b): {got}")
    got = names(v1.list_namespaced_config_map(NS, label_selector="app!=py").items)
    check("typed" in got and "cm0" not in got, f"app!=py: {got}")
    got = names(v1.list_namespaced_config_map(NS, field_selector="metadata.name=cm1").items)
    check(got == ["cm1"], f"metadata.name=cm1: {got}")
    every = v1.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={NS}", label_selector="tier")
    check(names(every.items) == ["cm0", "cm1", "cm2", "cm3", "cm4"], f"all namespaces: {names(every.items)}")
    check(every.metadata.resource_version, "list has a resourceVersion")
    page = v1.list_namespaced_config_map(NS, limit=2)
    check(len(page.items) == 2 and page.metadata._continue, "limit=2 gives 2 items and a continue token")
    rest = v1.list_namespaced_config_map(NS, limit=10, _continue=page.metadata._continue)
    check(len(page.items) + len(rest.items) == 6, f"paged total {len(page.items) + len(rest.items)}")
    ok("list: label selectors (=, in, !=, exists), field selectors metadata.name / metadata.namespace, paging 2+4")


def patches(v1, ip):
    # A dict patch goes out as a strategic merge patch.
    cm = v1.patch_namespaced_config_map("cm0", NS, body={"metadata": {"labels": {"patched": "smp"}}, "data": {"extra": "1"}})
    check(cm.metadata.labels == {"app": "py", "tier": "a", "patched": "smp"}, f"labels merged: {cm.metadata.labels}")
    check(cm.data == {"i": "0", "extra": "1"}, f"data merged: {cm.data}")
    # JSON merge patch, chosen explicitly: null removes a key.
    cm = v1.patch_namespaced_config_map(
        "cm0", NS, body={"data": {"extra": None}}, _content_type="application/merge-patch+json"
    )
    check(cm.data == {"i": "0"}, f"merge patch removed extra: {cm.data}")
    # A list body is a JSON patch.
    cm = v1.patch_namespaced_config_map("cm0", NS, body=[{"op": "add", "path": "/data/jp", "value": "x"}])
    check(cm.data == {"i": "0", "jp": "x"}, f"json patch added jp: {cm.data}")
    # Strategic merge on a list with a merge key: ports merge by port number.
    svc = v1.patch_namespaced_service("web", NS, body={"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})
    check(len(svc.spec.ports) == 1 and svc.spec.ports[0].target_port == 9090, f"ports merged: {svc.spec.ports}")
    check(svc.spec.cluster_ip == ip, f"ClusterIP kept: {svc.spec.cluster_ip}")
    # Replace with a stale resourceVersion: 409 Conflict.
    stale = v1.read_namespaced_config_map("cm1", NS)
    fresh = v1.read_namespaced_config_map("cm1", NS)
    fresh.data["v"] = "1"
    v1.replace_namespaced_config_map("cm1", NS, fresh)
    stale.data["v"] = "2"
    e = expect_api_error(409, v1.replace_namespaced_config_map, "cm1", NS, stale)
    check("Conflict" in e.body, f"409 reason Conflict: {e.body}")
    ok("patch: dict -> strategic merge, merge-patch+json removes a key, JSON patch list, service ports merged by key; stale replace -> 409")


def dry_run(v1):
    """dryRun=All must never persist: either the server honours it or it refuses (400)."""
    outcomes = []

    def attempt(what, fn, *args, **kwargs):
        try:
            fn(*args, dry_run="All", **kwargs)
            outcomes.append(f"{what} honoured")
        except ApiException as e:
            check(e.status == 400, f"dry-run {what}: HTTP {e.status}: {e.body}")
            outcomes.append(f"{what} refused")

    attempt("create", v1.create_namespaced_config_map, NS, body={"metadata": {"name": "dry"}, "data": {"a": "1"}})
    expect_api_error(404, v1.read_namespaced_config_map, "dry", NS)
    attempt("patch", v1.patch_namespaced_config_map, "cm2", NS, body={"data": {"dry": "x"}})
    check("dry" not in v1.read_namespaced_config_map("cm2", NS).data, "a dry-run patch persisted")
    cm = v1.read_namespaced_config_map("cm2", NS)
    cm.data["dry"] = "y"
    attempt("replace", v1.replace_namespaced_config_map, "cm2", NS, cm)
    check("dry" not in v1.read_namespaced_config_map("cm2", NS).data, "a dry-run replace persisted")
    attempt("delete", v1.delete_namespaced_config_map, "cm2", NS)
    v1.read_namespaced_config_map("cm2", NS)
    ok(f"dryRun=All persisted nothing ({', '.join(outcomes)})")


def pods(v1):
    containers = [{"name": "c1", "image": "busybox:1.36"}, {"name": "c2", "image": "nginx:1.25"}]
    v1.create_namespaced_pod(NS, body={"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"containers": containers}})
    b = v1.create_namespaced_pod(NS, body={"metadata": {"name": "b"}, "spec": {"nodeName": "n1", "containers": containers[:1]}})
    check(b.status.phase == "Pending" and b.spec.restart_policy == "Always", "pod defaults filled")
    got = names(v1.list_namespaced_pod(NS, field_selector="spec.nodeName=n1").items)
    check(got == ["b"], f"spec.nodeName=n1: {got}")
    got = names(v1.list_namespaced_pod(NS, field_selector="status.phase=Pending,metadata.name!=b").items)
    check(got == ["a"], f"status.phase=Pending,metadata.name!=b: {got}")
    got = names(v1.list_namespaced_pod(NS, label_selector="!x").items)
    check(got == ["b"], f"!x: {got}")
    # Strategic merge: containers merge by name, null deletes a label.
    a = v1.patch_namespaced_pod("a", NS, body={"metadata": {"labels": {"x": None}}, "spec": {"containers": [{"name": "c2", "image": "nginx:1.27"}]}})
    images = [(c.name, c.image) for c in a.spec.containers]
    check(images == [("c1", "busybox:1.36"), ("c2", "nginx:1.27")], f"containers merged by name: {images}")
    check(a.metadata.labels == {"y": "2"}, f"label x removed: {a.metadata.labels}")
    b = v1.patch_namespaced_pod_status("b", NS, body={"status": {"phase": "Running", "podIP": "10.244.0.9"}})
    check(b.status.phase == "Running" and b.status.pod_ip == "10.244.0.9", f"status patched: {b.status.phase}")
    got = names(v1.list_namespaced_pod(NS, field_selector="status.phase=Running").items)
    check(got == ["b"], f"status.phase=Running: {got}")
    # The main resource does not write status.
    b = v1.patch_namespaced_pod("b", NS, body={"status": {"phase": "Failed"}, "metadata": {"labels": {"z": "1"}}})
    check(b.status.phase == "Running" and b.metadata.labels == {"z": "1"}, f"status ignored on the main resource: {b.status.phase}")
    for name in ["a", "b"]:
        v1.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    ok("pods: field selectors spec.nodeName / status.phase / metadata.name!=, !label; strategic merge of containers by name; status subresource only via /status")


def watch_label_transitions(v1):
    rv = v1.list_namespaced_config_map(NS).metadata.resource_version
    v1.create_namespaced_config_map(NS, body={"metadata": {"name": "sel", "labels": {"watched": "yes"}}})
    v1.patch_namespaced_config_map("sel", NS, body={"metadata": {"labels": {"watched": "no"}}})
    v1.patch_namespaced_config_map("sel", NS, body={"metadata": {"labels": {"watched": "yes"}}, "data": {"k": "v"}})
    v1.patch_namespaced_config_map("sel", NS, body={"data": {"k": "w"}})
    v1.delete_namespaced_config_map("sel", NS)
    seen = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="watched=yes", resource_version=rv, timeout_seconds=5):
        if ev["type"] != "BOOKMARK":
            seen.append(ev["type"])
        if len(seen) == 5:
            w.stop()
    want = ["ADDED", "DELETED", "ADDED", "MODIFIED", "DELETED"]
    check(seen == want, f"label-selected watch: {seen}, want {want}")
    ok(f"watch with label selector: an object leaving/entering the selection is {seen}")


def watch_from_rv(v1):
    rv = v1.list_namespaced_config_map(NS).metadata.resource_version
    # These happen after rv and before the watch starts: a watch from rv replays them.
    v1.create_namespaced_config_map(NS, body={"metadata": {"name": "w1"}, "data": {"a": "1"}})
    v1.patch_namespaced_config_map("w1", NS, body={"data": {"a": "2"}})
    # This one happens while the watch is open.
    def later():
        time.sleep(0.5)
        v1.delete_namespaced_config_map("w1", NS)

    deleter = threading.Thread(target=later)
    deleter.start()
    seen = []
    w = watch.Watch()
    start = time.time()
    for ev in w.stream(v1.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=10):
        if ev["type"] == "BOOKMARK":
            continue
        obj = ev["object"]
        seen.append((ev["type"], obj.metadata.name, obj.data.get("a") if obj.data else None))
        check(int(obj.metadata.resource_version) > int(rv), f"event rv {obj.metadata.resource_version} > {rv}")
        if len(seen) == 3:
            w.stop()
    deleter.join()
    want = [("ADDED", "w1", "1"), ("MODIFIED", "w1", "2"), ("DELETED", "w1", "2")]
    check(seen == want, f"watch events {seen}, want {want}")
    ok(f"watch from resourceVersion {rv}: {[t for t, _, _ in seen]} in order in {time.time() - start:.1f}s")


def delete_collection_and_404(v1):
    v1.delete_collection_namespaced_config_map(NS, label_selector="tier=b")
    left = names(v1.list_namespaced_config_map(NS).items)
    check(left == ["cm0", "cm1", "cm2", "typed"], f"after deletecollection tier=b: {left}")
    e = expect_api_error(404, v1.read_namespaced_config_map, "cm3", NS)
    check("NotFound" in e.body, f"404 reason NotFound: {e.body}")
    v1.delete_namespaced_config_map("cm0", NS)
    expect_api_error(404, v1.read_namespaced_config_map, "cm0", NS)
    expect_api_error(404, v1.delete_namespaced_config_map, "cm0", NS)
    ok(f"delete_collection tier=b removed cm3, cm4 (left {left}); read and delete after delete -> 404")


def dynamic(api_client):
    dyn = DynamicClient(api_client)
    services = dyn.resources.get(api_version="v1", kind="Service")
    listed = services.get(namespace=NS)
    got = sorted(i.metadata.name for i in listed.items)
    check(got == ["web"], f"dynamic services in {NS}: {got}")
    everywhere = sorted(f"{i.metadata.namespace}/{i.metadata.name}" for i in services.get().items)
    check("default/kubernetes" in everywhere and f"{NS}/web" in everywhere, f"dynamic services: {everywhere}")
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    created = cms.create(body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dyn"}, "data": {"d": "1"}}, namespace=NS)
    check(created.metadata.name == "dyn", "dynamic create")
    check(cms.get(name="dyn", namespace=NS).data.d == "1", "dynamic get")
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    check(deployments.namespaced, "deployments are namespaced in discovery")
    ok(f"DynamicClient: discovery via /version, /apis, /api/v1; services {everywhere}; ConfigMap create/get")


def delete_namespace(v1):
    ns = v1.delete_namespace(NS)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            v1.read_namespace(NS)
        except ApiException as e:
            check(e.status == 404, f"namespace read after delete: {e.status}")
            ok(f"delete namespace {NS}: gone (404) after {10 - (deadline - time.time()):.1f}s")
            return
        time.sleep(0.1)
    raise AssertionError(f"namespace {NS} still there 10 s after delete ({ns})")


def main():
    config.load_kube_config()
    api_client = client.ApiClient()
    v1 = client.CoreV1Api(api_client)
    version = client.VersionApi(api_client).get_code()
    ok(f"/version: {version.git_version} (kubernetes client {__import__('kubernetes').__version__})")
    ip = create_objects(v1)
    list_with_selectors(v1)
    patches(v1, ip)
    dry_run(v1)
    pods(v1)
    watch_from_rv(v1)
    watch_label_transitions(v1)
    delete_collection_and_404(v1)
    dynamic(api_client)
    delete_namespace(v1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, ApiException) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
