"""CustomResourceDefinitions through the official PyPI `kubernetes` client.

Run by control/tests/api_crd.rs with KUBECONFIG set to a fresh `rudder server`'s admin
kubeconfig: a CRD through ApiextensionsV1Api, its objects through CustomObjectsApi
(namespaced and cluster-scoped, status subresource, selectors, validation) and the
DynamicClient. Every check raises on failure; exit status 0 means everything held.
"""

import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

GROUP = "rudder.test"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(line):
    print(f"ok: {line}", flush=True)


def crd(plural, kind, scope):
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "maximum": 10},
                    "mode": {"type": "string", "default": "auto"},
                },
            },
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"plural": plural, "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def wait_established(ext, name):
    deadline = time.time() + 20
    while time.time() < deadline:
        got = ext.read_custom_resource_definition(name)
        conds = (got.status and got.status.conditions) or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} not Established")


def main():
    config.load_kube_config()
    ext = client.ApiextensionsV1Api()
    ext.create_custom_resource_definition(crd("things", "Thing", "Namespaced"))
    ext.create_custom_resource_definition(crd("globals", "Global", "Cluster"))
    wait_established(ext, f"things.{GROUP}")
    wait_established(ext, f"globals.{GROUP}")
    ok("CRDs created and Established")

    co = client.CustomObjectsApi()
    for name, size, tier in [("a", 1, "x"), ("b", 2, "y")]:
        co.create_namespaced_custom_object(
            GROUP, "v1", "default", "things",
            {"apiVersion": f"{GROUP}/v1", "kind": "Thing",
             "metadata": {"name": name, "labels": {"tier": tier}}, "spec": {"size": size}},
        )
    got = co.get_namespaced_custom_object(GROUP, "v1", "default", "things", "a")
    check(got["spec"] == {"size": 1, "mode": "auto"}, f"defaulted: {got['spec']}")
    listed = co.list_namespaced_custom_object(GROUP, "v1", "default", "things", label_selector="tier=y")
    check([i["metadata"]["name"] for i in listed["items"]] == ["b"], f"label selector: {listed}")
    listed = co.list_cluster_custom_object(GROUP, "v1", "things", field_selector="metadata.name=a")
    check([i["metadata"]["name"] for i in listed["items"]] == ["a"], f"field selector: {listed}")
    ok("CustomObjectsApi create, get, list with selectors")

    try:
        co.create_namespaced_custom_object(
            GROUP, "v1", "default", "things",
            {"apiVersion": f"{GROUP}/v1", "kind": "Thing", "metadata": {"name": "big"}, "spec": {"size": 11}},
        )
        raise AssertionError("size 11 was accepted")
    except ApiException as e:
        check(e.status == 422 and "spec.size" in e.body and "less than or equal to 10" in e.body, e.body)
    ok("invalid object refused with 422 naming the field")

    patched = co.patch_namespaced_custom_object(GROUP, "v1", "default", "things", "a", {"spec": {"size": 5}})
    check(patched["spec"]["size"] == 5, f"patch: {patched}")
    st = co.patch_namespaced_custom_object_status(
        GROUP, "v1", "default", "things", "a", {"status": {"phase": "Ready"}, "spec": {"size": 9}}
    )
    check(st["status"] == {"phase": "Ready"} and st["spec"]["size"] == 5, f"status patch: {st}")
    ok("merge patch and the status subresource")

    co.create_cluster_custom_object(
        GROUP, "v1", "globals",
        {"apiVersion": f"{GROUP}/v1", "kind": "Global", "metadata": {"name": "g1"}, "spec": {"size": 3}},
    )
    check(co.get_cluster_custom_object(GROUP, "v1", "globals", "g1")["spec"]["size"] == 3, "cluster object")
    co.delete_cluster_custom_object(GROUP, "v1", "globals", "g1")
    ok("cluster-scoped objects")

    dyn = DynamicClient(client.ApiClient())
    things = dyn.resources.get(api_version=f"{GROUP}/v1", kind="Thing")
    check(things.namespaced and things.name == "things", f"discovered: {things}")
    things.create(
        body={"apiVersion": f"{GROUP}/v1", "kind": "Thing", "metadata": {"name": "c"}, "spec": {"size": 4}},
        namespace="default",
    )
    got = things.get(name="c", namespace="default")
    check(got.spec.size == 4 and got.spec.mode == "auto", f"dynamic get: {got}")
    names = sorted(i.metadata.name for i in things.get(namespace="default").items)
    check(names == ["a", "b", "c"], f"dynamic list: {names}")
    things.delete(name="c", namespace="default")
    ok("DynamicClient create, get, list, delete")

    ext.delete_custom_resource_definition(f"things.{GROUP}")
    deadline = time.time() + 20
    while True:
        try:
            ext.read_custom_resource_definition(f"things.{GROUP}")
        except ApiException as e:
            check(e.status == 404, e.body)
            break
        check(time.time() < deadline, "CRD still there")
        time.sleep(0.1)
    try:
        co.list_namespaced_custom_object(GROUP, "v1", "default", "things")
        raise AssertionError("things still served")
    except ApiException as e:
        check(e.status == 404, e.body)
    ok("CRD deleted with its objects")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
