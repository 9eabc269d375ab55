# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for the control plane's object logic: computed status (Node Ready from heartbeats, workloads
# ready at once), create/update/server-side apply and delete of objects, and the k3s supervisor's node registration
# (node-password Secrets) and heartbeats. The Flux controllers run inside it (fluxcontrollers.py).

import base64
import copy
import json
import time
import uuid

from common import NODE_PASSWORD_TEXT, NOT_READY_AFTER, go_arch, log, rfc3339
from datastore import (ApiError, SYSTEM_META, b64, check_password, content_of, hash_password, normalize_incoming,
                       res_for, split_api_version, three_way)
from fluxcontrollers import FluxControllers


ADDONS = {
    "coredns": [("apps/v1", "Deployment", "kube-system", "coredns")],
    "local-storage": [("apps/v1", "Deployment", "kube-system", "local-path-provisioner"),
                      ("storage.k8s.io/v1", "StorageClass", "", "local-path")],
    "metrics-server": [("apps/v1", "Deployment", "kube-system", "metrics-server")],
    "traefik": [("helm.cattle.io/v1", "HelmChart", "kube-system", "traefik-crd"),
                ("helm.cattle.io/v1", "HelmChart", "kube-system", "traefik"),
                ("apps/v1", "Deployment", "kube-system", "traefik")],
    "servicelb": [],
    "runtimes": [],
}


class Cluster:
    def __init__(self, store, version, admin_key, token_secret, local_node):
        self.store = store
        self.version = version
        self.admin_key = admin_key
        self.token_secret = token_secret
        self.local_node = local_node
        self.ca_pem = ""
        self.flux = FluxControllers(self)

    # --- resources

    def not_found(self, res, name):
        return ApiError(404, "NotFound", '%s "%s" not found' % (res.qualified, name))

    # --- views (computed status)

    def view(self, obj):
        if obj["kind"] == "Node" and obj["apiVersion"] == "v1":
            return self.node_view(obj)
        if obj["kind"] in ("Deployment", "StatefulSet") and obj["apiVersion"] == "apps/v1":
            o = copy.deepcopy(obj)
            n = int((o.get("spec") or {}).get("replicas", 1) or 0)
            st = o.setdefault("status", {})
            st.setdefault("observedGeneration", o["metadata"].get("generation", 1))
            st.setdefault("replicas", n)
            st.setdefault("readyReplicas", n)
            st.setdefault("availableReplicas", n)
            st.setdefault("updatedReplicas", n)
            if obj["kind"] == "Deployment":
                st.setdefault("conditions", [{"type": "Available", "status": "True",
                                              "reason": "MinimumReplicasAvailable",
                                              "message": "Deployment has minimum availability."}])
            return o
        return obj

    def node_view(self, obj):
        o = copy.deepcopy(obj)
        name = o["metadata"]["name"]
        lease = self.store.lease(name)
        now = time.time()
        st = o.setdefault("status", {})
        created = o["metadata"].get("creationTimestamp")
        if lease and now - lease[0] <= NOT_READY_AFTER:
            ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status", "lastHeartbeatTime": rfc3339(lease[0]),
                     "lastTransitionTime": rfc3339(lease[1])}
            pressure = "False"
        else:
            last = lease[0] if lease else None
            ready = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                     "message": "Kubelet stopped posting node status.",
                     "lastHeartbeatTime": rfc3339(last) if last else created,
                     "lastTransitionTime": rfc3339(last + NOT_READY_AFTER) if last else created}
            pressure = "Unknown"
        conds = []
        for typ, reason, msg in (("MemoryPressure", "KubeletHasSufficientMemory",
                                  "kubelet has sufficient memory available"),
                                 ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                                 ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available")):
            c = {"type": typ, "status": pressure, "reason": reason if pressure == "False" else "NodeStatusUnknown",
                 "message": msg if pressure == "False" else "Kubelet stopped posting node status.",
                 "lastHeartbeatTime": ready["lastHeartbeatTime"], "lastTransitionTime": created}
            conds.append(c)
        conds.append(ready)
        st["conditions"] = conds
        return o

    # --- operations

    def _prepare(self, obj, default_ns):
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "object is not a JSON object")
        missing = [f for f in ("apiVersion", "kind") if not obj.get(f)]
        if missing:
            raise ApiError(400, "BadRequest", "error validating data: [%s]" %
                           ", ".join("%s not set" % f for f in missing))
        md = obj.get("metadata") or {}
        if not md.get("name"):
            raise ApiError(400, "Invalid", "resource name may not be empty")
        grp, ver = split_api_version(obj["apiVersion"])
        res = res_for(grp, obj["kind"], ver)
        ns = (md.get("namespace") or default_ns or "default") if res.namespaced else ""
        return res, ns, md["name"]

    def apply_one(self, obj, default_ns, mode="apply"):
        res, ns, name = self._prepare(obj, default_ns)
        with self.store.txn():
            if res.namespaced and not self.store.namespace_exists(ns):
                raise ApiError(404, "NotFound", 'namespaces "%s" not found' % ns)
            live = self.store.get(res.group, res.kind, ns, name)
            new = normalize_incoming(obj, res)
            new["metadata"]["name"] = name
            if res.namespaced:
                new["metadata"]["namespace"] = ns
            else:
                new["metadata"].pop("namespace", None)
            if live is None:
                if mode == "update":
                    raise self.not_found(res, name)
                created = new
                created["metadata"]["uid"] = str(uuid.uuid4())
                created["metadata"]["creationTimestamp"] = rfc3339()
                if res.kind == "Namespace" and res.group == "":
                    created["status"] = {"phase": "Active"}
                if isinstance(created.get("spec"), dict) and res.kind != "Namespace":
                    created["metadata"]["generation"] = 1
                self.store.put(created)
                return {"result": "created", "display": "%s/%s" % (res.singular, name), "object": created}
            if mode == "create":
                raise ApiError(409, "AlreadyExists", '%s "%s" already exists' % (res.qualified, name))
            if mode == "update":
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv and rv != live["metadata"].get("resourceVersion"):
                    raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the object has been '
                                   'modified; please apply your changes to the latest version and try again'
                                   % (res.qualified, name))
                merged = new
            else:
                # server-side apply: the fields sent are set, others kept (no managed fields, no conflicts)
                merged = three_way(content_of(live), None, new)
            if merged == content_of(live):
                return {"result": "unchanged", "display": "%s/%s" % (res.singular, name), "object": live}
            result = copy.deepcopy(merged)
            for k in SYSTEM_META:
                if k in live["metadata"]:
                    result["metadata"][k] = live["metadata"][k]
            if "status" in live:
                result["status"] = live["status"]
            if live.get("spec") != result.get("spec") and "generation" in live["metadata"]:
                result["metadata"]["generation"] = int(live["metadata"]["generation"]) + 1
            self.store.put(result)
            return {"result": "configured", "display": "%s/%s" % (res.singular, name), "object": result}

    def delete_object(self, res, ns, name):
        with self.store.txn():
            if not self.store.delete(res.group, res.kind, ns, name):
                raise self.not_found(res, name)
            if res.kind == "Node" and res.group == "":
                self.store.delete("", "Secret", "kube-system", "%s.node-password.k3s" % name)
                self.store.db.execute("DELETE FROM leases WHERE node=?", (name,))
            if res.kind == "Namespace" and res.group == "":
                self.store.db.execute("DELETE FROM objects WHERE namespace=?", (name,))

    # --- nodes

    def register_node(self, body, client_ip, local=False):
        name = str(body.get("name") or "").strip().lower()
        password = str(body.get("password") or "")
        if not name or not password:
            raise ApiError(400, "BadRequest", "node name and password are required")
        version = body.get("version") or self.version
        info = body.get("nodeInfo") or {}
        with self.store.txn():
            sec_name = "%s.node-password.k3s" % name
            sec = self.store.get("", "Secret", "kube-system", sec_name)
            if sec is not None:
                stored = base64.b64decode((sec.get("data") or {}).get("hash", "")).decode(errors="replace")
                if not check_password(password, stored):
                    if not local:
                        log("error", "Node password validation failed for '%s', using passwd file '%s'" %
                            (name, "/var/lib/rancher/k3s/server/cred/node-passwd"))
                        raise ApiError(403, "Forbidden", NODE_PASSWORD_TEXT)
                    log("warning", "Local node %s has a new node password; updating its node-passwd entry" % name)
                    sec = None
            if sec is None:
                self.store.put({"apiVersion": "v1", "kind": "Secret", "type": "k3s.cattle.io/node-password",
                                "metadata": {"name": sec_name, "namespace": "kube-system", "uid": str(uuid.uuid4()),
                                             "creationTimestamp": rfc3339(),
                                             "labels": {"node.k3s.cattle.io/node-password": "true"}},
                                "data": {"hash": b64(hash_password(password))}})
            node = self.store.get("", "Node", "", name)
            arch = info.get("architecture") or go_arch()
            labels = {
                "beta.kubernetes.io/arch": arch, "beta.kubernetes.io/instance-type": "k3s",
                "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": arch, "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "k3s",
            }
            if body.get("role") == "server":
                labels["node-role.kubernetes.io/control-plane"] = "true"
                labels["node-role.kubernetes.io/master"] = "true"
            labels.update(body.get("labels") or {})
            ip = body.get("internalIP") or client_ip
            addresses = [{"address": ip, "type": "InternalIP"}, {"address": name, "type": "Hostname"}]
            annotations = {"k3s.io/hostname": body.get("hostname") or name, "k3s.io/internal-ip": ip,
                           "k3s.io/node-args": json.dumps(body.get("nodeArgs") or []),
                           "node.alpha.kubernetes.io/ttl": "0",
                           "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
            capacity = {"cpu": info.pop("_cpu", "1"), "ephemeral-storage": "30830568Ki", "hugepages-2Mi": "0",
                        "memory": info.pop("_memory", "1024Ki"), "pods": "110"}
            info.pop("_cpu", None)
            info.pop("_memory", None)
            info["kubeletVersion"] = version
            info["kubeProxyVersion"] = version
            if node is None:
                node = {"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(),
                                     "labels": labels, "annotations": annotations},
                        "spec": {"podCIDR": "10.42.%d.0/24" % (len(self.store.list("", "Node")) % 250),
                                 "providerID": "k3s://%s" % name}}
                node["spec"]["podCIDRs"] = [node["spec"]["podCIDR"]]
                taints = [t for t in (body.get("taints") or []) if isinstance(t, dict)]
                if taints:
                    node["spec"]["taints"] = taints
                created = True
            else:
                node["metadata"].setdefault("labels", {}).update(labels)
                node["metadata"].setdefault("annotations", {}).update(annotations)
                created = False
            node["status"] = {"addresses": addresses, "allocatable": capacity, "capacity": dict(capacity),
                              "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}, "nodeInfo": info}
            self.store.put(node)
        self.store.renew(name)
        log("info", "%s node %s (%s) with kubelet %s" % ("Registered new" if created else "Re-registered", name, ip,
                                                          version))
        return {"name": name, "created": created}

    def heartbeat(self, body):
        name = str(body.get("name") or "").lower()
        if self.store.get("", "Node", "", name) is None:
            raise ApiError(404, "NotFound", 'nodes "%s" not found' % name)
        self.store.renew(name)
        return {"ok": True}
