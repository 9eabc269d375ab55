# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What the stand-in's API server prints for a kind: the columns of the Table objects kubectl asks for.

import time

from common import human_age, parse_rfc3339


def cond_of(obj, typ="Ready"):
    for c in ((obj.get("status") or {}).get("conditions") or []):
        if c.get("type") == typ:
            return c
    return None


def age_of(obj):
    t = parse_rfc3339(obj["metadata"].get("creationTimestamp"))
    return human_age(time.time() - t) if t else "<unknown>"


def table_columns(res, items, wide=True):
    """The apiserver's printer columns for a kind: (headers, rows, wide_from), the columns from wide_from on being
    -o wide's. The Kubernetes API serves them as Table objects to the real kubectl (kubeapi.py)."""
    rows = []
    wide_from = None
    kind = res["kind"]
    group = res["group"]
    if kind == "Node" and group == "":
        headers = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        if wide:
            headers += ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
        for o in items:
            c = cond_of(o)
            status = "Ready" if c and c.get("status") == "True" else "NotReady"
            if (o.get("spec") or {}).get("unschedulable"):
                status += ",SchedulingDisabled"
            roles = sorted(k.split("/", 1)[1] for k in (o["metadata"].get("labels") or {})
                           if k.startswith("node-role.kubernetes.io/"))
            info = (o.get("status") or {}).get("nodeInfo") or {}
            row = [o["metadata"]["name"], status, ",".join(roles) or "<none>", age_of(o),
                   info.get("kubeletVersion", "")]
            if wide:
                addrs = (o.get("status") or {}).get("addresses") or []
                ip = next((a["address"] for a in addrs if a.get("type") == "InternalIP"), "<none>")
                ext = next((a["address"] for a in addrs if a.get("type") == "ExternalIP"), "<none>")
                row += [ip, ext, info.get("osImage", ""), info.get("kernelVersion", ""),
                        info.get("containerRuntimeVersion", "")]
            rows.append(row)
        wide_from = 5
    elif kind == "Namespace" and group == "":
        headers = ["NAME", "STATUS", "AGE"]
        rows = [[o["metadata"]["name"], (o.get("status") or {}).get("phase", "Active"), age_of(o)] for o in items]
    elif kind == "Secret" and group == "":
        headers = ["NAME", "TYPE", "DATA", "AGE"]
        rows = [[o["metadata"]["name"], o.get("type", "Opaque"), len(o.get("data") or {}), age_of(o)] for o in items]
    elif kind == "ConfigMap" and group == "":
        headers = ["NAME", "DATA", "AGE"]
        rows = [[o["metadata"]["name"], len(o.get("data") or {}), age_of(o)] for o in items]
    elif kind == "Deployment" and group == "apps":
        headers = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        for o in items:
            st = o.get("status") or {}
            n = (o.get("spec") or {}).get("replicas", 1)
            rows.append([o["metadata"]["name"], "%s/%s" % (st.get("readyReplicas", 0), n), st.get("updatedReplicas", 0),
                         st.get("availableReplicas", 0), age_of(o)])
    elif kind == "Pod" and group == "":
        headers = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
        for o in items:
            st = o.get("status") or {}
            cs = st.get("containerStatuses") or []
            row = [o["metadata"]["name"], "%d/%d" % (sum(1 for c in cs if c.get("ready")),
                                                     len((o.get("spec") or {}).get("containers") or [])),
                   st.get("phase", "Pending"), sum(int(c.get("restartCount") or 0) for c in cs), age_of(o)]
            if wide:
                row += [st.get("podIP") or "<none>", (o.get("spec") or {}).get("nodeName") or "<none>"]
            rows.append(row)
        wide_from = 5
    elif kind == "PodDisruptionBudget" and group == "policy":
        headers = ["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"]
        for o in items:
            spec = o.get("spec") or {}
            rows.append([o["metadata"]["name"], spec.get("minAvailable", "N/A"), spec.get("maxUnavailable", "N/A"),
                         (o.get("status") or {}).get("disruptionsAllowed", 0), age_of(o)])
    elif kind == "GitRepository":
        headers = ["NAME", "URL", "AGE", "READY", "STATUS"]
        for o in items:
            c = cond_of(o) or {}
            rows.append([o["metadata"]["name"], (o.get("spec") or {}).get("url", ""), age_of(o),
                         c.get("status", "Unknown"), c.get("message", "")])
    else:
        has_ready = any(cond_of(o) for o in items)
        headers = ["NAME", "AGE"] + (["READY", "STATUS"] if has_ready else [])
        for o in items:
            row = [o["metadata"]["name"], age_of(o)]
            if has_ready:
                c = cond_of(o) or {}
                row += [c.get("status", "Unknown"), c.get("message", "")]
            rows.append(row)
    return headers, rows, len(headers) if wide_from is None else wide_from
