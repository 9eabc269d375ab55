# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for kube-scheduler, the workload controllers and the kubelet's pod status: Pods for
# Deployments, StatefulSets and DaemonSets with a pod template, bound to a node the way kube-scheduler would choose;
# nothing runs in them.

import copy
import hashlib
import json
import re
import secrets
import uuid

from common import rfc3339


WORKLOAD_KINDS = (("apps", "Deployment"), ("apps", "StatefulSet"), ("apps", "DaemonSet"))


SCHEDULED_BY = "k3s-standin/scheduled"


TEMPLATE_HASH = "pod-template-hash"


def _requirement_holds(labels, r):
    key, op, values = r.get("key"), r.get("operator"), r.get("values") or []
    has = key in labels
    if op == "In":
        return has and labels[key] in values
    if op == "NotIn":
        return not has or labels[key] not in values
    if op == "Exists":
        return has
    if op == "DoesNotExist":
        return not has
    try:
        if op == "Gt":
            return has and int(labels[key]) > int(values[0])
        if op == "Lt":
            return has and int(labels[key]) < int(values[0])
    except (ValueError, IndexError):
        return False
    return False


def _tolerated(tolerations, taint):
    for tol in tolerations or []:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def pod_fits(spec, node, ready, daemon=False):
    """(True, None) or (False, the scheduler's reason for this node). DaemonSet pods tolerate a cordoned node, as
    the DaemonSet controller's pods do on a real cluster."""
    labels = node["metadata"].get("labels") or {}
    if not ready:
        return False, "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
    if (node.get("spec") or {}).get("unschedulable") and not daemon:
        return False, "node(s) were unschedulable"
    for k, v in ((spec.get("nodeSelector") or {}).items()):
        if labels.get(k) != v:
            return False, "node(s) didn't match Pod's node affinity/selector"
    terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
              .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [])
    if terms and not any(all(_requirement_holds(labels, r) for r in (t.get("matchExpressions") or []))
                         for t in terms):
        return False, "node(s) didn't match Pod's node affinity/selector"
    for t in ((node.get("spec") or {}).get("taints") or []):
        if t.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(spec.get("tolerations"), t):
            return False, "node(s) had untolerated taint {%s: %s}" % (t.get("key"), t.get("value") or "")
    return True, None


def _node_ip(node):
    for a in ((node.get("status") or {}).get("addresses") or []):
        if a.get("type") == "InternalIP":
            return a.get("address")
    return None


class Scheduler:
    def __init__(self, cluster, dns=None):
        self.cluster = cluster
        self.dns = dns
        self.seq = 0

    @property
    def store(self):
        return self.cluster.store

    def tick(self):
        nodes = [self.cluster.node_view(n) for n in self.store.list("", "Node")]
        ready = {n["metadata"]["name"]: any(c.get("type") == "Ready" and c.get("status") == "True"
                                            for c in (n.get("status") or {}).get("conditions") or [])
                 for n in nodes}
        pods = [p for p in self.store.list("", "Pod")]
        owners = set()
        for grp, kind in WORKLOAD_KINDS:
            for w in self.store.list(grp, kind):
                tmpl = (w.get("spec") or {}).get("template")
                if not isinstance(tmpl, dict):
                    continue
                owners.add(w["metadata"].get("uid"))
                self._reconcile(w, kind, tmpl, nodes, ready, pods)
        names = {n["metadata"]["name"] for n in nodes}
        for p in self.store.list("", "Pod"):
            md = p["metadata"]
            bound = (p.get("spec") or {}).get("nodeName")
            # the pod garbage collector: pods of a workload that is gone, or bound to a Node that was deleted
            if (md.get("annotations") or {}).get(SCHEDULED_BY) and \
                    (not any(r.get("uid") in owners for r in md.get("ownerReferences") or []) or
                     (bound and bound not in names)):
                with self.store.txn():
                    self.store.delete("", "Pod", md.get("namespace", ""), md["name"])
        if self.dns is not None:
            self.dns.set_serving(self._serves_dns_here())

    def _serves_dns_here(self):
        """A Running hostNetwork pod on this node with a UDP containerPort 53 (Pi-hole) answers DNS on port 53."""
        for p in self.store.list("", "Pod"):
            spec = p.get("spec") or {}
            if spec.get("nodeName") != self.cluster.local_node or not spec.get("hostNetwork") or \
                    (p.get("status") or {}).get("phase") != "Running":
                continue
            for c in spec.get("containers") or []:
                for port in c.get("ports") or []:
                    if int(port.get("containerPort") or 0) == 53 and (port.get("protocol") or "TCP") == "UDP":
                        return True
        return False

    def _choose(self, spec, nodes, ready, pods):
        fits, why = [], {}
        for n in nodes:
            ok, reason = pod_fits(spec, n, ready.get(n["metadata"]["name"]))
            if ok:
                fits.append(n)
            else:
                why[reason] = why.get(reason, 0) + 1
        if not fits:
            detail = " ".join("%d %s." % (c, r) for r, c in sorted(why.items()))
            return None, "0/%d nodes are available: %s" % (len(nodes), detail) if nodes else "no nodes available"
        load = {}
        for p in pods:
            nn = (p.get("spec") or {}).get("nodeName")
            if nn:
                load[nn] = load.get(nn, 0) + 1

        def score(n):
            name = n["metadata"]["name"]
            prefer_not = any(t.get("effect") == "PreferNoSchedule" and not _tolerated(spec.get("tolerations"), t)
                             for t in ((n.get("spec") or {}).get("taints") or []))
            return (prefer_not, load.get(name, 0), name)
        return sorted(fits, key=score)[0], None

    def _pod(self, w, kind, tmpl, h, name, node, reason):
        md = w["metadata"]
        spec = copy.deepcopy(tmpl.get("spec") or {})
        labels = dict(((tmpl.get("metadata") or {}).get("labels") or {}))
        if kind != "DaemonSet":
            labels[TEMPLATE_HASH] = h
        else:
            labels["controller-revision-hash"] = h
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": md.get("namespace", "default"), "labels": labels,
                            "annotations": {SCHEDULED_BY: "true"},
                            "ownerReferences": [{"apiVersion": w["apiVersion"], "kind": kind, "name": md["name"],
                                                 "uid": md.get("uid"), "controller": True,
                                                 "blockOwnerDeletion": True}],
                            "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339()},
               "spec": spec}
        self._bind(pod, node, reason)
        return pod

    def _bind(self, pod, node, reason):
        if node is None:
            pod["spec"].pop("nodeName", None)
            pod["status"] = {"phase": "Pending", "qosClass": "BestEffort",
                             "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                             "message": reason, "lastTransitionTime": rfc3339()}]}
            return
        pod["spec"]["nodeName"] = node["metadata"]["name"]
        ip = _node_ip(node) or "127.0.0.1"
        self.seq += 1
        cidr = re.match(r"^(\d+\.\d+\.\d+)\.", (node.get("spec") or {}).get("podCIDR") or "10.42.0.0/24")
        pod_ip = ip if pod["spec"].get("hostNetwork") else "%s.%d" % (cidr.group(1) if cidr else "10.42.0",
                                                                       2 + self.seq % 250)
        now = rfc3339()
        pod["status"] = {"phase": "Running", "hostIP": ip, "podIP": pod_ip, "startTime": now, "qosClass": "BestEffort",
                         "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                                        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                         "containerStatuses": [{"name": c.get("name"), "image": c.get("image"), "ready": True,
                                                "restartCount": 0, "started": True,
                                                "state": {"running": {"startedAt": now}}}
                                               for c in (pod["spec"].get("containers") or [])]}

    def _reconcile(self, w, kind, tmpl, nodes, ready, pods):
        md = w["metadata"]
        ns, wname, uid = md.get("namespace", "default"), md["name"], md.get("uid")
        h = hashlib.sha1(json.dumps(tmpl, sort_keys=True).encode()).hexdigest()[:10]
        hash_key = "controller-revision-hash" if kind == "DaemonSet" else TEMPLATE_HASH
        mine = [p for p in pods if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]
        drop = [p for p in mine if (p["metadata"].get("labels") or {}).get(hash_key) != h]
        keep = [p for p in mine if p not in drop]
        spec = tmpl.get("spec") or {}
        create = []
        if kind == "DaemonSet":
            targets = [n for n in nodes if pod_fits(spec, n, ready.get(n["metadata"]["name"]), daemon=True)[0]]
            names = {n["metadata"]["name"] for n in targets}
            drop += [p for p in keep if (p.get("spec") or {}).get("nodeName") not in names]
            keep = [p for p in keep if (p.get("spec") or {}).get("nodeName") in names]
            have = {(p.get("spec") or {}).get("nodeName") for p in keep}
            for n in targets:
                if n["metadata"]["name"] not in have:
                    create.append(self._pod(w, kind, tmpl, h, "%s-%s" % (wname, secrets.token_hex(3)[:5]), n, None))
        else:
            want = (w.get("spec") or {}).get("replicas")
            want = 1 if want is None else int(want)
            keep.sort(key=lambda p: p["metadata"]["name"])
            drop += keep[want:]
            keep = keep[:want]
            taken = {p["metadata"]["name"] for p in keep}
            ordinal = 0
            while len(keep) + len(create) < want:
                if kind == "StatefulSet":
                    while "%s-%d" % (wname, ordinal) in taken:
                        ordinal += 1
                    pname = "%s-%d" % (wname, ordinal)
                    taken.add(pname)
                else:
                    pname = "%s-%s-%s" % (wname, h, secrets.token_hex(3)[:5])
                node, reason = self._choose(spec, nodes, ready, pods + create)
                create.append(self._pod(w, kind, tmpl, h, pname, node, reason))
        # pods no node fitted before may fit now (a node joined or was relabelled)
        retry = []
        for p in keep:
            if not (p.get("spec") or {}).get("nodeName"):
                node, reason = self._choose(p.get("spec") or {}, nodes, ready, pods + create)
                if node is not None or ((p.get("status") or {}).get("conditions") or [{}])[0].get("message") != reason:
                    q = copy.deepcopy(p)
                    self._bind(q, node, reason)
                    retry.append(q)
        if not (drop or create or retry):
            return
        with self.store.txn():
            for p in drop:
                self.store.delete("", "Pod", p["metadata"].get("namespace", ""), p["metadata"]["name"])
            for p in create + retry:
                self.store.put(p)
        pods[:] = [p for p in pods if p not in drop] + create
