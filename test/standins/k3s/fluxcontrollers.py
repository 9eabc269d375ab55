# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for Flux's controllers, run inside the server like Flux's controllers run inside the
# cluster. Sources come from a JSON file on the server host (/var/lib/flux-standin/repo.json) that stands in for
# the GitOps repository; see test/standins/README.md.

import copy
import hashlib
import json
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid

from common import STANDIN_NOTE, log, parse_duration, read_text, rfc3339, rp, write_file
from datastore import BUILTIN, SYSTEM_META, content_of, normalize_incoming, res_for, split_api_version


FLUX_REQ = "reconcile.fluxcd.io/requestedAt"


KS_GROUP = "kustomize.toolkit.fluxcd.io"


HR_GROUP = "helm.toolkit.fluxcd.io"


SRC_GROUP = "source.toolkit.fluxcd.io"


REPO_JSON = "/var/lib/flux-standin/repo.json"


# Served by the lab: the stand-in's "GitHub" (see fetch_lab_repo). Left as the marker when not served by the lab.
ARTIFACT_BASE = "@@ARTIFACT_BASE@@"


def _norm_path(p):
    p = (p or "").strip()
    while p.startswith("./"):
        p = p[2:]
    return p.strip("/")


def _norm_url(u):
    u = (u or "").strip().rstrip("/")
    u = re.sub(r"\.git$", "", u)
    m = re.match(r"^(?:ssh://)?git@([^:/]+)[:/](.*)$", u)
    if m:
        return "%s/%s" % (m.group(1), m.group(2))
    return re.sub(r"^https?://", "", u)


def fetch_lab_repo(url):
    """The first clone of a GitOps repository in the lab: the lab's artifact server plays GitHub, serving
    /gitops/<host>/<owner>/<repo>/repo.json. None when not served by the lab or the lab has no such repository
    (then it is an empty repository, as before); from then on the host's repo.json is the repository."""
    if ARTIFACT_BASE.startswith("@@"):
        return None
    target = "%s/gitops/%s/repo.json" % (ARTIFACT_BASE, _norm_url(url))
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(target, timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise OSError("%s: HTTP %d" % (target, e.code))
    except urllib.error.URLError as e:
        raise OSError("%s: %s" % (target, e.reason))


# The charts whose release installs CRDs (their installCRDs): once such a HelmRelease is installed, the API serves
# that group's kinds (kubeapi.py serves a custom resource only while its CRD exists), as in a real cluster.
CHART_CRDS = {"external-secrets": "external-secrets.io", "cert-manager": "cert-manager.io"}


def _cond(typ, ok, reason, message):
    return {"type": typ, "status": "True" if ok is True else ("False" if ok is False else "Unknown"),
            "reason": reason, "message": message, "lastTransitionTime": rfc3339(), "observedGeneration": 1}


class FluxControllers:
    def __init__(self, cluster):
        self.cluster = cluster
        self.last_run = {}

    @property
    def store(self):
        return self.cluster.store

    def _due(self, key, obj, interval, extra=False):
        req = ((obj["metadata"].get("annotations") or {}).get(FLUX_REQ))
        st = obj.get("status") or {}
        if key not in self.last_run or extra:
            return True
        if req and req != st.get("lastHandledReconcileAt"):
            return True
        return time.time() - self.last_run[key] >= interval

    def _set_status(self, res_group, kind, ns, name, fn):
        with self.store.txn():
            obj = self.store.get(res_group, kind, ns, name)
            if obj is None:
                return None
            obj["status"] = fn(obj, obj.get("status") or {})
            self.store.put(obj)
            return obj

    def tick(self):
        for gr in self.store.list(SRC_GROUP, "GitRepository"):
            self.reconcile_source(gr)
        for ks in self.store.list(KS_GROUP, "Kustomization"):
            self.reconcile_kustomization(ks)
        for hr in self.store.list(HR_GROUP, "HelmRelease"):
            self.reconcile_helmrelease(hr)

    # GitRepository: snapshot repo.json into an "artifact"

    def reconcile_source(self, gr):
        md = gr["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        spec = gr.get("spec") or {}
        key = ("GitRepository", ns, name)
        if spec.get("suspend") and key in self.last_run:
            return
        if not self._due(key, gr, parse_duration(spec.get("interval"), 60) or 60):
            return
        self.last_run[key] = time.time()
        req = (md.get("annotations") or {}).get(FLUX_REQ)
        branch = ((spec.get("ref") or {}).get("branch")) or "master"
        url = spec.get("url", "")
        error = None
        repo = {}
        path = rp(REPO_JSON)
        text = read_text(path)
        if text is None:
            try:
                text = fetch_lab_repo(url)
            except OSError as e:
                error = "failed to checkout and determine revision: unable to clone '%s': %s" % (url, e)
            if text is not None:
                write_file(path, text, 0o644)
                log("info", "source-controller stand-in: cloned %s from the lab into %s" % (url, REPO_JSON))
        if text is not None and not error:
            try:
                repo = json.loads(text)
                if not isinstance(repo, dict):
                    raise ValueError("top level is not an object")
            except ValueError as e:
                error = "failed to checkout and determine revision: unable to read %s: %s" % (REPO_JSON, e)
        if not error and repo.get("url") and _norm_url(repo["url"]) != _norm_url(url):
            error = "failed to checkout and determine revision: unable to clone '%s': repository not found" % url
        if not error and repo.get("branch") and repo["branch"] != branch:
            error = ("failed to checkout and determine revision: unable to clone '%s': couldn't find remote ref "
                     "\"refs/heads/%s\"" % (url, branch))
        if error:
            def failed(obj, st):
                st = dict(st)
                st["observedGeneration"] = obj["metadata"].get("generation", 1)
                if req:
                    st["lastHandledReconcileAt"] = req
                st["conditions"] = [_cond("Ready", False, "GitOperationFailed", error),
                                    _cond("FetchFailed", True, "GitOperationFailed", error)]
                return st
            self._set_status(SRC_GROUP, "GitRepository", ns, name, failed)
            return
        content = json.dumps(repo, sort_keys=True)
        rev = str(repo.get("revision") or hashlib.sha1(content.encode()).hexdigest())
        revision = rev if "@" in rev else "%s@sha1:%s" % (branch, rev)
        old = self.store.artifact(ns, name)
        if not old or old[0] != revision or old[1] != repo:
            self.store.set_artifact(ns, name, revision, repo)

        def ok(obj, st):
            st = dict(st)
            prev = (st.get("artifact") or {})
            st["observedGeneration"] = obj["metadata"].get("generation", 1)
            if req:
                st["lastHandledReconcileAt"] = req
            st["artifact"] = {
                "digest": "sha256:" + hashlib.sha256(content.encode()).hexdigest(),
                "lastUpdateTime": prev.get("lastUpdateTime") if prev.get("revision") == revision else rfc3339(),
                "path": "gitrepository/%s/%s/%s.tar.gz" % (ns, name, rev.split(":")[-1]),
                "revision": revision, "size": len(content),
                "url": "http://source-controller.flux-system.svc.cluster.local./gitrepository/%s/%s/%s.tar.gz"
                       % (ns, name, rev.split(":")[-1]),
            }
            st["conditions"] = [_cond("Ready", True, "Succeeded", "stored artifact for revision '%s'" % revision),
                                _cond("ArtifactInStorage", True, "Succeeded",
                                      "stored artifact for revision '%s'" % revision)]
            return st
        self._set_status(SRC_GROUP, "GitRepository", ns, name, ok)

    # Kustomization: the root one applies the snapshot's objects; children take their state from the snapshot

    @staticmethod
    def _entries(snapshot):
        out = []
        for e in snapshot.get("objects") or []:
            if isinstance(e, dict) and e.get("kind"):
                out.append(e)
        return out

    @staticmethod
    def _entry_key(e):
        md = e.get("metadata") or {}
        kind = e["kind"]
        name = md.get("name") or e.get("name")
        ns = md.get("namespace") or e.get("namespace")
        if not ns and kind == "Kustomization":
            ns = "flux-system"
        return kind, ns or "", name

    def _find_entry(self, snapshot, kind, ns, name):
        for e in self._entries(snapshot):
            k, ens, ename = self._entry_key(e)
            if k == kind and ename == name and (ens or ns) == ns:
                return e
        return None

    def _entry_object(self, e, root):
        kind, ns, name = self._entry_key(e)
        labels = {"kustomize.toolkit.fluxcd.io/name": root["metadata"]["name"],
                  "kustomize.toolkit.fluxcd.io/namespace": root["metadata"].get("namespace", "")}
        if "metadata" in e:
            obj = {k: copy.deepcopy(v) for k, v in e.items() if k not in ("ready", "message", "suspended", "revision")}
        elif kind == "Kustomization":
            obj = {"apiVersion": "%s/v1" % KS_GROUP, "kind": kind, "metadata": {"name": name, "namespace": ns},
                   "spec": {"interval": e.get("interval", "10m0s"), "path": e.get("path", "./%s" % name),
                            "prune": True,
                            "sourceRef": {"kind": "GitRepository", "name": root["spec"]["sourceRef"]["name"]},
                            "timeout": "5m0s", "wait": True}}
        elif kind == "HelmRelease":
            ns = ns or "default"
            obj = {"apiVersion": "%s/v2" % HR_GROUP, "kind": kind, "metadata": {"name": name, "namespace": ns},
                   "spec": {"interval": e.get("interval", "30m0s"),
                            "chart": {"spec": {"chart": e.get("chart", name), "version": str(e.get("version", "1.0.0")),
                                               "sourceRef": {"kind": "HelmRepository",
                                                             "name": e.get("repository", name)}}}}}
        else:
            api = e.get("apiVersion") or "v1"
            obj = {"apiVersion": api, "kind": kind, "metadata": {"name": name}}
            if ns:
                obj["metadata"]["namespace"] = ns
            for k in ("spec", "data", "stringData", "type"):
                if k in e:
                    obj[k] = copy.deepcopy(e[k])
        md = obj.setdefault("metadata", {})
        md.setdefault("labels", {}).update(labels)
        if e.get("suspended") and isinstance(obj.get("spec"), dict):
            obj["spec"]["suspend"] = True
        elif "suspended" in e and isinstance(obj.get("spec"), dict) and kind in ("Kustomization", "HelmRelease"):
            obj["spec"].pop("suspend", None)
        return obj

    def _apply_snapshot(self, root, snapshot):
        rname, rns = root["metadata"]["name"], root["metadata"].get("namespace", "")
        wanted = set()
        for e in self._entries(snapshot):
            obj = self._entry_object(e, root)
            grp, ver = split_api_version(obj["apiVersion"])
            res = res_for(grp, obj["kind"], ver)
            ns = (obj["metadata"].get("namespace") or "default") if res.namespaced else ""
            wanted.add((grp, obj["kind"], ns, obj["metadata"]["name"]))
            with self.store.txn():
                if ns and not self.store.namespace_exists(ns):
                    self.store.put({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": ns, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339()},
                                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
                live = self.store.get(grp, obj["kind"], ns, obj["metadata"]["name"])
                new = normalize_incoming(obj, res)
                if ns:
                    new["metadata"]["namespace"] = ns
                if live is not None and "suspended" not in e and isinstance(new.get("spec"), dict) and \
                        "suspend" in (live.get("spec") or {}):
                    new["spec"]["suspend"] = live["spec"]["suspend"]  # set by `flux suspend`, not owned by git
                if live is not None:
                    # like server-side apply: keep labels/annotations others set (e.g. flux reconcile requests)
                    for f in ("labels", "annotations"):
                        merged = dict(live["metadata"].get(f) or {})
                        merged.update(new["metadata"].get(f) or {})
                        if merged:
                            new["metadata"][f] = merged
                if live is None:
                    new["metadata"]["uid"] = str(uuid.uuid4())
                    new["metadata"]["creationTimestamp"] = rfc3339()
                    new["metadata"]["generation"] = 1
                    if "ready" in e and obj["kind"] not in ("Kustomization", "HelmRelease"):
                        new["status"] = {"conditions": [_cond("Ready", bool(e.get("ready")),
                                                              "Valid" if e.get("ready") else "ValidationFailed",
                                                              e.get("message") or ("store validated" if e.get("ready")
                                                                                   else "not ready"))]}
                    self.store.put(new)
                elif content_of(live) != new or ("ready" in e and obj["kind"] not in ("Kustomization", "HelmRelease")):
                    result = copy.deepcopy(new)
                    for k in SYSTEM_META:
                        if k in live["metadata"]:
                            result["metadata"][k] = live["metadata"][k]
                    if live.get("spec") != new.get("spec"):
                        result["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
                    result["status"] = live.get("status") or {}
                    if "ready" in e and obj["kind"] not in ("Kustomization", "HelmRelease"):
                        ok = bool(e.get("ready"))
                        result["status"] = {"conditions": [_cond("Ready", ok, "Valid" if ok else "ValidationFailed",
                                                                 e.get("message") or ("store validated" if ok
                                                                                      else "not ready"))]}
                    if result != live:
                        self.store.put(result)
        # prune what this Kustomization applied before and the source no longer has
        for obj in self.store.all_objects():
            labels = obj["metadata"].get("labels") or {}
            if labels.get("kustomize.toolkit.fluxcd.io/name") != rname or \
                    labels.get("kustomize.toolkit.fluxcd.io/namespace") != rns:
                continue
            grp, _ = split_api_version(obj["apiVersion"])
            k = (grp, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if k not in wanted:
                with self.store.txn():
                    self.store.delete(*k)

    def reconcile_kustomization(self, ks):
        md = ks["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        spec = ks.get("spec") or {}
        st = ks.get("status") or {}
        key = ("Kustomization", ns, name)
        if spec.get("suspend"):
            return
        src = spec.get("sourceRef") or {}
        art = self.store.artifact(src.get("namespace") or ns, src.get("name", "")) \
            if src.get("kind", "GitRepository") == "GitRepository" else None
        changed = bool(art) and art[0] != st.get("lastAttemptedRevision")
        if not self._due(key, ks, parse_duration(spec.get("interval"), 600) or 600, extra=changed):
            return
        self.last_run[key] = time.time()
        req = (md.get("annotations") or {}).get(FLUX_REQ)
        if not art:
            message = "Source artifact not found, retrying in 30s" if src.get("kind", "GitRepository") == \
                "GitRepository" else "source kind %s is %s" % (src.get("kind"), STANDIN_NOTE)
            ready, reason, revision = False, "ArtifactFailed", None
        else:
            revision, snapshot = art
            entry = self._find_entry(snapshot, "Kustomization", ns, name)
            if entry is None:
                want = _norm_path(snapshot.get("path"))
                have = _norm_path(spec.get("path"))
                if want and want != have:
                    ready, reason = False, "BuildFailed"
                    message = ("kustomization path not found: stat /tmp/kustomization-%s/%s: no such file or directory"
                               % (secrets.randbelow(10 ** 9), have))
                else:
                    self._apply_snapshot(ks, snapshot)
                    ready, reason, message = True, "ReconciliationSucceeded", "Applied revision: %s" % revision
            else:
                ready = entry.get("ready", True) is not False
                reason = "ReconciliationSucceeded" if ready else "ReconciliationFailed"
                message = entry.get("message") or ("Applied revision: %s" % revision if ready
                                                   else "kustomization reconciliation failed")

        def upd(obj, st):
            st = dict(st)
            st["observedGeneration"] = obj["metadata"].get("generation", 1)
            if req:
                st["lastHandledReconcileAt"] = req
            if revision:
                st["lastAttemptedRevision"] = revision
                if ready:
                    st["lastAppliedRevision"] = revision
            st["conditions"] = [_cond("Ready", ready, reason, message),
                                _cond("Healthy", ready, "Succeeded" if ready else "HealthCheckFailed",
                                      "Health check passed" if ready else message)]
            return st
        self._set_status(KS_GROUP, "Kustomization", ns, name, upd)

    def reconcile_helmrelease(self, hr):
        md = hr["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        spec = hr.get("spec") or {}
        key = ("HelmRelease", ns, name)
        if spec.get("suspend"):
            return
        labels = md.get("labels") or {}
        entry = {}
        art = None
        root = self.store.get(KS_GROUP, "Kustomization", labels.get("kustomize.toolkit.fluxcd.io/namespace", ""),
                              labels.get("kustomize.toolkit.fluxcd.io/name", "")) \
            if labels.get("kustomize.toolkit.fluxcd.io/name") else None
        if root:
            src = (root.get("spec") or {}).get("sourceRef") or {}
            art = self.store.artifact(src.get("namespace") or root["metadata"].get("namespace", ""),
                                      src.get("name", ""))
            if art:
                entry = self._find_entry(art[1], "HelmRelease", ns, name) or {}
        seen = self.last_run.get(("HelmRelease-src",) + key)
        changed = bool(art) and seen != art[0]
        if not self._due(key, hr, parse_duration(spec.get("interval"), 1800) or 1800, extra=changed):
            return
        self.last_run[key] = time.time()
        if art:
            self.last_run[("HelmRelease-src",) + key] = art[0]
        req = (md.get("annotations") or {}).get(FLUX_REQ)
        chart = ((spec.get("chart") or {}).get("spec") or {})
        cname = chart.get("chart", name)
        cver = str(entry.get("revision") or chart.get("version") or "1.0.0")
        ready = entry.get("ready", True) is not False
        if ready:
            message = entry.get("message") or "Helm install succeeded for release %s/%s.v1 with chart %s@%s" % (
                ns, name, cname, cver)
        else:
            message = entry.get("message") or ("Helm install failed for release %s/%s with chart %s@%s: context "
                                               "deadline exceeded" % (ns, name, cname, cver))

        def upd(obj, st):
            st = dict(st)
            st["observedGeneration"] = obj["metadata"].get("generation", 1)
            if req:
                st["lastHandledReconcileAt"] = req
            st["lastAttemptedRevision"] = cver
            st["history"] = [{"chartName": cname, "chartVersion": cver, "name": name, "namespace": ns,
                              "status": "deployed" if ready else "failed", "version": 1}]
            st["conditions"] = [_cond("Ready", ready, "InstallSucceeded" if ready else "InstallFailed", message),
                                _cond("Released", ready, "InstallSucceeded" if ready else "InstallFailed", message)]
            return st
        self._set_status(HR_GROUP, "HelmRelease", ns, name, upd)
        if ready and cname in CHART_CRDS:
            self.install_chart_crds(cname, cver)

    def install_chart_crds(self, chart, version):
        group = CHART_CRDS[chart]
        with self.store.txn():
            for r in BUILTIN:
                name = "%s.%s" % (r.plural, group)
                if r.group != group or self.store.get("apiextensions.k8s.io", "CustomResourceDefinition", "", name):
                    continue
                self.store.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                                "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(),
                                             "generation": 1,
                                             "labels": {"app.kubernetes.io/name": chart,
                                                        "app.kubernetes.io/version": version,
                                                        "app.kubernetes.io/managed-by": "Helm"}},
                                "spec": {"group": group, "names": {"kind": r.kind, "plural": r.plural,
                                                                   "singular": r.kind.lower()},
                                         "scope": "Namespaced" if r.namespaced else "Cluster",
                                         "versions": [{"name": r.version, "served": True, "storage": True}]}})
                log("info", "flux stand-in: HelmRelease of chart %s installed CRD %s" % (chart, name))
