# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for `k3s server`: the certificates and token, the datastore, the kubeconfig, the packaged
# addons' objects, the local node, the API listener, the scheduler, the Flux controllers and the DNS stand-in.

import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import uuid

import kubeapi
from apiserver import ApiHandler, ApiServer
from cluster import ADDONS, Cluster
from common import (BOOTSTRAP_TEXT, HEARTBEAT_SECONDS, ROOT, STANDIN_NOTE, fatal, install_signal_handlers,
                    k3s_version, log, read_text, rfc3339, rp, sd_notify, set_process_name, short_commit, version_key,
                    write_file)
from config import (effective_config, ensure_node_password, local_ipv4, memory_cgroup_check, node_info, node_name_for,
                    node_labels_and_taints, parse_token, redacted_args, resolve_token)
from datastore import Store, b64, seal, split_api_version, unseal
from pihole_dns import DnsResponder
from scheduler import Scheduler


def write_kubeconfig(path, port, ca_pem, admin_crt, admin_key, mode):
    text = ("apiVersion: v1\n"
            "clusters:\n"
            "- cluster:\n"
            "    certificate-authority-data: %s\n"
            "    server: https://127.0.0.1:%d\n"
            "  name: default\n"
            "contexts:\n"
            "- context:\n"
            "    cluster: default\n"
            "    user: default\n"
            "  name: default\n"
            "current-context: default\n"
            "kind: Config\n"
            "preferences: {}\n"
            "users:\n"
            "- name: default\n"
            "  user:\n"
            "    client-certificate-data: %s\n"
            "    client-key-data: %s\n") % (b64(ca_pem), port, b64(admin_crt), b64(admin_key))
    write_file(path, text, mode)


def ensure_addons(cluster, disabled):
    store = cluster.store
    for addon, objs in ADDONS.items():
        for api, kind, ns, name in objs:
            grp, _ = split_api_version(api)
            with store.txn():
                live = store.get(grp, kind, ns, name)
                if addon in disabled:
                    if live is not None:
                        store.delete(grp, kind, ns, name)
                        log("info", "Removed disabled addon %s: %s %s/%s" % (addon, kind, ns, name))
                    continue
                if live is not None:
                    continue
                obj = {"apiVersion": api, "kind": kind,
                       "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(),
                                    "generation": 1, "labels": {"objectset.rio.cattle.io/owner-name": addon},
                                    "annotations": {"k3s-standin/addon": addon}}}
                if ns:
                    obj["metadata"]["namespace"] = ns
                if kind == "Deployment":
                    obj["spec"] = {"replicas": 1, "selector": {"matchLabels": {"k8s-app": name}}}
                elif kind == "HelmChart":
                    obj["spec"] = {"chart": "https://%%{KUBERNETES_API}%%/static/charts/%s.tgz" % name,
                                   "targetNamespace": "kube-system"}
                elif kind == "StorageClass":
                    obj["provisioner"] = "rancher.io/local-path"
                    obj["reclaimPolicy"] = "Delete"
                    obj["volumeBindingMode"] = "WaitForFirstConsumer"
                store.put(obj)


def ensure_namespaces(store):
    with store.txn():
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            if not store.namespace_exists(ns):
                store.put({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": ns, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(),
                                        "labels": {"kubernetes.io/metadata.name": ns}},
                           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})


def server_main(argv):
    set_process_name("k3s-server")
    cfg = effective_config(argv)
    version = k3s_version()
    log("info", "Starting k3s %s (%s)" % (version, short_commit(version)))
    log("info", "This is the k3s STAND-IN used by the lab tests, not the real k3s: no containers, a small part of "
                "the Kubernetes API over TLS (enough for kubectl), no real scheduling")
    if cfg.str("server"):
        fatal("Error: joining a server to an existing cluster (--server / K3S_URL on a server) is %s" % STANDIN_NOTE)
    if cfg.bool("cluster-init"):
        log("warning", "--cluster-init is ignored by the k3s stand-in: the datastore is always SQLite")
    memory_cgroup_check()
    data_dir = rp(cfg.str("data-dir", "/var/lib/rancher/k3s"))
    server_dir = os.path.join(data_dir, "server")
    tls_dir = os.path.join(server_dir, "tls")
    port = int(cfg.str("https-listen-port") or os.environ.get("K3S_STANDIN_PORT") or 6443)

    token = resolve_token(cfg)
    _, secret = parse_token(token) if token else (None, None)
    if not secret:
        existing = read_text(os.path.join(server_dir, "token"))
        if existing and existing.strip():
            _, secret = parse_token(existing.strip())
    if not secret:
        secret = secrets.token_hex(16)
        log("info", "No token given: generated a new cluster token")

    log("info", "Configuring sqlite3 database connection pooling: maxIdleConns=2, maxOpenConns=0, connMaxLifetime=0s")
    log("info", "Configuring database table schema and indexes, this may take a moment...")
    store = Store(os.path.join(server_dir, "db", "state.db"))
    log("info", "Database tables and indexes are up to date")
    # Which release last ran on this datastore: an upgrade keeps it (and says so); an older release on a datastore a
    # newer one wrote is what k3s does not support (a downgrade), which the stand-in only warns about.
    with store.lock:
        row = store.db.execute("SELECT value FROM meta WHERE key='k3s-version'").fetchone()
    if row and row[0] != version:
        log("info", "Datastore last used by k3s %s; now %s, keeping its objects" % (row[0], version))
        if version_key(version) < version_key(row[0]):
            log("warning", "Datastore was written by the newer k3s %s: downgrades are not supported by k3s; "
                           "restore a snapshot taken before the upgrade to go back" % row[0])
    with store.txn():
        store.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('k3s-version', ?)", (version,))
    log("info", "Kine available at unix://kine.sock")

    tls_files = ["server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key", "client-admin.crt",
                 "client-admin.key"]
    with store.lock:
        row = store.db.execute("SELECT salt, tag, data FROM bootstrap WHERE id=1").fetchone()
    if row:
        plain = unseal(secret, *row)
        if plain is None:
            store.close()
            fatal("starting kubernetes: preparing server: %s" % BOOTSTRAP_TEXT)
        boot = json.loads(plain)
        boot, made = kubeapi.complete_bootstrap_certs(boot)
        if made:
            log("warning", "Bootstrap data held placeholder certificates of an older k3s stand-in: made %s again "
                "(the cluster CA, and with it the token's CA hash, changed)" % ", ".join(made))
            salt, tag, data = seal(secret, json.dumps(boot).encode())
            with store.txn():
                store.db.execute("UPDATE bootstrap SET salt=?, tag=?, data=? WHERE id=1", (salt, tag, data))
        log("info", "Reconciling bootstrap data between datastore and disk")
        for f in tls_files:
            p = os.path.join(tls_dir, f)
            if read_text(p) != boot[f]:
                write_file(p, boot[f], 0o600 if f.endswith(".key") else 0o644)
    else:
        on_disk = {f: read_text(os.path.join(tls_dir, f)) for f in tls_files}
        boot, made = kubeapi.complete_bootstrap_certs(on_disk)
        if made:
            log("info", "Generated certificates: %s" % ", ".join(made))
        for f in tls_files:
            if boot[f] != on_disk[f]:
                write_file(os.path.join(tls_dir, f), boot[f], 0o600 if f.endswith(".key") else 0o644)
        salt, tag, data = seal(secret, json.dumps(boot).encode())
        with store.txn():
            store.db.execute("INSERT INTO bootstrap (id, salt, tag, data) VALUES (1, ?, ?, ?)", (salt, tag, data))
        log("info", "Saved bootstrap data to the datastore, encrypted with the cluster token")

    ca_pem = boot["server-ca.crt"]
    ca_hash = hashlib.sha256(ca_pem.encode()).hexdigest()
    full_token = "K10%s::server:%s\n" % (ca_hash, secret)
    for f in ("token", "node-token"):
        write_file(os.path.join(server_dir, f), full_token, 0o600)
    cred = os.path.join(server_dir, "cred")
    write_file(os.path.join(cred, "passwd"), "%s,server,server,k3s:server\n%s,node,node,k3s:agent\n" %
               (secret, secret), 0o600)
    if read_text(os.path.join(cred, "ipsec.psk")) is None:
        write_file(os.path.join(cred, "ipsec.psk"), secrets.token_hex(32) + "\n", 0o600)

    node_pw = ensure_node_password()
    name = node_name_for(cfg, node_pw)
    cluster = Cluster(store, version, boot["client-admin.key"], secret, name)
    cluster.ca_pem = ca_pem

    kubeapi.attach(cluster)
    node_ips = cfg.list("node-ip")
    sans = kubeapi.serving_sans(name, socket.gethostname(), node_ips + [local_ipv4()], cfg.list("tls-san"))
    crt_p, key_p, renewed = kubeapi.ensure_serving_cert(tls_dir, ca_pem, boot["server-ca.key"], sans, write_file,
                                                        read_text)
    if renewed:
        log("info", "Updated the API's serving certificate for %s" % ",".join(sans))

    bind = cfg.str("bind-address", "0.0.0.0")
    try:
        httpd = ApiServer((bind, port), ApiHandler)
    except OSError as e:
        store.close()
        fatal("starting kubernetes: preparing server: listen tcp %s:%d: bind: %s" % (bind, port, e.strerror or e))
    httpd.cluster = cluster
    httpd.kubeapi = kubeapi
    httpd.tls_context = kubeapi.server_context(crt_p, key_p, boot["client-ca.crt"])
    threading.Thread(target=httpd.serve_forever, name="api", daemon=True).start()
    log("info", "Running kube-apiserver stand-in on %s:%d (TLS: the Kubernetes API for kubectl; plain HTTP: the "
                "stand-in's own RPC)" % (bind, port))

    mode_txt = cfg.str("write-kubeconfig-mode", "0600")
    try:
        mode = int(str(mode_txt), 8)
    except ValueError:
        fatal("Error: invalid write-kubeconfig-mode %r" % mode_txt)
    kubeconfig = rp(cfg.str("write-kubeconfig", "/etc/rancher/k3s/k3s.yaml"))
    write_kubeconfig(kubeconfig, port, ca_pem, boot["client-admin.crt"], boot["client-admin.key"], mode)
    log("info", "Wrote kubeconfig %s" % cfg.str("write-kubeconfig", "/etc/rancher/k3s/k3s.yaml"))

    ensure_namespaces(store)
    disabled = set(cfg.list("disable"))
    ensure_addons(cluster, disabled)

    stop = threading.Event()
    install_signal_handlers(stop)

    if not cfg.bool("disable-agent"):
        labels, taints = node_labels_and_taints(cfg)
        body = {"name": name, "password": node_pw, "labels": labels, "taints": taints, "role": "server",
                "version": version, "nodeInfo": node_info(version), "hostname": socket.gethostname(),
                "internalIP": node_ips[0] if node_ips else (local_ipv4() if not ROOT else "127.0.0.1"),
                "nodeArgs": ["server"] + redacted_args(argv)}
        cluster.register_node(body, "127.0.0.1", local=True)

        def heartbeat():
            while not stop.wait(HEARTBEAT_SECONDS):
                try:
                    if store.get("", "Node", "", name) is not None:
                        store.renew(name)
                except Exception as e:  # pragma: no cover - keep beating
                    log("error", "heartbeat: %r" % e)
        threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()

    scheduler = Scheduler(cluster, DnsResponder())

    def controllers():
        while not stop.wait(0.5):
            try:
                cluster.flux.tick()
                scheduler.tick()
            except Exception as e:
                log("error", "stand-in controllers: %r" % e)
    threading.Thread(target=controllers, name="controllers", daemon=True).start()

    # Test fault: a k3s that never gets ready (its unit, Type=notify with TimeoutStartSec=0, then never finishes
    # starting). Held while the marker file exists; the tests remove it to let the start complete.
    hang = ROOT + "/etc/k3s-standin/hang-before-ready"
    while os.path.exists(hang) and not stop.is_set():
        log("error", "stand-in fault: not reporting ready while %s exists" % hang)
        stop.wait(1)
    log("info", "k3s is up and running")
    sd_notify("READY=1")
    stop.wait()
    log("info", "Shutting down k3s stand-in")
    httpd.shutdown()
    httpd.server_close()
    store.close()
    return 0
