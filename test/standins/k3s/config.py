# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for k3s's flags and config.yaml handling: the CLI flags, /etc/rancher/k3s/config.yaml and
# config.yaml.d/*.yaml (parsed with PyYAML, every scalar kept a string as k3s takes them as flag values), env
# vars, combined the way k3s does; the token format; the node's identity, password, labels and taints.

import hashlib
import json
import os
import platform
import re
import secrets
import socket
import uuid
import yaml

from common import CONTAINERD_VERSION, fatal, go_arch, log, read_text, rp, write_file


FLAGS = {
    # name: (type, env var)
    "config": ("str", "K3S_CONFIG_FILE"),
    "debug": ("bool", "K3S_DEBUG"),
    "data-dir": ("str", "K3S_DATA_DIR"),
    "token": ("str", "K3S_TOKEN"),
    "token-file": ("str", "K3S_TOKEN_FILE"),
    "agent-token": ("str", "K3S_AGENT_TOKEN"),
    "server": ("str", "K3S_URL"),
    "node-name": ("str", "K3S_NODE_NAME"),
    "with-node-id": ("bool", None),
    "node-label": ("slice", None),
    "node-taint": ("slice", None),
    "node-ip": ("slice", None),
    "node-external-ip": ("slice", None),
    "tls-san": ("slice", None),
    "disable": ("slice", None),
    "write-kubeconfig": ("str", "K3S_KUBECONFIG_OUTPUT"),
    "write-kubeconfig-mode": ("str", "K3S_KUBECONFIG_MODE"),
    "https-listen-port": ("str", None),
    "bind-address": ("str", None),
    "advertise-address": ("str", None),
    "cluster-init": ("bool", "K3S_CLUSTER_INIT"),
    "disable-agent": ("bool", None),
    "kubelet-arg": ("slice", None),
    "kube-apiserver-arg": ("slice", None),
    "kube-controller-manager-arg": ("slice", None),
    "kube-scheduler-arg": ("slice", None),
    "kube-proxy-arg": ("slice", None),
    "flannel-backend": ("str", None),
    "flannel-iface": ("str", None),
    "cluster-cidr": ("slice", None),
    "service-cidr": ("slice", None),
    "cluster-dns": ("slice", None),
    "disable-network-policy": ("bool", None),
    "disable-kube-proxy": ("bool", None),
    "disable-cloud-controller": ("bool", None),
    "disable-helm-controller": ("bool", None),
    "secrets-encryption": ("bool", None),
    "protect-kernel-defaults": ("bool", None),
    "selinux": ("bool", "K3S_SELINUX"),
    "prefer-bundled-bin": ("bool", None),
    "default-local-storage-path": ("str", None),
    "system-default-registry": ("str", None),
    "embedded-registry": ("bool", None),
    "etcd-expose-metrics": ("bool", None),
    "resolv-conf": ("str", "K3S_RESOLV_CONF"),
    "lb-server-port": ("str", "K3S_LB_SERVER_PORT"),
}


ALIASES = {"c": "config", "d": "data-dir", "t": "token", "s": "server", "o": "write-kubeconfig", "i": "node-ip"}


def _norm_flag_name(name):
    return ALIASES.get(name, name)


def parse_cli(argv):
    """[(name, value)] from k3s-style args; unknown flags are accepted (and reported) rather than fatal."""
    out = []
    unknown = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("-") or a in ("-", "--"):
            unknown.append(a)
            continue
        body = a.lstrip("-")
        name, eq, val = body.partition("=")
        name = _norm_flag_name(name)
        typ = FLAGS.get(name, (None, None))[0]
        if typ == "bool":
            out.append((name, val if eq else "true"))
            continue
        if not eq:
            if i < len(argv) and (typ is not None or not argv[i].startswith("-")):
                val = argv[i]
                i += 1
            elif typ is None:
                val = "true"
            else:
                fatal("Incorrect Usage: flag needs an argument: -%s" % name)
        if typ is None:
            unknown.append(a)
        out.append((name, val))
    return out, unknown


def load_config_files(path):
    """config.yaml then config.yaml.d/*.yaml (lexical); later scalars replace, `key+:` appends."""
    result = {}
    files = []
    if os.path.isfile(path):
        files.append(path)
    d = path + ".d"
    if os.path.isdir(d):
        files += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith((".yaml", ".yml"))]
    for f in files:
        try:
            data = yaml.load(read_text(f) or "", Loader=yaml.BaseLoader)  # every scalar a string
        except yaml.YAMLError as e:
            fatal("Error: failed to parse %s: %s" % (f, e))
        if data is None:
            continue
        if not isinstance(data, dict):
            fatal("Error: %s: expected a mapping of flag names to values" % f)
        for key, val in data.items():
            append = key.endswith("+")
            name = _norm_flag_name(key.rstrip("+"))
            if isinstance(val, list):
                vals = ["" if x is None else (json.dumps(x) if isinstance(x, (dict, list)) else str(x)) for x in val]
            elif val is None:
                vals = [""]
            else:
                vals = [str(val)]
            if append and name in result:
                prev = result[name]
                result[name] = (prev if isinstance(prev, list) else [prev]) + vals
            else:
                result[name] = vals if isinstance(val, list) else vals[0]
    return result


class Config(dict):
    def str(self, name, default=None):
        v = self.get(name)
        if isinstance(v, list):
            v = v[-1] if v else None
        return default if v in (None, "") else v

    def bool(self, name):
        return str(self.str(name, "false")).lower() in ("true", "1", "yes", "on")

    def list(self, name):
        v = self.get(name)
        if v is None or v == "":
            return []
        items = v if isinstance(v, list) else [v]
        out = []
        for item in items:
            out += [p.strip() for p in str(item).split(",") if p.strip()]
        return out


def effective_config(argv):
    cli, unknown = parse_cli(argv)
    cfg_path = None
    for name, val in cli:
        if name == "config":
            cfg_path = val
    cfg_path = cfg_path or os.environ.get("K3S_CONFIG_FILE") or "/etc/rancher/k3s/config.yaml"
    from_file = load_config_files(rp(cfg_path))
    cfg = Config()
    for name, val in from_file.items():
        if name not in FLAGS:
            log("info", "Config key %r is accepted and ignored by the k3s stand-in" % name)
        typ = FLAGS.get(name, ("str", None))[0]
        cfg[name] = (val if isinstance(val, list) else [val]) if typ == "slice" else val
    for name, val in cli:
        typ = FLAGS.get(name, ("str", None))[0]
        if typ == "slice":
            cfg[name] = list(cfg.get(name) or []) + [val]
        else:
            cfg[name] = val
    for name, (typ, env) in FLAGS.items():
        if env and name not in cfg and os.environ.get(env):
            cfg[name] = [os.environ[env]] if typ == "slice" else os.environ[env]
    for a in unknown:
        log("warning", "Flag %s is accepted and ignored by the k3s stand-in" % a)
    return cfg


def parse_token(tok):
    """(ca_hash or None, secret) from a full `K10<hash>::<user>:<secret>` token or a short one."""
    tok = (tok or "").strip()
    if tok.startswith("K10") and "::" in tok:
        head, creds = tok[3:].split("::", 1)
        user, sep, pw = creds.partition(":")
        return head.lower(), (pw if sep else creds)
    return None, tok


def resolve_token(cfg):
    tok = cfg.str("token")
    if not tok and cfg.str("token-file"):
        t = read_text(rp(cfg.str("token-file")))
        if t is None:
            fatal("Error: failed to read token file %s" % cfg.str("token-file"))
        tok = t.strip()
    return tok


def node_password_path():
    return rp("/etc/rancher/node/password")


def ensure_node_password():
    p = node_password_path()
    pw = read_text(p)
    if pw is None or not pw.strip():
        pw = secrets.token_hex(16)
        write_file(p, pw + "\n", 0o600)
        return pw
    return pw.strip()


def node_name_for(cfg, password):
    name = cfg.str("node-name") or socket.gethostname().split(".")[0]
    name = name.lower()
    if cfg.bool("with-node-id"):
        name += "-" + hashlib.sha256(password.encode()).hexdigest()[:8]
    return name


def local_ipv4():
    """The first non-loopback IPv4 address of this host (the lab host's bridge address)."""
    try:
        import fcntl
        import struct
        for _, ifname in socket.if_nameindex():
            if ifname == "lo":
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname[:15].encode()))
                except OSError:
                    continue
                ip = socket.inet_ntoa(res[20:24])
                if not ip.startswith("127."):
                    return ip
    except (OSError, ImportError):
        pass
    return "127.0.0.1"


def os_image():
    text = read_text("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else "Linux"


def node_info(version):
    mem_kib = 1024 * 1024
    meminfo = read_text("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M)
    if m:
        mem_kib = int(m.group(1))
    machine_id = (read_text(rp("/etc/machine-id")) or read_text("/etc/machine-id") or uuid.uuid4().hex).strip()
    return {
        "architecture": go_arch(),
        "bootID": (read_text("/proc/sys/kernel/random/boot_id") or str(uuid.uuid4())).strip(),
        "containerRuntimeVersion": CONTAINERD_VERSION,
        "kernelVersion": platform.release(),
        "kubeProxyVersion": version,
        "kubeletVersion": version,
        "machineID": machine_id,
        "operatingSystem": "linux",
        "osImage": os_image(),
        "systemUUID": machine_id,
        "_cpu": str(os.cpu_count() or 1),
        "_memory": "%dKi" % mem_kib,
    }


def parse_taint(spec):
    m = re.fullmatch(r"([^=:]+)(?:=([^:]*))?:(NoSchedule|PreferNoSchedule|NoExecute)", spec.strip())
    if not m:
        return None
    t = {"key": m.group(1)}
    if m.group(2):
        t["value"] = m.group(2)
    t["effect"] = m.group(3)
    return t


def parse_labels(specs):
    out = {}
    for s in specs:
        k, sep, v = s.partition("=")
        if k:
            out[k.strip()] = v.strip()
    return out


def node_labels_and_taints(cfg):
    """The node-label and node-taint settings a node registers with (server and agent alike); a malformed taint
    stops k3s, as the real one does."""
    labels = parse_labels(cfg.list("node-label"))
    taints = []
    for t in cfg.list("node-taint"):
        pt = parse_taint(t)
        if pt is None:
            fatal("Error: invalid taint %r: expected key=value:Effect" % t)
        taints.append(pt)
    return labels, taints


def memory_cgroup_check():
    """Opt-in for the lab: when /run/k3s-standin/cmdline exists (the 'kernel cmdline of this boot', written
    by the lab at boot), fail like real k3s when the cgroup flags are missing from it."""
    text = read_text(rp("/run/k3s-standin/cmdline"))
    if text is None:
        return
    if "cgroup_enable=memory" not in text or "cgroup_memory=1" not in text:
        fatal("Error: failed to find memory cgroup (v2)")


def redacted_args(argv):
    out = []
    skip = False
    for a in argv:
        if skip:
            out.append("********")
            skip = False
            continue
        if re.match(r"^--?(token|agent-token)(=|$)", a):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "=********")
            else:
                out.append(a)
                skip = True
            continue
        out.append(a)
    return out
