# STAND-IN for k3s used by the lab tests; not the real k3s (and not a real kube-apiserver).
#
# What stands in for kube-apiserver's REST API: the k3s stand-in's Kubernetes API over HTTPS, a module of the stand-in
# (installed with the others by the stand-in install script in /usr/local/lib/k3s-standin/). It exists so that the
# REAL kubectl client can talk to the stand-in server: a CA, a serving certificate and an admin client certificate
# made with the `openssl` command (python3's stdlib cannot make certificates; the lab image and the controller have
# openssl through ca-certificates), TLS with client-certificate authentication on the API port, and the part of the
# Kubernetes REST API that kubectl needs for what the product does: discovery (legacy and aggregated), the OpenAPI v3
# that kubectl's field validation asks for, list/get with label and field selectors, create, update, merge /
# strategic-merge / JSON patches, server-side apply, delete and the pod eviction subresource (honouring
# PodDisruptionBudgets).
#
# What it is not: no watch, no admission, no managed fields or apply conflicts, no protobuf (but an empty
# /openapi/v2), no authorization beyond "a client certificate from the client CA"; strategic merge patches are applied
# as JSON merge patches (lists are replaced), which is what they are for every field the product patches. Objects live
# in the stand-in's SQLite datastore (datastore.py's Store). Written from scratch for the lab; see
# test/standins/README.md.

import copy
import hashlib
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.parse

import yaml

from common import GO_VERSION, go_arch, short_commit
from datastore import BUILTIN, SYSTEM_META, ApiError, Res, b64, pluralize, split_api_version
from datastore import label_selector_match as equality_selector_match
from tables import table_columns

# ---------------------------------------------------------------------------------------------------------
# certificates (openssl): k3s's names under server/tls, ECDSA P-256 keys as k3s makes them

class CertError(Exception):
    pass


_OPENSSL_CNF = """[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign
subjectKeyIdentifier = hash
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = %s
"""


def _openssl(args, tmp, sans="DNS:localhost"):
    cnf = os.path.join(tmp, "openssl.cnf")
    with open(cnf, "w", encoding="utf-8") as f:
        f.write(_OPENSSL_CNF % sans)
    env = dict(os.environ, OPENSSL_CONF=cnf)
    try:
        r = subprocess.run(["openssl"] + args, cwd=tmp, env=env, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise CertError("the k3s stand-in needs the openssl command to make its certificates")
    if r.returncode != 0:
        raise CertError("openssl %s failed: %s" % (args[0], r.stderr.decode(errors="replace").strip()))
    return r.stdout.decode()


def _with_tmp(fn):
    tmp = tempfile.mkdtemp(prefix="k3s-standin-tls-")
    try:
        os.chmod(tmp, 0o700)
        return fn(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(tmp, name, text):
    p = os.path.join(tmp, name)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return p


def new_key(tmp):
    return _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], tmp)


def new_ca(common_name):
    """(cert PEM, key PEM) of a self-signed CA valid ten years, as k3s's server-ca / client-ca."""
    def make(tmp):
        key = new_key(tmp)
        _write(tmp, "ca.key", key)
        crt = _openssl(["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=" + common_name, "-days", "3650",
                        "-sha256", "-config", "openssl.cnf", "-extensions", "ca"], tmp)
        return crt, key
    return _with_tmp(make)


def new_leaf(ca_crt, ca_key, subject, kind, sans=(), days=365):
    """(cert PEM, key PEM) signed by the CA: kind "client" or "server" (with subjectAltNames)."""
    alt = ",".join(sans) if sans else "DNS:localhost"

    def make(tmp):
        key = new_key(tmp)
        _write(tmp, "leaf.key", key)
        _write(tmp, "ca.crt", ca_crt)
        _write(tmp, "ca.key", ca_key)
        _openssl(["req", "-new", "-key", "leaf.key", "-subj", subject, "-config", "openssl.cnf", "-out", "leaf.csr"],
                 tmp, alt)
        crt = _openssl(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", str(days),
                        "-sha256", "-set_serial", "0x" + secrets.token_hex(15), "-extfile", "openssl.cnf",
                        "-extensions", kind], tmp, alt)
        return crt, key
    return _with_tmp(make)


def is_cert(pem):
    if not pem or "BEGIN CERTIFICATE" not in pem:
        return False
    return _with_tmp(lambda tmp: _probe(["x509", "-noout", "-in", _write(tmp, "c.pem", pem)], tmp))


def is_key(pem):
    if not pem or "PRIVATE KEY" not in pem:
        return False
    return _with_tmp(lambda tmp: _probe(["pkey", "-noout", "-in", _write(tmp, "k.pem", pem)], tmp))


def _probe(args, tmp):
    try:
        _openssl(args, tmp)
        return True
    except CertError:
        return False


def complete_bootstrap_certs(files):
    """k3s's bootstrap certificates (server-ca, client-ca, client-admin), keeping every one that is a real
    certificate and key and making the others. Returns (files, names made). An older stand-in's placeholder PEM
    text is replaced, which gives the cluster a new CA (and token hash)."""
    out = dict(files)
    made = []
    stamp = int(time.time())
    for ca in ("server-ca", "client-ca"):
        if not (is_cert(out.get(ca + ".crt")) and is_key(out.get(ca + ".key"))):
            out[ca + ".crt"], out[ca + ".key"] = new_ca("k3s-%s@%d" % (ca, stamp))
            made.append(ca)
    if "client-ca" in made or not (is_cert(out.get("client-admin.crt")) and is_key(out.get("client-admin.key"))):
        crt, key = new_leaf(out["client-ca.crt"], out["client-ca.key"], "/O=system:masters/CN=system:admin", "client")
        # as k3s writes it: the admin certificate followed by the CA that signed it
        out["client-admin.crt"], out["client-admin.key"] = crt + out["client-ca.crt"], key
        made.append("client-admin")
    return out, made


def serving_sans(node_name, hostname, addresses, tls_sans):
    """The API's subjectAltNames as k3s gives them: its service names and addresses, this node's, every tls-san."""
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
           "localhost"]
    ips = ["10.43.0.1", "127.0.0.1", "::1"]
    for v in [node_name, hostname] + list(addresses) + list(tls_sans):
        v = (v or "").strip()
        if not v:
            continue
        if re.fullmatch(r"[0-9.]+", v) or ":" in v:
            ips.append(v)
        else:
            dns.append(v.lower())
    seen = []
    for s in ["DNS:" + d for d in dns] + ["IP:" + i for i in ips]:
        if s not in seen:
            seen.append(s)
    return seen


def ensure_serving_cert(tls_dir, ca_crt, ca_key, sans, write_file, read_text):
    """tls/serving-kube-apiserver.crt/.key, made again when the CA or the wanted names changed (k3s's dynamic
    listener adds names as it sees them; the stand-in makes the set at start). Returns (cert path, key path)."""
    crt_p = os.path.join(tls_dir, "serving-kube-apiserver.crt")
    key_p = os.path.join(tls_dir, "serving-kube-apiserver.key")
    stamp_p = os.path.join(tls_dir, "serving-kube-apiserver.sans")
    stamp = "%s\n%s\n" % (hashlib.sha256(ca_crt.encode()).hexdigest(), "\n".join(sans))
    if read_text(stamp_p) == stamp and read_text(crt_p) and read_text(key_p):
        return crt_p, key_p, False
    crt, key = new_leaf(ca_crt, ca_key, "/O=k3s/CN=k3s", "server", sans)
    write_file(key_p, key, 0o600)
    write_file(crt_p, crt + ca_crt, 0o644)
    write_file(stamp_p, stamp, 0o644)
    return crt_p, key_p, True


def server_context(crt_path, key_path, client_ca_pem):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(crt_path, key_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=client_ca_pem)
    return ctx


# ---------------------------------------------------------------------------------------------------------
# discovery

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# subresources kubectl looks for; eviction is how `kubectl drain` evicts (policy/v1 Eviction)
SUBRESOURCES = {
    ("", "Pod"): [("status", None, ["get", "patch", "update"]),
                  ("eviction", ("policy", "v1", "Eviction"), ["create"])],
    ("", "Node"): [("status", None, ["get", "patch", "update"])],
    ("", "Namespace"): [("status", None, ["get", "patch", "update"]), ("finalize", None, ["update"])],
    ("apps", "Deployment"): [("status", None, ["get", "patch", "update"]), ("scale", ("autoscaling", "v1", "Scale"),
                                                                           ["get", "patch", "update"])],
    ("apps", "StatefulSet"): [("status", None, ["get", "patch", "update"]), ("scale", ("autoscaling", "v1", "Scale"),
                                                                            ["get", "patch", "update"])],
    ("apps", "DaemonSet"): [("status", None, ["get", "patch", "update"])],
}


# Groups a cluster serves only once their CustomResourceDefinitions exist (Flux's, installed by `flux bootstrap`;
# external-secrets' and cert-manager's, installed by their Helm charts): as a real API server, which serves a
# custom resource only while its CRD does. The k3s groups (helm.cattle.io, k3s.cattle.io) are built into k3s.
CRD_GROUPS = ("source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io", "helm.toolkit.fluxcd.io",
              "notification.toolkit.fluxcd.io", "image.toolkit.fluxcd.io", "source.extensions.fluxcd.io",
              "external-secrets.io", "cert-manager.io")


def resources():
    """Every resource the server serves: the stand-in's built-in table (a custom resource only while its CRD
    exists) and any other kind stored by apply."""
    crds = {o["metadata"]["name"] for o in _cluster.store.list("apiextensions.k8s.io", "CustomResourceDefinition")}
    out = [r for r in BUILTIN if r.group not in CRD_GROUPS or "%s.%s" % (r.plural, r.group) in crds]
    known = {(r.group, r.kind) for r in BUILTIN}
    for grp, kind, namespaced in _cluster.store.kinds():
        if (grp, kind) in known or grp in CRD_GROUPS:
            continue
        objs = _cluster.store.list(grp, kind)[:1]
        ver = split_api_version(objs[0]["apiVersion"])[1] if objs else "v1"
        out.append(Res(kind, grp, ver, pluralize(kind), bool(namespaced)))
        known.add((grp, kind))
    return out


def group_versions():
    """{group: [versions]} in a stable order, the preferred version first (v1 over v1beta3)."""
    gv = {}
    for r in resources():
        vs = gv.setdefault(r.group, [])
        if r.version not in vs:
            vs.append(r.version)
    for g in gv:
        gv[g].sort(key=_version_rank)
    return gv


def _version_rank(v):
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
    if not m:
        return (3, v)
    return ({None: 0, "beta": 1, "alpha": 2}[m.group(2)], -int(m.group(1)), -int(m.group(3) or 0))


def api_resource_list(group, version):
    items = []
    for r in resources():
        if r.group != group or r.version != version:
            continue
        entry = {"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": list(VERBS)}
        if r.short:
            entry["shortNames"] = list(r.short)
        items.append(entry)
        for sub, kind, verbs in SUBRESOURCES.get((r.group, r.kind), []):
            s = {"name": "%s/%s" % (r.plural, sub), "singularName": "", "namespaced": r.namespaced,
                 "kind": kind[2] if kind else r.kind, "verbs": verbs}
            if kind:
                s["group"], s["version"] = kind[0], kind[1]
            items.append(s)
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "%s/%s" % (group, version) if group else version,
            "resources": items}


def aggregated(legacy_core):
    """apidiscovery.k8s.io/v2 APIGroupDiscoveryList: of the core group (/api) or of the named groups (/apis)."""
    items = []
    for group, versions in group_versions().items():
        if (group == "") != legacy_core:
            continue
        vlist = []
        for v in versions:
            res = []
            for r in resources():
                if r.group != group or r.version != v:
                    continue
                e = {"resource": r.plural, "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                     "scope": "Namespaced" if r.namespaced else "Cluster", "singularResource": r.kind.lower(),
                     "verbs": list(VERBS)}
                if r.short:
                    e["shortNames"] = list(r.short)
                subs = []
                for sub, kind, verbs in SUBRESOURCES.get((r.group, r.kind), []):
                    g, ver, k = kind if kind else (r.group, r.version, r.kind)
                    subs.append({"subresource": sub, "responseKind": {"group": g, "version": ver, "kind": k},
                                 "verbs": verbs})
                if subs:
                    e["subresources"] = subs
                res.append(e)
            vlist.append({"version": v, "resources": res, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": vlist})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


def api_group_list():
    groups = []
    for group, versions in group_versions().items():
        if not group:
            continue
        vs = [{"groupVersion": "%s/%s" % (group, v), "version": v} for v in versions]
        groups.append({"name": group, "versions": vs, "preferredVersion": vs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


# OpenAPI v3, only as much as kubectl reads: `kubectl apply` (field validation "Strict", its default) asks
# /openapi/v3 which group-versions exist and, for the kind it sends, whether PATCH takes the fieldValidation
# parameter; when it does, kubectl leaves validation to the server (which here checks nothing) instead of
# downloading the whole OpenAPI schema.

def openapi_root():
    paths = {}
    for group, versions in group_versions().items():
        for v in versions:
            p = "api/%s" % v if not group else "apis/%s/%s" % (group, v)
            paths[p] = {"serverRelativeURL": "/openapi/v3/%s?hash=%s" % (p, _gv_hash(group, v))}
    return {"paths": paths}


def _gv_hash(group, version):
    names = sorted(r.plural for r in resources() if r.group == group and r.version == version)
    return hashlib.sha512(json.dumps([group, version, names]).encode()).hexdigest()[:128].upper()


def openapi_gv(group, version):
    paths = {}
    params = [{"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
              for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
    schemas = {}
    for r in resources():
        if r.group != group or r.version != version:
            continue
        gvk = {"group": group, "version": version, "kind": r.kind}
        base = ("/api/%s" % version) if not group else "/apis/%s/%s" % (group, version)
        item = base + ("/namespaces/{namespace}/" if r.namespaced else "/") + r.plural + "/{name}"
        coll = base + ("/namespaces/{namespace}/" if r.namespaced else "/") + r.plural
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/%s" % _schema_name(r)}}}}
        paths[item] = {
            "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": {"200": ref}},
            "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "responses": {"200": ref},
                    "parameters": params},
            "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                      "responses": {"200": ref}, "parameters": params},
            "delete": {"x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk,
                       "responses": {"200": ref}},
        }
        paths[coll] = {
            "get": {"x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": {"200": ref}},
            "post": {"x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk,
                     "responses": {"201": ref}, "parameters": params},
        }
        schemas[_schema_name(r)] = {"type": "object", "x-kubernetes-group-version-kind": [gvk],
                                    "x-kubernetes-preserve-unknown-fields": True}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (k3s stand-in)", "version": _cluster.version},
            "paths": paths, "components": {"schemas": schemas}}


def _schema_name(r):
    g = r.group or "core"
    return "io.k8s.standin.%s.%s.%s" % (g, r.version, r.kind)


# ---------------------------------------------------------------------------------------------------------
# selectors and patches

def field_selector_match(obj, selector):
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"([A-Za-z.]+)\s*(!=|==|=)\s*(.*)", term)
        if not m:
            raise ApiError(400, "BadRequest", 'unable to parse requirement: invalid field selector "%s"' % term)
        path, op, want = m.groups()
        cur = obj
        for p in path.split("."):
            cur = cur.get(p) if isinstance(cur, dict) else None
        have = "" if cur is None else str(cur)
        if (have == want) != (op != "!="):
            return False
    return True


def label_selector_match(labels, selector):
    """Equality, set-based (in, notin) and existence requirements, as labels.Parse reads them."""
    if not selector:
        return True
    labels = labels or {}
    for term in _split_selector(selector):
        m = re.fullmatch(r"\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            has = m.group(1) in labels and labels[m.group(1)] in values
            if (m.group(2) == "in") != has:
                return False
            continue
        if not equality_selector_match(labels, term):
            return False
    return True


def _split_selector(s):
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(target, patch):
    """A strategic merge patch as a merge patch, honouring its directives ($patch, $retainKeys, ...): every field
    the product patches (labels, annotations, spec.unschedulable, spec.taints, which has no merge key) merges the
    same way. Lists with merge keys (containers by name) are replaced, not merged: a stand-in shortcut."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        else:
            nv = strategic_merge_patch(out.get(k), v)
            if nv is None:
                out.pop(k, None)
            else:
                out[k] = nv
    return out


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", "json patch: invalid path %r" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target, ops):
    """RFC 6902: add, remove, replace, test, copy, move."""
    doc = copy.deepcopy(target)
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch: expected a list of operations")

    def walk(parts):
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(parts):
        cur = doc
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    for op in ops:
        try:
            kind = op["op"]
            parts = _pointer(op.get("path", ""))
            if kind == "test":
                if get(parts) != op.get("value"):
                    raise ApiError(422, "Invalid", "json patch: test failed at %s" % op["path"])
                continue
            if kind in ("copy", "move"):
                value = copy.deepcopy(get(_pointer(op["from"])))
                if kind == "move":
                    parent, last = walk(_pointer(op["from"]))
                    del parent[int(last) if isinstance(parent, list) else last]
                kind, op = "add", dict(op, value=value)
            parent, last = walk(parts)
            if kind == "add":
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            else:
                raise ApiError(400, "BadRequest", "json patch: unknown operation %r" % kind)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: "
                                "json patch %s operation does not apply: doc is missing path: \"%s\""
                                % (op.get("op"), op.get("path")))
    return doc


# ---------------------------------------------------------------------------------------------------------
# protobuf request bodies: kubectl's typed clients (create namespace, create secret, drain's evictions) send
# built-in objects as application/vnd.kubernetes.protobuf: the magic "k8s\0", then a runtime.Unknown holding
# apiVersion/kind and the object's own bytes. Only the fields these requests carry are read; a body with another
# kind is refused (415), never guessed at. Field numbers are those of the Kubernetes API's generated.proto.

PROTOBUF = "application/vnd.kubernetes.protobuf"
_STR, _BYTES, _BOOL = "string", "bytes", "bool"
_MAP_SS = ("map", _STR)
_MAP_SB = ("map", _BYTES)
_OBJECT_META = {1: ("name", _STR), 2: ("generateName", _STR), 3: ("namespace", _STR),
                11: ("labels", _MAP_SS), 12: ("annotations", _MAP_SS), 14: ("finalizers", ("list", _STR))}
_PROTO_KINDS = {
    ("v1", "Namespace"): {1: ("metadata", _OBJECT_META), 2: ("spec", {1: ("finalizers", ("list", _STR))})},
    ("v1", "Secret"): {1: ("metadata", _OBJECT_META), 2: ("data", _MAP_SB), 3: ("type", _STR),
                       4: ("stringData", _MAP_SS), 5: ("immutable", _BOOL)},
    ("v1", "ConfigMap"): {1: ("metadata", _OBJECT_META), 2: ("data", _MAP_SS), 3: ("binaryData", _MAP_SB),
                          4: ("immutable", _BOOL)},
    ("policy/v1", "Eviction"): {1: ("metadata", _OBJECT_META)},
}


def _varint(b, i):
    n = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def _fields(b):
    """(field number, wire type, value) of a protobuf message; value is an int or bytes."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wt)
        yield num, wt, v


def _decode(b, schema):
    out = {}
    for num, wt, v in _fields(b):
        if num not in schema:
            continue  # fields the stand-in does not read (status, ownerReferences, deleteOptions...)
        name, typ = schema[num]
        if typ in (_STR, _BOOL) and not v:
            continue  # proto2 optional scalars arrive even when empty; JSON would leave them out
        if typ == _STR:
            out[name] = v.decode("utf-8")
        elif typ == _BYTES:
            out[name] = b64(v)
        elif typ == _BOOL:
            out[name] = bool(v)
        elif isinstance(typ, dict):
            out[name] = _decode(v, typ)
        elif typ[0] == "list":
            out.setdefault(name, []).append(v.decode("utf-8"))
        elif typ[0] == "map":
            entry = {n: val for n, _, val in _fields(v)}
            key = entry.get(1, b"").decode("utf-8")
            val = entry.get(2, b"")
            out.setdefault(name, {})[key] = b64(val) if typ[1] == _BYTES else val.decode("utf-8")
    return out


def decode_protobuf(raw):
    if raw[:4] != b"k8s\x00":
        raise ApiError(400, "BadRequest", "protobuf body without the k8s envelope")
    try:
        env = {n: v for n, _, v in _fields(raw[4:])}
        tm = {n: v.decode() for n, _, v in _fields(env.get(1, b""))}
        api_version, kind = tm.get(1, ""), tm.get(2, "")
        schema = _PROTO_KINDS.get((api_version, kind))
        if schema is None:
            raise ApiError(415, "UnsupportedMediaType", "the k3s stand-in reads protobuf bodies of %s only, not "
                                "%s %s" % (", ".join(k for _, k in _PROTO_KINDS), api_version, kind))
        obj = {"apiVersion": api_version, "kind": kind}
        obj.update(_decode(env.get(2, b""), schema))
        return obj
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "BadRequest", "malformed protobuf body: %s" % e)


# ---------------------------------------------------------------------------------------------------------
# the REST handler

_cluster = None


def attach(cluster):
    global _cluster
    _cluster = cluster


def status(code, reason, message, details=None):
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
          "reason": reason, "code": code}
    if details:
        st["details"] = details
    return st


class Request:
    def __init__(self, handler, method):
        self.h = handler
        self.method = method
        u = urllib.parse.urlsplit(handler.path)
        self.path = u.path
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(u.query, keep_blank_values=True).items()}
        self.accept = handler.headers.get("Accept", "")
        self.ctype = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        self._body = None

    def body_bytes(self):
        if self._body is None:
            n = int(self.h.headers.get("Content-Length") or 0)
            self._body = self.h.rfile.read(n) if n else b""
        return self._body

    def json(self):
        raw = self.body_bytes()
        if self.ctype == PROTOBUF:
            return decode_protobuf(raw)
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format - accepted "
                                "media types include: application/json, application/yaml")


def authenticated(handler):
    """The client certificate's subject when the TLS handshake verified one against the client CA."""
    try:
        cert = handler.connection.getpeercert()
    except (AttributeError, ValueError):
        return None
    if not cert:
        return None
    subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
    return subject.get("commonName") or "unknown"


def handle(handler, method):
    """Serve one request of the Kubernetes REST API on a TLS connection. Returns (code, body, content type)."""
    req = Request(handler, method)
    req.body_bytes()  # always read, so the next request on this kept-alive connection starts where it should
    try:
        return _route(req)
    except ApiError as e:
        details = getattr(e, "details", None)
        return e.code, status(e.code, e.reason, e.message, details), "application/json"


def _route(req):
    path = req.path.rstrip("/") or "/"
    if path in ("/healthz", "/livez", "/readyz", "/ping"):
        return 200, "ok", "text/plain"
    if authenticated(req.h) is None:
        return 401, status(401, "Unauthorized", "Unauthorized"), "application/json"
    if path == "/version":
        v = _cluster.version
        m = re.match(r"v(\d+)\.(\d+)", v)
        return 200, {"major": m.group(1) if m else "1", "minor": m.group(2) if m else "34", "gitVersion": v,
                     "gitCommit": short_commit(v), "gitTreeState": "clean", "buildDate": "2025-12-01T00:00:00Z",
                     "goVersion": GO_VERSION, "compiler": "gc", "platform": "linux/%s" % go_arch()}, \
            "application/json"
    wants_aggregated = "as=APIGroupDiscoveryList" in req.accept and "v=v2" in req.accept
    agg_type = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    if path == "/api":
        if wants_aggregated:
            return 200, aggregated(True), agg_type
        return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": req.h.server.server_address[0] + ":%d" %
             req.h.server.server_address[1]}]}, "application/json"
    if path == "/apis":
        if wants_aggregated:
            return 200, aggregated(False), agg_type
        return 200, api_group_list(), "application/json"
    if path == "/api/v1" and req.method == "GET":
        return 200, api_resource_list("", "v1"), "application/json"
    if path == "/openapi/v3":
        return 200, openapi_root(), "application/json"
    if path == "/openapi/v2":
        # An empty OpenAPI v2 document (the protobuf kubectl asks for; an empty message is zero bytes): kubectl's
        # client-side validation, which it uses for what v3's fieldValidation does not cover (a kind: List, a kind
        # the server does not serve), finds no schema and leaves the object to the server, which then answers.
        return 200, b"", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    m = re.fullmatch(r"/openapi/v3/api/([^/]+)", path)
    n = re.fullmatch(r"/openapi/v3/apis/([^/]+)/([^/]+)", path)
    if m or n:
        group, version = ("", m.group(1)) if m else (n.group(1), n.group(2))
        if version not in group_versions().get(group, []):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return 200, openapi_gv(group, version), "application/json"
    parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    elif parts[0] == "apis" and len(parts) == 2:
        vs = group_versions().get(parts[1])
        if not vs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        v = [{"groupVersion": "%s/%s" % (parts[1], x), "version": x} for x in vs]
        return 200, {"kind": "APIGroup", "apiVersion": "v1", "name": parts[1], "versions": v,
                     "preferredVersion": v[0]}, "application/json"
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if version not in group_versions().get(group, []):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if not rest:
        return 200, api_resource_list(group, version), "application/json"
    return _resource(req, group, version, rest)


def _find(group, version, plural):
    for r in resources():
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None


def _resource(req, group, version, rest):
    ns = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        ns, rest = rest[1], rest[2:]
    res = _find(group, version, rest[0])
    if res is None or (ns is not None and not res.namespaced) or len(rest) > 3:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if name is None:
        if req.method == "GET":
            if req.query.get("watch") in ("1", "true"):
                raise ApiError(405, "MethodNotAllowed", "watch is not supported by the k3s stand-in")
            listed = _list(res, ns, req.query)
            if _wants_table(req):
                return 200, _table(res, listed["items"], listed["metadata"]["resourceVersion"]), "application/json"
            return 200, listed, "application/json"
        if req.method == "POST":
            if res.namespaced and ns is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _create(res, ns, req.json(), req.query)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    if res.namespaced and ns is None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    sns = ns or ""
    if sub == "eviction" and res.kind == "Pod" and res.group == "" and req.method == "POST":
        return _evict(res, sns, name)
    if sub not in (None, "status"):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if req.method == "GET":
        obj = _cluster.store.get(res.group, res.kind, sns, name)
        if obj is None:
            raise _not_found(res, name)
        if _wants_table(req):
            return 200, _table(res, [_out(obj)], obj["metadata"].get("resourceVersion", "")), "application/json"
        return 200, _out(obj), "application/json"
    if sub == "status":
        raise ApiError(405, "MethodNotAllowed", "writing the status subresource is not supported by the k3s "
                            "stand-in")
    if req.method == "PUT":
        return _update(res, sns, name, req.json())
    if req.method == "PATCH":
        return _patch(res, sns, name, req)
    if req.method == "DELETE":
        return _delete(res, sns, name)
    raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def _wants_table(req):
    return "as=Table" in req.accept and "g=meta.k8s.io" in req.accept


def _table(res, items, rv):
    """meta.k8s.io/v1 Table, as the apiserver prints for kubectl's default and -o wide output: the columns of
    tables.py (kubectl shows the priority-1 ones with -o wide and adds NAMESPACE for -A itself)."""
    headers, rows, wide_from = table_columns(res.to_json(), items, True)
    cols = [{"name": h.title() if h != "NAME" else "Name", "type": "string", "format": "name" if i == 0 else "",
             "description": "", "priority": 0 if i < wide_from else 1} for i, h in enumerate(headers)]
    out_rows = []
    for o, r in zip(items, rows):
        out_rows.append({"cells": r, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": o["metadata"]}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": cols, "rows": out_rows}


def _not_found(res, name):
    e = ApiError(404, "NotFound", '%s "%s" not found' % (res.qualified, name))
    e.details = {"name": name, "group": res.group, "kind": res.plural} if res.group else \
        {"name": name, "kind": res.plural}
    return e


def _out(obj):
    out = copy.deepcopy(_cluster.view(obj))
    if out.get("kind") == "PodDisruptionBudget" and out.get("apiVersion") == "policy/v1":
        # the disruption controller's status, computed when read
        md = out["metadata"]
        out["status"] = disruption_status(out, _cluster.store.list("", "Pod", md.get("namespace")))[1]
    return out


def _current_rv():
    with _cluster.store.lock:
        row = _cluster.store.db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
    return row[0] if row else "1"


def _list(res, ns, query):
    items = []
    stored = _cluster.store.list(res.group, res.kind, ns if res.namespaced else None)
    for o in stored:
        if not label_selector_match(o["metadata"].get("labels"), query.get("labelSelector")):
            continue
        v = _out(o)
        if not field_selector_match(v, query.get("fieldSelector")):
            continue
        items.append(v)
    return {"apiVersion": res.api_version, "kind": res.kind + "List", "metadata": {"resourceVersion": _current_rv()},
            "items": items}


def _check_body(res, obj, ns, name=None):
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the body of the request is not an object")
    if obj.get("kind") and obj.get("kind") != res.kind:
        raise ApiError(400, "BadRequest", "the API version in the data (%s) does not match the expected API "
                            "version (%s)" % (obj.get("apiVersion"), res.api_version))
    obj = copy.deepcopy(obj)
    obj.setdefault("apiVersion", res.api_version)
    obj.setdefault("kind", res.kind)
    md = obj.setdefault("metadata", {})
    if name is not None:
        if md.get("name") and md["name"] != name:
            raise ApiError(400, "BadRequest", "the name of the object (%s) does not match the name on the URL "
                                "(%s)" % (md["name"], name))
        md["name"] = name
    if res.namespaced:
        if md.get("namespace") and md["namespace"] != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                "namespace sent on the request")
        md["namespace"] = ns
    return obj


def _create(res, ns, body, query):
    obj = _check_body(res, body, ns)
    if not obj["metadata"].get("name") and obj["metadata"].get("generateName"):
        obj["metadata"]["name"] = obj["metadata"]["generateName"] + secrets.token_hex(3)[:5]
    if res.kind == "Namespace" and res.group == "":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")
        if not (obj.get("spec") or {}).get("finalizers"):
            obj["spec"] = {"finalizers": ["kubernetes"]}
    if query.get("dryRun"):
        return 201, obj, "application/json"
    r = _cluster.apply_one(obj, ns, mode="create")
    return 201, _out(r["object"]), "application/json"


def _update(res, ns, name, body):
    obj = _check_body(res, body, ns, name)
    r = _cluster.apply_one(obj, ns, mode="update")
    return 200, _out(r["object"]), "application/json"


def _patch(res, ns, name, req):
    if req.ctype == "application/apply-patch+yaml":
        try:
            obj = yaml.safe_load(req.body_bytes().decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ApiError(400, "BadRequest", "error decoding YAML: %s" % e)
        obj = _check_body(res, obj, ns, name)
        if not obj.get("apiVersion") or not obj.get("kind"):
            raise ApiError(400, "BadRequest", "apiVersion and kind must be set in an apply patch")
        r = _cluster.apply_one(obj, ns, mode="apply")
        return (201 if r["result"] == "created" else 200), _out(r["object"]), "application/json"
    patch = req.json()
    if req.ctype == "application/merge-patch+json":
        fn = merge_patch
    elif req.ctype == "application/strategic-merge-patch+json":
        if not (res.group in ("", "apps", "batch", "policy", "networking.k8s.io", "storage.k8s.io",
                              "rbac.authorization.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io")):
            raise ApiError(415, "UnsupportedMediaType", "strategic merge patch is not supported for %s" %
                                res.qualified)
        fn = strategic_merge_patch
    elif req.ctype == "application/json-patch+json":
        fn = json_patch
    else:
        raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                            "accepted media types include: application/json-patch+json, application/merge-patch+json, "
                            "application/apply-patch+yaml, application/strategic-merge-patch+json")
    store = _cluster.store
    with store.txn():
        live = store.get(res.group, res.kind, ns, name)
        if live is None:
            raise _not_found(res, name)
        patched = fn(live, patch)
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise ApiError(422, "Invalid", "the patch removed the object's metadata")
        want_rv = patched["metadata"].get("resourceVersion")
        if want_rv and want_rv != live["metadata"].get("resourceVersion"):
            raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the object has been '
                                'modified; please apply your changes to the latest version and try again'
                                % (res.qualified, name))
        patched["apiVersion"], patched["kind"] = live["apiVersion"], live["kind"]
        patched["metadata"]["name"] = name
        if res.namespaced:
            patched["metadata"]["namespace"] = ns
        for k in SYSTEM_META:
            if k in live["metadata"]:
                patched["metadata"][k] = live["metadata"][k]
            else:
                patched["metadata"].pop(k, None)
        if "status" in live:
            patched["status"] = live["status"]
        else:
            patched.pop("status", None)
        for k in ("labels", "annotations"):
            if k in patched["metadata"] and not patched["metadata"][k]:
                patched["metadata"].pop(k)
        if patched == live:
            return 200, _out(live), "application/json"
        if live.get("spec") != patched.get("spec") and "generation" in live["metadata"]:
            patched["metadata"]["generation"] = int(live["metadata"]["generation"]) + 1
        store.put(patched)
    return 200, _out(patched), "application/json"


def _delete(res, ns, name):
    if res.kind == "Namespace" and res.group == "" and name in ("default", "kube-system", "kube-public"):
        raise ApiError(403, "Forbidden", 'namespaces "%s" is forbidden: this namespace may not be deleted' % name)
    live = _cluster.store.get(res.group, res.kind, ns, name)
    if live is None:
        raise _not_found(res, name)
    _cluster.delete_object(res, ns, name)
    return 200, _out(live), "application/json"


def _selector_matches(selector, labels):
    """A metav1.LabelSelector (matchLabels, matchExpressions) against a pod's labels; {} matches every pod."""
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values or op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels or op == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _scaled(value, total, round_up):
    """An IntOrString of a PDB: an int, or a percentage of total (rounded up for minAvailable and
    maxUnavailable, as the disruption controller does)."""
    if isinstance(value, str) and value.endswith("%"):
        pct = int(value[:-1])
        return -(-total * pct // 100) if round_up else total * pct // 100
    return int(value)


def disruption_status(pdb, pods):
    """What the disruption controller writes into a PodDisruptionBudget's status, computed from the pods its
    selector picks (their count stands for the controllers' scale): expected, healthy, desired, allowed."""
    spec = pdb.get("spec") or {}
    selector = spec.get("selector")
    picked = [p for p in pods if selector is not None and _selector_matches(selector, p["metadata"].get("labels"))]
    expected = len(picked)
    healthy = sum(1 for p in picked if _pod_ready(p))
    if spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected, True))
    else:
        desired = _scaled(spec.get("minAvailable", 1), expected, True)
    return picked, {"expectedPods": expected, "currentHealthy": healthy, "desiredHealthy": desired,
                    "disruptionsAllowed": max(0, healthy - desired),
                    "observedGeneration": pdb["metadata"].get("generation", 1)}


def _evict(res, ns, name):
    """policy/v1 Eviction, as the apiserver's eviction REST does it: a pod that is not Running (or not Ready while
    its budget has no room) aside, the PodDisruptionBudget whose selector picks the pod must allow a disruption,
    else 429 with the apiserver's text; more than one budget for a pod is refused (500). Then the pod is deleted."""
    store = _cluster.store
    with store.lock:  # the check and the delete as one step (every write takes this lock)
        pod = store.get("", "Pod", ns, name)
        if pod is None:
            raise _not_found(res, name)
        if (pod.get("status") or {}).get("phase") == "Running":
            pods = store.list("", "Pod", ns)
            budgets = [b for b in store.list("policy", "PodDisruptionBudget", ns)
                       if (b.get("spec") or {}).get("selector") is not None and
                       _selector_matches(b["spec"]["selector"], pod["metadata"].get("labels"))]
            if len(budgets) > 1:
                raise ApiError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the "
                               "eviction subresource does not support.")
            if budgets:
                _, st = disruption_status(budgets[0], pods)
                if _pod_ready(pod) and st["disruptionsAllowed"] < 1 or \
                        not _pod_ready(pod) and st["currentHealthy"] < st["desiredHealthy"]:
                    e = ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's "
                                 "disruption budget.")
                    e.details = {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget %s "
                                             "needs %d healthy pods and has %d currently" %
                                             (budgets[0]["metadata"]["name"], st["desiredHealthy"],
                                              st["currentHealthy"])}]}
                    raise e
        _cluster.delete_object(res, ns, name)
    return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, \
        "application/json"
