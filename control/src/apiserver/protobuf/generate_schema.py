#!/usr/bin/env python3
"""Writes schema.txt, the field table protobuf/mod.rs decodes request bodies with, from
upstream's generated.proto files (k8s.io/api and k8s.io/apimachinery checkouts):

    generate_schema.py API_CHECKOUT APIMACHINERY_CHECKOUT > schema.txt

One line per message: `package.Message field=number:type ...`; a type is a scalar
(string, int32, int64, bool, bytes, double, float), another message, `*T` for repeated
and `%T` for map<string, T>. A message marked `+protobuf.nullable=true` (a Go slice type
such as ExtraValue) is written `Name[]`: its JSON form is the list of its items.
"""
import os, re, sys

API_GROUPS = ["core/v1", "apps/v1", "batch/v1", "rbac/v1", "policy/v1", "scheduling/v1",
              "networking/v1", "authentication/v1", "authorization/v1", "autoscaling/v1",
              "autoscaling/v2", "coordination/v1", "discovery/v1", "events/v1", "storage/v1",
              "certificates/v1", "admissionregistration/v1", "node/v1", "flowcontrol/v1",
              # referenced by batch/v1 Job (workload scheduling)
              "scheduling/v1alpha3"]
MACHINERY = ["pkg/apis/meta/v1", "pkg/util/intstr", "pkg/api/resource", "pkg/runtime"]
SCALARS = {"string", "int32", "int64", "bool", "bytes", "double", "float"}
FIELD = re.compile(r"^\s*(optional|repeated)?\s*(map<\s*string\s*,\s*([\w.]+)\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")


def short(full):
    return full.lstrip(".").removeprefix("k8s.io.")


def parse(path, out):
    text = open(path).read()
    package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
    pkg = short(package)
    current, fields, nullable, pending_nullable = None, [], False, False
    for line in text.splitlines():
        if "+protobuf.nullable=true" in line:
            pending_nullable = True
        m = re.match(r"^message\s+(\w+)\s*\{", line)
        if m:
            current, fields, nullable, pending_nullable = m.group(1), [], pending_nullable, False
            continue
        if current is None:
            if line.strip() and not line.strip().startswith("//"):
                pending_nullable = False
            continue
        if line.startswith("}"):
            out.append(f"{pkg}.{current}{'[]' if nullable else ''} " + " ".join(fields))
            current = None
            continue
        f = FIELD.match(line)
        if not f:
            continue
        label, ty, map_value, name, number = f.groups()

        def resolve(t):
            if t in SCALARS:
                return t
            if t.startswith("."):
                return short(t)
            return f"{pkg}.{t}"

        if map_value:
            t = "%" + resolve(map_value)
        else:
            t = ("*" if label == "repeated" else "") + resolve(ty)
        fields.append(f"{name}={number}:{t}")


def main():
    api, machinery = sys.argv[1], sys.argv[2]
    out = []
    for g in MACHINERY:
        parse(os.path.join(machinery, g, "generated.proto"), out)
    for g in API_GROUPS:
        p = os.path.join(api, g, "generated.proto")
        if os.path.exists(p):
            parse(p, out)
    print("\n".join(out))


main()
