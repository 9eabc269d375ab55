# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for k3s's datastore (kine over SQLite): which kinds exist (resources, plural names, groups,
# scope), the SQLite store of objects, leases and bootstrap data (sealed with the token as k3s does), and the
# object helpers the API server and controllers share (normalisation, the server-side apply merge, selectors).

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time

from common import NOT_READY_AFTER


class Res:
    def __init__(self, kind, group, version, plural, namespaced, short=()):
        self.kind = kind
        self.group = group
        self.version = version
        self.plural = plural
        self.namespaced = namespaced
        self.short = tuple(short)

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified(self):
        return self.plural + ("." + self.group if self.group else "")

    @property
    def singular(self):
        return self.kind.lower() + ("." + self.group if self.group else "")

    def to_json(self):
        return {"kind": self.kind, "group": self.group, "version": self.version, "plural": self.plural,
                "namespaced": self.namespaced}


BUILTIN = [
    Res("Node", "", "v1", "nodes", False, ["no"]),
    Res("Namespace", "", "v1", "namespaces", False, ["ns"]),
    Res("Secret", "", "v1", "secrets", True),
    Res("ConfigMap", "", "v1", "configmaps", True, ["cm"]),
    Res("Service", "", "v1", "services", True, ["svc"]),
    Res("Pod", "", "v1", "pods", True, ["po"]),
    Res("ServiceAccount", "", "v1", "serviceaccounts", True, ["sa"]),
    Res("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", True, ["pvc"]),
    Res("PersistentVolume", "", "v1", "persistentvolumes", False, ["pv"]),
    Res("Event", "", "v1", "events", True, ["ev"]),
    Res("Endpoints", "", "v1", "endpoints", True, ["ep"]),
    Res("Deployment", "apps", "v1", "deployments", True, ["deploy"]),
    Res("DaemonSet", "apps", "v1", "daemonsets", True, ["ds"]),
    Res("StatefulSet", "apps", "v1", "statefulsets", True, ["sts"]),
    Res("ReplicaSet", "apps", "v1", "replicasets", True, ["rs"]),
    Res("Job", "batch", "v1", "jobs", True),
    Res("CronJob", "batch", "v1", "cronjobs", True, ["cj"]),
    Res("Ingress", "networking.k8s.io", "v1", "ingresses", True, ["ing"]),
    Res("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True, ["netpol"]),
    Res("StorageClass", "storage.k8s.io", "v1", "storageclasses", False, ["sc"]),
    Res("CustomResourceDefinition", "apiextensions.k8s.io", "v1", "customresourcedefinitions", False,
        ["crd", "crds"]),
    Res("ClusterRole", "rbac.authorization.k8s.io", "v1", "clusterroles", False),
    Res("ClusterRoleBinding", "rbac.authorization.k8s.io", "v1", "clusterrolebindings", False),
    Res("Role", "rbac.authorization.k8s.io", "v1", "roles", True),
    Res("RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings", True),
    Res("Lease", "coordination.k8s.io", "v1", "leases", True),
    Res("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets", True, ["pdb"]),
    Res("HelmChart", "helm.cattle.io", "v1", "helmcharts", True),
    Res("HelmChartConfig", "helm.cattle.io", "v1", "helmchartconfigs", True),
    Res("Addon", "k3s.cattle.io", "v1", "addons", True),
    Res("GitRepository", "source.toolkit.fluxcd.io", "v1", "gitrepositories", True, ["gitrepo"]),
    Res("HelmRepository", "source.toolkit.fluxcd.io", "v1", "helmrepositories", True, ["helmrepo"]),
    Res("OCIRepository", "source.toolkit.fluxcd.io", "v1", "ocirepositories", True, ["ocirepo"]),
    Res("HelmChart", "source.toolkit.fluxcd.io", "v1", "helmcharts", True, ["hc"]),
    Res("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations", True, ["ks"]),
    Res("HelmRelease", "helm.toolkit.fluxcd.io", "v2", "helmreleases", True, ["hr"]),
    Res("Alert", "notification.toolkit.fluxcd.io", "v1beta3", "alerts", True),
    Res("Provider", "notification.toolkit.fluxcd.io", "v1beta3", "providers", True),
    Res("Receiver", "notification.toolkit.fluxcd.io", "v1", "receivers", True),
    Res("ExternalSecret", "external-secrets.io", "v1", "externalsecrets", True, ["es"]),
    Res("SecretStore", "external-secrets.io", "v1", "secretstores", True, ["ss"]),
    Res("ClusterSecretStore", "external-secrets.io", "v1", "clustersecretstores", False, ["css"]),
    Res("ClusterExternalSecret", "external-secrets.io", "v1", "clusterexternalsecrets", False, ["ces"]),
    Res("Certificate", "cert-manager.io", "v1", "certificates", True, ["cert", "certs"]),
    Res("Issuer", "cert-manager.io", "v1", "issuers", True),
    Res("ClusterIssuer", "cert-manager.io", "v1", "clusterissuers", False),
]


# kubectl prefers core and well-known groups when a short name is ambiguous (helmcharts -> helm.cattle.io).
_BUILTIN_BY_GK = {}


for _r in BUILTIN:
    _BUILTIN_BY_GK.setdefault((_r.group, _r.kind), _r)


def pluralize(kind):
    k = kind.lower()
    if k.endswith("y") and k[-2:-1] not in "aeiou":
        return k[:-1] + "ies"
    if k.endswith(("s", "x", "ch", "sh")):
        return k + "es"
    return k + "s"


def split_api_version(api_version):
    g, sep, v = (api_version or "").rpartition("/")
    return (g, v) if sep else ("", api_version or "")


def res_for(group, kind, version="v1"):
    r = _BUILTIN_BY_GK.get((group, kind))
    if r:
        return r
    namespaced = not kind.startswith("Cluster")
    return Res(kind, group, version, pluralize(kind), namespaced)


class NotFound(Exception):
    pass


class ApiError(Exception):
    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self):
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


class Store:
    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.txn():
            self.db.execute("CREATE TABLE IF NOT EXISTS objects (grp TEXT NOT NULL, kind TEXT NOT NULL, "
                            "namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, "
                            "PRIMARY KEY (grp, kind, namespace, name))")
            self.db.execute("CREATE TABLE IF NOT EXISTS leases (node TEXT PRIMARY KEY, renewed REAL NOT NULL, "
                            "since REAL NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS bootstrap (id INTEGER PRIMARY KEY CHECK (id = 1), "
                            "salt TEXT NOT NULL, tag TEXT NOT NULL, data TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS artifacts (namespace TEXT NOT NULL, name TEXT NOT NULL, "
                            "revision TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (namespace, name))")
            # k3s's own table (kine's schema), so that a datastore of the stand-in looks like k3s's to a backup tool
            # that checks what it copied; the stand-in keeps its objects in the tables above and leaves it empty.
            self.db.execute("CREATE TABLE IF NOT EXISTS kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, "
                            "created INTEGER, deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, "
                            "lease INTEGER, value BLOB, old_value BLOB)")

    @contextlib.contextmanager
    def txn(self):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self):
        with self.lock:
            self.db.close()

    def next_rv(self):
        row = self.db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        rv = int(row[0]) + 1 if row else 1
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))
        return str(rv)

    def get(self, grp, kind, ns, name):
        with self.lock:
            row = self.db.execute("SELECT body FROM objects WHERE grp=? AND kind=? AND namespace=? AND name=?",
                                  (grp, kind, ns or "", name)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, grp, kind, ns=None):
        with self.lock:
            if ns is None:
                rows = self.db.execute("SELECT body FROM objects WHERE grp=? AND kind=? ORDER BY namespace, name",
                                       (grp, kind)).fetchall()
            else:
                rows = self.db.execute("SELECT body FROM objects WHERE grp=? AND kind=? AND namespace=? "
                                       "ORDER BY name", (grp, kind, ns)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def all_objects(self):
        with self.lock:
            rows = self.db.execute("SELECT body FROM objects").fetchall()
        return [json.loads(r[0]) for r in rows]

    def kinds(self):
        with self.lock:
            rows = self.db.execute("SELECT DISTINCT grp, kind, namespace != '' FROM objects").fetchall()
        return rows

    def put(self, obj):
        """Write an object (inside a transaction), stamping its resourceVersion."""
        grp, _ = split_api_version(obj["apiVersion"])
        md = obj["metadata"]
        md["resourceVersion"] = self.next_rv()
        self.db.execute("INSERT OR REPLACE INTO objects (grp, kind, namespace, name, body) VALUES (?,?,?,?,?)",
                        (grp, obj["kind"], md.get("namespace", ""), md["name"], json.dumps(obj)))
        return obj

    def delete(self, grp, kind, ns, name):
        cur = self.db.execute("DELETE FROM objects WHERE grp=? AND kind=? AND namespace=? AND name=?",
                              (grp, kind, ns or "", name))
        return cur.rowcount > 0

    def namespace_exists(self, ns):
        return self.get("", "Namespace", "", ns) is not None

    def lease(self, node):
        with self.lock:
            row = self.db.execute("SELECT renewed, since FROM leases WHERE node=?", (node,)).fetchone()
        return row

    def renew(self, node):
        now = time.time()
        with self.txn():
            row = self.db.execute("SELECT renewed, since FROM leases WHERE node=?", (node,)).fetchone()
            since = row[1] if row and now - row[0] <= NOT_READY_AFTER else now
            self.db.execute("INSERT OR REPLACE INTO leases (node, renewed, since) VALUES (?,?,?)", (node, now, since))

    def artifact(self, ns, name):
        with self.lock:
            row = self.db.execute("SELECT revision, content FROM artifacts WHERE namespace=? AND name=?",
                                  (ns, name)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def set_artifact(self, ns, name, revision, content):
        with self.txn():
            self.db.execute("INSERT OR REPLACE INTO artifacts (namespace, name, revision, content) VALUES (?,?,?,?)",
                            (ns, name, revision, json.dumps(content)))


# bootstrap data (CA, keys) sealed with the token secret, as k3s encrypts its bootstrap data with the token

def _keystream(key, n):
    out = bytearray()
    ctr = 0
    while len(out) < n:
        out += hashlib.sha256(key + ctr.to_bytes(8, "big")).digest()
        ctr += 1
    return bytes(out[:n])


def seal(secret, data):
    salt = secrets.token_bytes(16)
    key = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 20000)
    ct = bytes(a ^ b for a, b in zip(data, _keystream(key, len(data))))
    tag = hmac.new(key, ct, hashlib.sha256).hexdigest()
    return base64.b64encode(salt).decode(), tag, base64.b64encode(ct).decode()


def unseal(secret, salt_b64, tag, data_b64):
    salt = base64.b64decode(salt_b64)
    ct = base64.b64decode(data_b64)
    key = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 20000)
    if not hmac.compare_digest(hmac.new(key, ct, hashlib.sha256).hexdigest(), tag):
        return None
    return bytes(a ^ b for a, b in zip(ct, _keystream(key, len(ct))))


def hash_password(pw):
    salt = secrets.token_hex(8)
    h = hashlib.pbkdf2_hmac("sha256", pw.encode(), salt.encode(), 10000).hex()
    return "$pbkdf2-sha256$10000$%s$%s" % (salt, h)


def check_password(pw, stored):
    try:
        _, alg, it, salt, h = stored.split("$")
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", pw.encode(), salt.encode(), int(it)).hex(), h)
    except ValueError:
        return False


SYSTEM_META = ("uid", "creationTimestamp", "resourceVersion", "generation", "managedFields", "selfLink",
               "deletionTimestamp")


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def normalize_incoming(obj, res):
    """What a client-sent manifest means to the API server: no status, no system metadata, defaults filled."""
    o = copy.deepcopy(obj)
    o.pop("status", None)
    md = o.setdefault("metadata", {})
    for k in SYSTEM_META:
        md.pop(k, None)
    if not md.get("labels"):
        md.pop("labels", None)
    if not md.get("annotations"):
        md.pop("annotations", None)
    if res.kind == "Secret" and res.group == "":
        data = dict(o.get("data") or {})
        for k, v in (o.pop("stringData", None) or {}).items():
            data[k] = b64("" if v is None else str(v))
        if data:
            o["data"] = data
        o.setdefault("type", "Opaque")
    if res.kind == "Namespace" and res.group == "":
        o.setdefault("spec", {"finalizers": ["kubernetes"]})
    return o


def three_way(live, last, new):
    out = dict(live)
    last = last if isinstance(last, dict) else {}
    for k in last:
        if k not in new:
            out.pop(k, None)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(live.get(k), dict):
            out[k] = three_way(live[k], last.get(k), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def content_of(obj):
    """The part of an object a client can change (no status, no system metadata)."""
    o = copy.deepcopy(obj)
    o.pop("status", None)
    md = o.get("metadata", {})
    for k in SYSTEM_META:
        md.pop(k, None)
    return o


def label_selector_match(labels, selector):
    if not selector:
        return True
    labels = labels or {}
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "==" in term or "=" in term:
            k, v = re.split(r"==?", term, maxsplit=1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True
