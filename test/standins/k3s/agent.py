# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for `k3s agent` (the kubelet's part k3s runs): it fetches the CA, checks the token's CA hash,
# registers the node with its node password, labels and taints, notifies systemd, and heartbeats.

import hashlib
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request

from common import (HEARTBEAT_SECONDS, RETRY_SECONDS, fatal, install_signal_handlers, k3s_version, log, rp, sd_notify,
                    set_process_name, short_commit, write_file)
from config import (effective_config, ensure_node_password, memory_cgroup_check, node_info, node_name_for,
                    node_labels_and_taints, parse_token, redacted_args, resolve_token)
from datastore import b64


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ConnError(Exception):
    pass


def http_call(base, method, path, body=None, headers=None, timeout=10):
    """(status, text) from the stand-in API; never goes through a proxy."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", "k3s-standin/%s" % k3s_version())
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ConnectionRefusedError):
            raise ConnError("connect: connection refused")
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise ConnError("i/o timeout")
        if isinstance(reason, socket.gaierror):
            raise ConnError("lookup failed: %s" % reason)
        raise ConnError(str(getattr(reason, "strerror", None) or reason))


def to_http_base(url):
    u = url.strip().rstrip("/")
    u = re.sub(r"^https://", "http://", u)
    if not u.startswith("http://"):
        u = "http://" + u
    m = re.match(r"^http://(\[[^\]]+\]|[^/:]+)(:\d+)?", u)
    if not m:
        return u
    return "http://%s%s" % (m.group(1), m.group(2) or ":6443")


def agent_main(argv):
    set_process_name("k3s-agent")
    cfg = effective_config(argv)
    version = k3s_version()
    log("info", "Starting k3s agent %s (%s)" % (version, short_commit(version)))
    log("info", "This is the k3s STAND-IN used by the lab tests, not the real k3s: no containers, no TLS")
    url = cfg.str("server")
    if not url:
        fatal("Error: --server is required")
    token = resolve_token(cfg)
    if not token:
        fatal("Error: --token is required")
    memory_cgroup_check()
    ca_hash, secret = parse_token(token)
    base = to_http_base(url)
    shown = url.rstrip("/")
    password = ensure_node_password()
    name = node_name_for(cfg, password)
    labels, taints = node_labels_and_taints(cfg)
    if not ca_hash:
        log("warning", "Cluster CA certificate is not trusted by the host CA bundle, but the token does not include "
                       "a CA hash. Use the full token from the server's node-token file to enable Cluster CA "
                       "validation.")
    auth = {"Authorization": "Basic " + b64("node:" + secret)}
    data_dir = rp(cfg.str("data-dir", "/var/lib/rancher/k3s"))
    stop = threading.Event()
    install_signal_handlers(stop)
    node_ips = cfg.list("node-ip")

    def try_register():
        try:
            code, ca = http_call(base, "GET", "/cacerts")
        except ConnError as e:
            log("error", 'failed to get CA certs: Get "%s/cacerts": dial tcp %s: %s' % (shown, base[7:], e))
            return False
        if code != 200:
            log("error", "failed to get CA certs: %s/cacerts: %d" % (shown, code))
            return False
        actual = hashlib.sha256(ca.encode()).hexdigest()
        if ca_hash and actual != ca_hash:
            log("error", "token CA hash does not match the Cluster CA certificate hash: %s != %s" % (ca_hash, actual))
            return False
        write_file(os.path.join(data_dir, "agent", "server-ca.crt"), ca, 0o644)
        body = {"name": name, "password": password, "labels": labels, "taints": taints, "role": "agent",
                "version": version, "nodeInfo": node_info(version), "hostname": socket.gethostname(),
                "nodeArgs": ["agent"] + redacted_args(argv)}
        if node_ips:
            body["internalIP"] = node_ips[0]
        try:
            code, text = http_call(base, "POST", "/v1-k3s/standin/register", body, auth)
        except ConnError as e:
            log("info", 'Waiting to retrieve agent configuration; server is not ready: '
                'Get "%s/v1-k3s/serving-kubelet.crt":'
                        ' dial tcp %s: %s' % (shown, base[7:], e))
            return False
        if code == 401:
            log("error", "token is not valid: %s/apis: 401 Unauthorized" % shown)
            return False
        if code != 200:
            try:
                msg = json.loads(text).get("message", text)
            except ValueError:
                msg = text
            log("info", "Waiting to retrieve agent configuration; server is not ready: %s" % msg)
            return False
        log("info", 'Successfully registered node "%s" with %s' % (name, shown))
        return True

    registered = False
    while not stop.is_set():
        if not registered:
            if try_register():
                registered = True
                sd_notify("READY=1")
                log("info", "k3s agent is up and running")
                continue
            stop.wait(RETRY_SECONDS)
            continue
        if stop.wait(HEARTBEAT_SECONDS):
            break
        try:
            code, text = http_call(base, "POST", "/v1-k3s/standin/heartbeat", {"name": name}, auth)
            if code == 404:
                log("error", 'Error updating node status, will retry: error getting node "%s": nodes "%s" not found'
                    % (name, name))
            elif code == 401:
                log("error", "Error updating node status, will retry: Unauthorized")
            elif code != 200:
                log("error", "Error updating node status, will retry: %d %s" % (code, text[:200]))
        except ConnError as e:
            log("error", 'Error updating node status, will retry: error getting node "%s": Get "%s/api/v1/nodes/%s": '
                         'dial tcp %s: %s' % (name, shown, name, base[7:], e))
    log("info", "Shutting down k3s agent stand-in")
    return 0
