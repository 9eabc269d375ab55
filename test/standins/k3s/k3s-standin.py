#!/usr/bin/env python3
# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# A test fixture (Python 3 stdlib only) installed as /usr/local/bin/k3s on the lab's Debian hosts by the
# stand-in install script (test/standins/k3s/install.sh). It imitates what a provisioning tool sees of k3s
# from the outside: `k3s --version`, a `k3s server` with a SQLite datastore, token files, CA, kubeconfig and
# node registration, `k3s agent` joining with the node-password and CA-hash rules, and a `kubectl` subset
# whose output is shaped like real kubectl's. It runs no containers and schedules nothing. The API port speaks
# two protocols: a TLS connection gets the part of the Kubernetes REST API the real kubectl needs (kubeapi.py,
# a module installed next to this file), a plain-HTTP one the stand-in's own JSON RPC that its agents, its
# kubectl imitation and the flux stand-in use. See test/standins/README.md.
#
# Every file path is prefixed with $K3S_STANDIN_ROOT (default empty) so the unit tests can run a server and
# agents as plain processes in temp dirs; $K3S_STANDIN_PORT (default 6443) sets the API port.

import base64
import calendar
import contextlib
import copy
import hashlib
import hmac
import json
import os
import platform
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# install.sh rewrites the next line with the version it was asked to install.
STANDIN_STAMPED_VERSION = ""
DEFAULT_VERSION = "v1.34.3+k3s1"
GO_VERSION = "go1.24.11"
CONTAINERD_VERSION = "containerd://2.1.5-k3s1"

ROOT = os.environ.get("K3S_STANDIN_ROOT", "").rstrip("/")
NOT_READY_AFTER = float(os.environ.get("K3S_STANDIN_NOTREADY_SECONDS", "10"))
HEARTBEAT_SECONDS = float(os.environ.get("K3S_STANDIN_HEARTBEAT_SECONDS", "2"))
RETRY_SECONDS = float(os.environ.get("K3S_STANDIN_RETRY_SECONDS", "2"))

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
NODE_PASSWORD_TEXT = ("Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' "
                      "may not match server node-passwd entry, try enabling a unique node name with the "
                      "--with-node-id flag")
BOOTSTRAP_TEXT = "bootstrap data already found and encrypted with different token"
STANDIN_NOTE = "not supported by the k3s stand-in (a test fixture, see test/standins/README.md)"


def k3s_version():
    return STANDIN_STAMPED_VERSION or os.environ.get("K3S_STANDIN_VERSION") or DEFAULT_VERSION


def version_key(version):
    """v1.35.0+k3s1 -> (1, 35, 0, 10**6, 1): a release candidate (-rcN) sorts before its release."""
    m = re.match(r"^v(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?\+k3s(\d+)$", version or "")
    if not m:
        return (0, 0, 0, 0, 0)
    rc = int(m.group(4)) if m.group(4) else 10 ** 6
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), rc, int(m.group(5)))


def short_commit(version):
    return hashlib.sha256(("k3s-standin:" + version).encode()).hexdigest()[:8]


def rp(path):
    """A path on the (possibly prefixed) root filesystem."""
    return ROOT + path if ROOT and path.startswith("/") else path


# ---------------------------------------------------------------------------------------------------------
# logging, time


def log(level, msg):
    t = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + ".%06d" % int((t % 1) * 1e6)
    off = time.strftime("%z", time.localtime(t))
    stamp += (off[:3] + ":" + off[3:]) if off else "Z"
    text = str(msg).replace("\\", "\\\\").replace('"', '\\"')
    try:
        sys.stderr.write('time="%s" level=%s msg="%s"\n' % (stamp, level, text))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def fatal(msg):
    log("fatal", msg)
    sys.exit(1)


def rfc3339(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def parse_rfc3339(s):
    try:
        return calendar.timegm(time.strptime(str(s)[:19], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, TypeError):
        return None


def human_age(seconds):
    """kubectl's HumanDuration."""
    s = int(max(0, seconds))
    if s < 120:
        return "%ds" % s
    m = s // 60
    if m < 10:
        return "%dm%ds" % (m, s % 60) if s % 60 else "%dm" % m
    if m < 180:
        return "%dm" % m
    h = s // 3600
    if h < 8:
        return "%dh%dm" % (h, m % 60) if m % 60 else "%dh" % h
    if h < 48:
        return "%dh" % h
    if h < 24 * 8:
        return "%dd%dh" % (h // 24, h % 24) if h % 24 else "%dd" % (h // 24)
    if h < 24 * 365 * 2:
        return "%dd" % (h // 24)
    return "%dy" % (h // (24 * 365))


def parse_duration(text, default=None):
    """Go-style durations: 500ms, 30s, 1m30s, 10m0s, 1h. A bare number is seconds."""
    if text is None or text == "":
        return default
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total = 0.0
    pos = 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        if m.start() != pos:
            return default
        n = float(m.group(1))
        total += n / 1000 if m.group(2) == "ms" else n * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else default


def write_file(path, data, mode=0o600):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def sd_notify(msg):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg.encode())
    except OSError as e:
        log("warning", "sd_notify failed: %s" % e)


# ---------------------------------------------------------------------------------------------------------
# a small YAML reader/writer (block and flow style, quoting, block scalars, multi-document) — no PyYAML


class YAMLError(ValueError):
    pass


_INT_RE = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _plain_scalar(s, typed):
    if s in ("", "~", "null", "Null", "NULL"):
        return None
    if not typed:
        return s
    if s in ("true", "True", "TRUE"):
        return True
    if s in ("false", "False", "FALSE"):
        return False
    if _INT_RE.match(s):
        return int(s)
    if _FLOAT_RE.match(s) and any(c.isdigit() for c in s):
        return float(s)
    return s


def _read_quoted(s, pos):
    q = s[pos]
    out = []
    i = pos + 1
    if q == "'":
        while i < len(s):
            c = s[i]
            if c == "'":
                if i + 1 < len(s) and s[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), i + 1
            out.append(c)
            i += 1
        raise YAMLError("unterminated single-quoted string")
    esc = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "/": "/", " ": " ", "e": "\x1b",
           "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n in esc:
                out.append(esc[n])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(n)
            if width:
                out.append(chr(int(s[i + 2:i + 2 + width], 16)))
                i += 2 + width
                continue
            out.append(n)
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise YAMLError("unterminated double-quoted string")


def _strip_comment(s):
    if s.startswith("#"):
        return ""
    m = re.search(r"\s#", s)
    return s[:m.start()] if m else s


def _flow(s, i, typed):
    def ws(j):
        while j < len(s) and s[j] in " \t\n":
            j += 1
        return j

    i = ws(i)
    if i >= len(s):
        raise YAMLError("unexpected end of flow collection")
    c = s[i]
    if c == "[":
        out = []
        i = ws(i + 1)
        if i < len(s) and s[i] == "]":
            return out, i + 1
        while True:
            v, i = _flow(s, i, typed)
            out.append(v)
            i = ws(i)
            if i < len(s) and s[i] == ",":
                i = ws(i + 1)
                if i < len(s) and s[i] == "]":
                    return out, i + 1
                continue
            if i < len(s) and s[i] == "]":
                return out, i + 1
            raise YAMLError("expected , or ] in flow sequence")
    if c == "{":
        out = {}
        i = ws(i + 1)
        if i < len(s) and s[i] == "}":
            return out, i + 1
        while True:
            if s[i] in "\"'":
                key, i = _read_quoted(s, i)
            else:
                j = i
                while j < len(s) and s[j] not in ":,}":
                    j += 1
                key = s[i:j].strip()
                i = j
            i = ws(i)
            val = None
            if i < len(s) and s[i] == ":":
                i = ws(i + 1)
                if i < len(s) and s[i] not in ",}":
                    val, i = _flow(s, i, typed)
            out[str(key)] = val
            i = ws(i)
            if i < len(s) and s[i] == ",":
                i = ws(i + 1)
                if i < len(s) and s[i] == "}":
                    return out, i + 1
                continue
            if i < len(s) and s[i] == "}":
                return out, i + 1
            raise YAMLError("expected , or } in flow mapping")
    if c in "\"'":
        return _read_quoted(s, i)
    j = i
    while j < len(s) and s[j] not in ",]}":
        j += 1
    return _plain_scalar(s[i:j].strip(), typed), j


def _balanced(text):
    depth = 0
    q = None
    i = 0
    while i < len(text):
        c = text[i]
        if q:
            if c == "\\" and q == '"':
                i += 2
                continue
            if c == q:
                q = None
        elif c in "\"'":
            q = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth <= 0 and q is None


class _YamlParser:
    def __init__(self, lines, typed):
        self.lines = lines
        self.i = 0
        self.typed = typed

    @staticmethod
    def _indent(line):
        return len(line) - len(line.lstrip(" "))

    def _blank(self, line):
        s = line.strip()
        return s == "" or s.startswith("#")

    def _skip(self):
        while self.i < len(self.lines) and self._blank(self.lines[self.i]):
            self.i += 1

    def _eof(self):
        return self.i >= len(self.lines)

    def _err(self, msg):
        return YAMLError("line %d: %s" % (self.i + 1, msg))

    def document(self):
        self._skip()
        if self._eof():
            return None
        v = self._node(self._indent(self.lines[self.i]))
        self._skip()
        if not self._eof():
            raise self._err("unexpected content (bad indentation?)")
        return v

    @staticmethod
    def _is_seq(c):
        return c == "-" or c.startswith("- ")

    def _split_key(self, c):
        if not c or c[0] in "[{#-" and not (c[0] == "-" and not self._is_seq(c)):
            return None
        if c[0] in "\"'":
            try:
                k, end = _read_quoted(c, 0)
            except (YAMLError, ValueError):
                return None
            rest = c[end:].lstrip(" ")
            if rest.startswith(":") and (len(rest) == 1 or rest[1] in " \t"):
                return k, rest[1:]
            return None
        m = re.search(r":(\s|$)", c)
        if not m:
            return None
        key = c[:m.start()].rstrip()
        if key == "" or re.search(r"\s#", key):
            return None
        return key, c[m.start() + 1:]

    def _node(self, ind):
        c = self.lines[self.i][ind:]
        if self._is_seq(c):
            return self._seq(ind)
        if self._split_key(c) is not None:
            return self._map(ind)
        self.i += 1
        return self._inline(c, ind - 1)

    def _map(self, ind):
        out = {}
        while True:
            self._skip()
            if self._eof():
                break
            line = self.lines[self.i]
            li = self._indent(line)
            if li < ind:
                break
            if li > ind:
                raise self._err("bad indentation")
            c = line[li:]
            if self._is_seq(c):
                break
            kv = self._split_key(c)
            if kv is None:
                raise self._err("expected 'key: value'")
            key, rest = kv
            self.i += 1
            rest = rest.strip()
            if rest == "" or rest.startswith("#"):
                self._skip()
                if self._eof():
                    out[key] = None
                    continue
                nl = self.lines[self.i]
                ni = self._indent(nl)
                if ni > ind:
                    out[key] = self._node(ni)
                elif ni == ind and self._is_seq(nl[ni:]):
                    out[key] = self._seq(ni)
                else:
                    out[key] = None
            else:
                out[key] = self._inline(rest, ind)
        return out

    def _seq(self, ind):
        out = []
        while True:
            self._skip()
            if self._eof():
                break
            line = self.lines[self.i]
            li = self._indent(line)
            if li != ind:
                if li > ind:
                    raise self._err("bad indentation")
                break
            c = line[li:]
            if not self._is_seq(c):
                break
            rest = c[1:]
            stripped = rest.lstrip(" ")
            col = li + 1 + (len(rest) - len(stripped))
            if stripped == "" or stripped.startswith("#"):
                self.i += 1
                self._skip()
                if self._eof():
                    out.append(None)
                    break
                ni = self._indent(self.lines[self.i])
                out.append(self._node(ni) if ni > ind else None)
            elif self._is_seq(stripped) or (stripped[0] not in "[{" and self._split_key(stripped) is not None):
                self.lines[self.i] = " " * col + stripped
                out.append(self._node(col))
            else:
                self.i += 1
                out.append(self._inline(stripped, ind))
        return out

    def _inline(self, s, parent_ind):
        s = s.strip()
        while s[:1] in ("!", "&"):
            parts = s.split(None, 1)
            s = parts[1] if len(parts) > 1 else ""
        if s[:1] in ("|", ">"):
            return self._block_scalar(s, parent_ind)
        if s[:1] in ("[", "{"):
            text = _strip_comment(s) if _balanced(_strip_comment(s)) else s
            while not _balanced(text) and not self._eof():
                text += " " + self.lines[self.i].strip()
                self.i += 1
            v, end = _flow(text, 0, self.typed)
            if _strip_comment(text[end:]).strip():
                raise self._err("unexpected text after flow collection")
            return v
        if s[:1] in "\"'":
            text = s
            while True:
                try:
                    v, end = _read_quoted(text, 0)
                    break
                except YAMLError:
                    if self._eof():
                        raise
                    text += " " + self.lines[self.i].strip()
                    self.i += 1
            return v
        v = _strip_comment(s).strip()
        # multi-line plain scalar: more-indented continuation lines that are not keys or items
        while not self._eof():
            nl = self.lines[self.i]
            if nl.strip() == "" or self._indent(nl) <= parent_ind:
                break
            nc = nl.strip()
            if nc.startswith("#") or self._is_seq(nc) or self._split_key(nc) is not None:
                break
            v += " " + _strip_comment(nc).strip()
            self.i += 1
        return _plain_scalar(v, self.typed)

    def _block_scalar(self, header, parent_ind):
        style = header[0]
        chomp = "clip"
        explicit = None
        for ch in _strip_comment(header[1:]).strip():
            if ch == "-":
                chomp = "strip"
            elif ch == "+":
                chomp = "keep"
            elif ch.isdigit():
                explicit = int(ch)
        lines = []
        block_ind = None if explicit is None else max(parent_ind, 0) + explicit
        while not self._eof():
            line = self.lines[self.i]
            if line.strip() == "":
                lines.append("")
                self.i += 1
                continue
            li = self._indent(line)
            if block_ind is None:
                if li <= parent_ind:
                    break
                block_ind = li
            if li < block_ind:
                break
            lines.append(line[block_ind:])
            self.i += 1
        trailing = 0
        while lines and lines[-1] == "":
            lines.pop()
            trailing += 1
        if style == "|":
            body = "\n".join(lines)
        else:
            parts = []
            for idx, ln in enumerate(lines):
                if idx == 0:
                    parts.append(ln)
                elif ln == "" or ln.startswith(" ") or lines[idx - 1] == "" or lines[idx - 1].startswith(" "):
                    parts.append("\n" + ln)
                else:
                    parts.append(" " + ln)
            body = "".join(parts)
        if not lines:
            return ""
        if chomp == "strip":
            return body
        if chomp == "keep":
            return body + "\n" * (trailing + 1)
        return body + "\n"


def yaml_load_all(text, typed=True):
    docs = []
    cur = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("%"):
            continue
        if re.match(r"^---(\s|$)", line) or line.rstrip() == "...":
            docs.append(cur)
            cur = []
            rest = line[3:].strip() if line.startswith("---") else ""
            if rest and not rest.startswith("#"):
                cur.append(rest)
            continue
        cur.append(line)
    docs.append(cur)
    out = []
    for lines in docs:
        v = _YamlParser(lines, typed).document()
        if v is not None:
            out.append(v)
    return out


def yaml_load(text, typed=True):
    docs = yaml_load_all(text, typed)
    return docs[0] if docs else None


_YAML_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./@+=-][A-Za-z0-9_./@+=:, ()<>*-]*$")


def _yaml_scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    s = str(v)
    if (s == "" or not _YAML_PLAIN_SAFE.match(s) or s != s.strip() or ": " in s or s.endswith(":")
            or s.lower() in ("true", "false", "null", "yes", "no", "on", "off", "~", "y", "n")
            or _INT_RE.match(s) or _FLOAT_RE.match(s) or s.startswith("- ") or re.match(r"^0[0-9]", s)):
        return json.dumps(s, ensure_ascii=False)
    return s


def yaml_dump(v, indent=0):
    pad = " " * indent
    if isinstance(v, dict):
        if not v:
            return pad + "{}\n"
        out = []
        for k, val in v.items():
            key = _yaml_scalar(str(k))
            if isinstance(val, dict) and val:
                out.append("%s%s:\n%s" % (pad, key, yaml_dump(val, indent + 2)))
            elif isinstance(val, list) and val:
                out.append("%s%s:\n%s" % (pad, key, yaml_dump(val, indent)))
            elif isinstance(val, dict):
                out.append("%s%s: {}\n" % (pad, key))
            elif isinstance(val, list):
                out.append("%s%s: []\n" % (pad, key))
            else:
                out.append("%s%s: %s\n" % (pad, key, _yaml_scalar(val)))
        return "".join(out)
    if isinstance(v, list):
        if not v:
            return pad + "[]\n"
        out = []
        for item in v:
            if isinstance(item, (dict, list)) and item:
                inner = yaml_dump(item, indent + 2)
                out.append(pad + "- " + inner[indent + 2:])
            else:
                out.append("%s- %s\n" % (pad, _yaml_scalar(item) if not isinstance(item, (dict, list))
                                         else ("{}" if isinstance(item, dict) else "[]")))
        return "".join(out)
    return pad + _yaml_scalar(v) + "\n"


# ---------------------------------------------------------------------------------------------------------
# flags and config.yaml, combined the way k3s does (config file first, then CLI flags; env only if unset)

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
            data = yaml_load(read_text(f) or "", typed=False)
        except YAMLError as e:
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


def go_arch():
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
            "armv6l": "arm", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


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


def memory_cgroup_check():
    """Opt-in for the lab: when /run/k3s-standin/cmdline exists (the 'kernel cmdline of this boot', written
    by the lab at boot), fail like real k3s when the cgroup flags are missing from it."""
    text = read_text(rp("/run/k3s-standin/cmdline"))
    if text is None:
        return
    if "cgroup_enable=memory" not in text or "cgroup_memory=1" not in text:
        fatal("Error: failed to find memory cgroup (v2)")


# ---------------------------------------------------------------------------------------------------------
# resources: which kinds exist, their plural names, groups, short names and scope

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


# ---------------------------------------------------------------------------------------------------------
# the datastore


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


# ---------------------------------------------------------------------------------------------------------
# object semantics: normalisation, three-way apply merge, display helpers

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


# ---------------------------------------------------------------------------------------------------------
# the server's API (plain HTTP + JSON; a small RPC-style subset, not the Kubernetes REST API)

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

    def resolve(self, arg):
        a = (arg or "").strip().lower()
        name, _, grp = a.partition(".")
        if grp:
            grp = re.sub(r"^v\d+[a-z0-9]*\.", "", grp)
        for r in BUILTIN:
            if grp and r.group != grp:
                continue
            if name in (r.plural, r.kind.lower()) or name in r.short:
                return r
        for g, kind, namespaced in self.store.kinds():
            if (g, kind) in _BUILTIN_BY_GK or (grp and g != grp):
                continue
            if name in (pluralize(kind), kind.lower()):
                obj = self.store.list(g, kind)[:1]
                ver = split_api_version(obj[0]["apiVersion"])[1] if obj else "v1"
                return Res(kind, g, ver, pluralize(kind), bool(namespaced))
        raise ApiError(404, "UnknownResource", 'the server doesn\'t have a resource type "%s"' % arg)

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
                st.setdefault("conditions", [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
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
        for typ, reason, msg in (("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
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

    def op_get(self, req):
        res = self.resolve(req.get("resource"))
        names = [n for n in (req.get("names") or []) if n]
        ns = None
        if res.namespaced and not req.get("allNamespaces"):
            ns = req.get("namespace") or "default"
        if names:
            items = []
            for n in names:
                obj = self.store.get(res.group, res.kind, (ns or "") if res.namespaced else "", n)
                if obj is None:
                    raise self.not_found(res, n)
                items.append(self.view(obj))
        else:
            items = [self.view(o) for o in self.store.list(res.group, res.kind, ns if res.namespaced else None)
                     if label_selector_match(o["metadata"].get("labels"), req.get("labelSelector"))]
        return {"resource": res.to_json(), "items": items}

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

    def apply_one(self, obj, default_ns, mode="apply", server_side=False):
        res, ns, name = self._prepare(obj, default_ns)
        warning = None
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
            if mode == "apply" and not server_side:
                raw = copy.deepcopy(obj)
                ann = (raw.get("metadata") or {}).get("annotations") or {}
                ann.pop(LAST_APPLIED, None)
                if not ann and "annotations" in (raw.get("metadata") or {}):
                    raw["metadata"].pop("annotations")
                new.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = \
                    json.dumps(raw, separators=(",", ":"), sort_keys=True) + "\n"
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
            elif server_side:
                # kubectl apply --server-side: fields sent are set, others kept; no last-applied annotation.
                merged = three_way(content_of(live), None, new)
            else:
                last_txt = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
                last = None
                if last_txt:
                    try:
                        last = normalize_incoming(json.loads(last_txt), res)
                    except ValueError:
                        last = None
                else:
                    warning = ("Warning: resource %s/%s is missing the kubectl.kubernetes.io/last-applied-configuration "
                               "annotation which is required by kubectl apply. kubectl apply should only be used on "
                               "resources created declaratively by either kubectl create --save-config or kubectl "
                               "apply. The missing annotation will be patched automatically." % (res.plural, name))
                merged = three_way(content_of(live), last, new)
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
            return {"result": "configured", "display": "%s/%s" % (res.singular, name), "object": result,
                    "warning": warning}

    def op_apply(self, req):
        objs = req.get("objects") or []
        out = []
        for obj in objs:
            try:
                out.append(self.apply_one(obj, req.get("namespace"), req.get("mode", "apply"),
                                          bool(req.get("serverSide"))))
            except ApiError as e:
                out.append({"error": e.status()})
                break
        return {"results": out}

    def delete_object(self, res, ns, name):
        with self.store.txn():
            if not self.store.delete(res.group, res.kind, ns, name):
                raise self.not_found(res, name)
            if res.kind == "Node" and res.group == "":
                self.store.delete("", "Secret", "kube-system", "%s.node-password.k3s" % name)
                self.store.db.execute("DELETE FROM leases WHERE node=?", (name,))
            if res.kind == "Namespace" and res.group == "":
                self.store.db.execute("DELETE FROM objects WHERE namespace=?", (name,))

    def op_delete(self, req):
        res = self.resolve(req.get("resource"))
        name = req.get("name")
        ns = (req.get("namespace") or "default") if res.namespaced else ""
        if res.kind == "Namespace" and res.group == "" and name in ("default", "kube-system", "kube-public"):
            raise ApiError(403, "Forbidden", 'namespaces "%s" is forbidden: this namespace may not be deleted' % name)
        self.delete_object(res, ns, name)
        return {"display": '%s "%s" deleted' % (res.singular, name)}

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


class ApiServer(ThreadingHTTPServer):
    """One port, two protocols: a connection whose first byte is a TLS handshake is served over TLS (the Kubernetes
    REST API for the real kubectl), any other as plain HTTP (the stand-in's own RPC)."""
    daemon_threads = True
    tls_context = None
    kubeapi = None

    def finish_request(self, request, client_address):
        conn = request
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body are separate writes
        except OSError:
            pass
        if self.tls_context is not None:
            try:
                request.settimeout(10)
                first = request.recv(1, socket.MSG_PEEK)
                if first == b"\x16":
                    conn = self.tls_context.wrap_socket(request, server_side=True)
                conn.settimeout(300)
            except (OSError, ssl.SSLError) as e:
                log("info", "http: TLS handshake error from %s:%d: %s" % (client_address[0], client_address[1],
                                                                          getattr(e, "reason", None) or e))
                return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass


class ApiHandler(BaseHTTPRequestHandler):
    server_version = "k3s-standin"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    def _send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self):
        cluster = self.server.cluster
        h = self.headers.get("Authorization", "")
        if h.startswith("Bearer "):
            try:
                presented = base64.b64decode(h[7:].strip()).decode()
            except ValueError:
                return None
            return "admin" if hmac.compare_digest(presented, cluster.admin_key) else None
        if h.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
            except ValueError:
                return None
            return "node" if hmac.compare_digest(pw, cluster.token_secret) else None
        return None

    def setup(self):
        super().setup()
        self.tls = isinstance(self.connection, ssl.SSLSocket)
        if self.tls:
            self.protocol_version = "HTTP/1.1"  # kubectl keeps its connections

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method):
        cluster = self.server.cluster
        path = self.path.split("?", 1)[0]
        if self.tls and not path.startswith(("/cacerts", "/v1-k3s/", "/standin/")):
            try:
                code, body, ctype = self.server.kubeapi.handle(self, method)
            except Exception as e:  # keep serving; report like an apiserver would
                log("error", "stand-in API error on %s %s: %r" % (method, path, e))
                code, body, ctype = 500, ApiError(500, "InternalError", "an error on the server (%s) has prevented "
                                                  "the request from succeeding" % e).status(), "application/json"
            return self._send(code, body, ctype)
        try:
            if method == "GET":
                if path == "/ping":
                    return self._send(200, "pong", "text/plain")
                if path in ("/readyz", "/livez", "/healthz"):
                    return self._send(200, "ok", "text/plain")
                if path == "/cacerts":
                    return self._send(200, cluster.ca_pem, "text/plain")
                if path == "/version":
                    v = cluster.version
                    m = re.match(r"v(\d+)\.(\d+)", v)
                    return self._send(200, {"major": m.group(1) if m else "1", "minor": m.group(2) if m else "34",
                                            "gitVersion": v, "gitCommit": short_commit(v), "gitTreeState": "clean",
                                            "buildDate": "2025-12-01T00:00:00Z", "goVersion": GO_VERSION,
                                            "compiler": "gc", "platform": "linux/%s" % go_arch()})
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise ApiError(400, "BadRequest", "request body is not JSON")
            who = self._auth()
            if path.startswith("/v1-k3s/standin/"):
                if who != "node":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                if path == "/v1-k3s/standin/register":
                    return self._send(200, cluster.register_node(body, self.client_address[0]))
                if path == "/v1-k3s/standin/heartbeat":
                    return self._send(200, cluster.heartbeat(body))
            elif path.startswith("/standin/v1/"):
                if who != "admin":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                op = path[len("/standin/v1/"):]
                if op == "get":
                    return self._send(200, cluster.op_get(body))
                if op == "apply":
                    return self._send(200, cluster.op_apply(body))
                if op == "delete":
                    return self._send(200, cluster.op_delete(body))
                if op == "resolve":
                    return self._send(200, cluster.resolve(body.get("resource")).to_json())
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as e:
            return self._send(e.code, e.status())
        except Exception as e:  # keep serving; report like an apiserver would
            log("error", "stand-in API error on %s %s: %r" % (method, path, e))
            return self._send(500, ApiError(500, "InternalError", "an error on the server (%s) has prevented the "
                                            "request from succeeding" % e).status())


# ---------------------------------------------------------------------------------------------------------
# the stand-in Flux controllers: run inside the server, like Flux's controllers run inside the cluster.
# Sources come from a JSON file on the server host (/var/lib/flux-standin/repo.json) that stands in for
# the GitOps repository; see test/standins/README.md.

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
                            "prune": True, "sourceRef": {"kind": "GitRepository", "name": root["spec"]["sourceRef"]["name"]},
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
                        result["status"] = {"conditions": [_cond("Ready", bool(e.get("ready")),
                                                                 "Valid" if e.get("ready") else "ValidationFailed",
                                                                 e.get("message") or ("store validated"
                                                                                      if e.get("ready") else "not ready"))]}
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
            art = self.store.artifact(src.get("namespace") or root["metadata"].get("namespace", ""), src.get("name", ""))
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


# ---------------------------------------------------------------------------------------------------------
# the stand-in scheduler and kubelet: Pods for Deployments, StatefulSets and DaemonSets that have a pod template,
# bound to a node the way kube-scheduler would choose (nodeSelector, required node affinity, NoSchedule and
# NoExecute taints against tolerations, PreferNoSchedule avoided, then the node with the fewest pods), so where a
# workload runs can be read from its pods' spec.nodeName as on a real cluster. Nothing runs in them: a bound pod
# is reported Running and Ready at once; a pod no node fits stays Pending/Unschedulable with the scheduler's
# message. No ReplicaSets (pods are owned by their workload directly). CronJobs never run, so they have no pods.

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


# ---------------------------------------------------------------------------------------------------------
# the Pi-hole stand-in's DNS: while a Running hostNetwork pod with a UDP containerPort 53 is bound to this node
# (Pi-hole on pi-k3s), the server answers DNS on UDP port 53 of this host ($K3S_STANDIN_DNS_PORT for tests):
# every A question gets one answer (198.51.100.53, a documentation address, or "answer" from the control file),
# AAAA gets none. Tests steer it with /var/lib/flux-standin/dns.json: {"rcode": "SERVFAIL"|"REFUSED"|"NXDOMAIN"}
# or {"drop": true} (no reply at all). Not a resolver: nothing is forwarded to Unbound or the internet.

DNS_PORT = int(os.environ.get("K3S_STANDIN_DNS_PORT", "53"))
DNS_CONTROL = "/var/lib/flux-standin/dns.json"
DNS_DEFAULT_ANSWER = "198.51.100.53"
DNS_RCODES = {"NOERROR": 0, "SERVFAIL": 2, "NXDOMAIN": 3, "REFUSED": 5}


def dns_reply(query, control):
    """The reply to one DNS query (bytes), or None to stay silent."""
    if len(query) < 12 or control.get("drop"):
        return None
    qid, flags, qdcount = query[0:2], int.from_bytes(query[2:4], "big"), int.from_bytes(query[4:6], "big")
    if flags & 0x8000 or qdcount != 1:
        return None
    pos = 12
    while pos < len(query) and query[pos] != 0:
        pos += 1 + query[pos]
    if pos + 5 > len(query):
        return None
    question = query[12:pos + 5]
    qtype = int.from_bytes(query[pos + 1:pos + 3], "big")
    qclass = int.from_bytes(query[pos + 3:pos + 5], "big")
    rcode = DNS_RCODES.get(str(control.get("rcode", "NOERROR")).upper(), 2)
    answers = b""
    count = 0
    if rcode == 0 and qtype == 1 and qclass == 1:
        try:
            addr = socket.inet_aton(str(control.get("answer") or DNS_DEFAULT_ANSWER))
        except OSError:
            addr = socket.inet_aton(DNS_DEFAULT_ANSWER)
        answers = b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + (60).to_bytes(4, "big") + \
            (4).to_bytes(2, "big") + addr
        count = 1
    rflags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | rcode
    header = qid + rflags.to_bytes(2, "big") + (1).to_bytes(2, "big") + count.to_bytes(2, "big") + b"\x00\x00\x00\x00"
    return header + question + answers


class DnsResponder:
    def __init__(self, port=DNS_PORT):
        self.port = port
        self.sock = None
        self.failed = False

    def set_serving(self, on):
        if on and self.sock is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("0.0.0.0", self.port))
            except OSError as e:
                s.close()
                if not self.failed:
                    log("error", "pihole stand-in: cannot listen on udp/%d: %s" % (self.port, e.strerror or e))
                self.failed = True
                return
            s.settimeout(0.5)
            self.sock = s
            self.failed = False
            threading.Thread(target=self._serve, args=(s,), name="dns", daemon=True).start()
            log("info", "pihole stand-in: answering DNS on udp/%d (a hostNetwork pod with port 53/UDP runs here)"
                % self.port)
        elif not on and self.sock is not None:
            s, self.sock = self.sock, None
            s.close()
            log("info", "pihole stand-in: stopped answering DNS on udp/%d (no pod with port 53/UDP here)" % self.port)

    def _serve(self, s):
        while self.sock is s:
            try:
                data, peer = s.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            text = read_text(rp(DNS_CONTROL))
            try:
                control = json.loads(text) if text else {}
            except ValueError:
                control = {}
            reply = dns_reply(data, control if isinstance(control, dict) else {})
            if reply is not None:
                try:
                    s.sendto(reply, peer)
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------------------------
# k3s server


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


def set_process_name(name):
    """Show up as k3s-server / k3s-agent in ps -o comm and pgrep, like the real k3s does."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError, ImportError):
        pass


def install_signal_handlers(stop):
    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def load_kubeapi():
    """kubeapi.py, the stand-in's Kubernetes REST API: installed in ../lib/k3s-standin/ of the k3s binary's own
    directory (/usr/local/lib/k3s-standin/ for /usr/local/bin/k3s), or next to this file (the repository)."""
    here = os.path.dirname(os.path.realpath(__file__))
    for d in (os.path.join(os.path.dirname(here), "lib", "k3s-standin"), here):
        if os.path.exists(os.path.join(d, "kubeapi.py")):
            if d not in sys.path:
                sys.path.insert(0, d)
            break
    sys.dont_write_bytecode = True  # no __pycache__ left in the repository or in /usr/local/lib
    try:
        import kubeapi
    except ImportError as e:
        fatal("the k3s stand-in's kubeapi.py module is missing (%s): install it with the stand-in install script" % e)
    kubeapi.bind(sys.modules[__name__])
    return kubeapi


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
    kubeapi = load_kubeapi()
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
        labels = parse_labels(cfg.list("node-label"))
        taints = []
        for t in cfg.list("node-taint"):
            pt = parse_taint(t)
            if pt is None:
                fatal("Error: invalid taint %r: expected key=value:Effect" % t)
            taints.append(pt)
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


# ---------------------------------------------------------------------------------------------------------
# k3s agent

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
    labels = parse_labels(cfg.list("node-label"))
    taints = []
    for t in cfg.list("node-taint"):
        pt = parse_taint(t)
        if pt is None:
            fatal("Error: invalid taint %r: expected key=value:Effect" % t)
        taints.append(pt)
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
            log("info", 'Waiting to retrieve agent configuration; server is not ready: Get "%s/v1-k3s/serving-kubelet.crt":'
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


# ---------------------------------------------------------------------------------------------------------
# kubectl (a subset, with real kubectl's output shapes and error texts)


class KubectlExit(Exception):
    def __init__(self, code, message=None):
        super().__init__(message or "")
        self.code = code
        self.message = message


KUBECTL_VALUE_FLAGS = {"n": "namespace", "namespace": "namespace", "o": "output", "output": "output",
                       "kubeconfig": "kubeconfig", "f": "filename", "filename": "filename", "l": "selector",
                       "selector": "selector", "for": "for", "timeout": "timeout", "field-manager": "field-manager",
                       "from-literal": "from-literal", "from-file": "from-file", "type": "type",
                       "dry-run": "dry-run", "context": "context", "request-timeout": "request-timeout",
                       "s": "server", "server": "server", "raw": "raw", "cluster": "cluster", "user": "user",
                       "validate": "validate", "grace-period": "grace-period", "field-selector": "field-selector",
                       "sort-by": "sort-by", "token": "token", "save-config": "save-config"}
KUBECTL_BOOL_FLAGS = {"A": "all-namespaces", "all-namespaces": "all-namespaces", "overwrite": "overwrite",
                      "all": "all", "ignore-not-found": "ignore-not-found", "wait": "wait",
                      "no-headers": "no-headers", "show-labels": "show-labels", "client": "client",
                      "w": "watch", "watch": "watch", "insecure-skip-tls-verify": "insecure-skip-tls-verify",
                      "force": "force", "server-side": "server-side", "ignore-daemonsets": "ignore-daemonsets",
                      "delete-emptydir-data": "delete-emptydir-data",
                      "force-conflicts": "force-conflicts", "h": "help", "help": "help"}
KUBECTL_MULTI = ("from-literal", "from-file", "filename")


def parse_kubectl(argv):
    opts = {}
    args = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            args += argv[i:]
            break
        if not a.startswith("-") or a == "-":
            args.append(a)
            continue
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
        else:
            name, val = a[1:2], a[2:]
            eq = "=" if val else ""
            if val.startswith("="):
                val = val[1:]
        if name in KUBECTL_BOOL_FLAGS:
            key = KUBECTL_BOOL_FLAGS[name]
            opts[key] = (val.lower() != "false") if eq else True
            continue
        if name in KUBECTL_VALUE_FLAGS:
            key = KUBECTL_VALUE_FLAGS[name]
            if not eq:
                if i >= len(argv):
                    raise KubectlExit(1, "error: flag needs an argument: --%s" % name)
                val = argv[i]
                i += 1
            if key in KUBECTL_MULTI:
                opts.setdefault(key, []).append(val)
            else:
                opts[key] = val
            continue
        raise KubectlExit(1, "error: unknown flag: %s\nSee 'kubectl --help' for usage." % a.split("=")[0])
    return opts, args


def find_kubeconfig(opts):
    if opts.get("kubeconfig"):
        return opts["kubeconfig"]
    env = os.environ.get("KUBECONFIG")
    if env:
        for p in env.split(":"):
            if p and os.path.exists(p):
                return p
        return env.split(":")[0]
    if not ROOT:
        home = os.path.expanduser("~/.kube/config")
        if os.path.exists(home):
            return home
    k3s = rp("/etc/rancher/k3s/k3s.yaml")
    if os.path.exists(k3s):
        return k3s
    return None


class Kube:
    def __init__(self, opts):
        self.opts = opts
        path = find_kubeconfig(opts)
        self.hostport = "localhost:8080"
        self.base = None
        self.cred = None
        if path is None:
            if opts.get("server"):
                self.base = to_http_base(opts["server"])
            return
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise KubectlExit(1, 'error: error loading config file "%s": open %s: no such file or directory' % (path, path))
        except PermissionError:
            raise KubectlExit(1, 'error: error loading config file "%s": open %s: permission denied' % (path, path))
        try:
            kc = yaml_load(text, typed=False) or {}
        except YAMLError as e:
            raise KubectlExit(1, 'error: error loading config file "%s": %s' % (path, e))
        ctx_name = opts.get("context") or kc.get("current-context")
        ctx = next((c.get("context") or {} for c in (kc.get("contexts") or []) if c.get("name") == ctx_name), None)
        if ctx is None and opts.get("context"):
            raise KubectlExit(1, 'error: context "%s" does not exist' % opts["context"])
        ctx = ctx or {}
        clusters = kc.get("clusters") or []
        users = kc.get("users") or []
        cl = next((c.get("cluster") or {} for c in clusters if c.get("name") == ctx.get("cluster")),
                  (clusters[0].get("cluster") or {}) if clusters else {})
        us = next((u.get("user") or {} for u in users if u.get("name") == ctx.get("user")),
                  (users[0].get("user") or {}) if users else {})
        server = opts.get("server") or cl.get("server")
        if server:
            self.base = to_http_base(server)
            self.hostport = self.base[len("http://"):]
        self.cred = us.get("client-key-data") or (b64(us["token"]) if us.get("token") else None)

    def call(self, op, body):
        if not self.base:
            raise KubectlExit(1, "The connection to the server %s was refused - did you specify the right host or port?"
                              % self.hostport)
        headers = {"Authorization": "Bearer " + self.cred} if self.cred else {}
        try:
            code, text = http_call(self.base, "POST", "/standin/v1/" + op, body, headers, timeout=30)
        except ConnError as e:
            if "refused" in str(e):
                raise KubectlExit(1, "The connection to the server %s was refused - did you specify the right host or "
                                  "port?" % self.hostport)
            raise KubectlExit(1, "Unable to connect to the server: dial tcp %s: %s" % (self.hostport, e))
        try:
            data = json.loads(text)
        except ValueError:
            raise KubectlExit(1, "error: unexpected answer from the server: %s" % text[:200])
        if code == 401:
            raise KubectlExit(1, "error: You must be logged in to the server (Unauthorized)")
        if code != 200:
            raise status_error(data)
        return data

    def raw_get(self, path):
        if not self.base:
            raise KubectlExit(1, "The connection to the server %s was refused - did you specify the right host or port?"
                              % self.hostport)
        try:
            code, text = http_call(self.base, "GET", path)
        except ConnError:
            raise KubectlExit(1, "The connection to the server %s was refused - did you specify the right host or port?"
                              % self.hostport)
        if code != 200:
            raise KubectlExit(1, "Error from server (NotFound): the server could not find the requested resource")
        return text


def status_error(st):
    if st.get("reason") == "UnknownResource":
        return KubectlExit(1, "error: " + st.get("message", ""))
    return KubectlExit(1, "Error from server (%s): %s" % (st.get("reason", "InternalError"), st.get("message", "")))


def table(rows, headers, no_headers=False):
    data = ([headers] if not no_headers else []) + rows
    if not data:
        return ""
    widths = [max(len(str(r[i])) for r in data) for i in range(len(data[0]))]
    lines = []
    for r in data:
        cells = [str(c).ljust(widths[i] + 3) if i < len(r) - 1 else str(c) for i, c in enumerate(r)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def cond_of(obj, typ="Ready"):
    for c in ((obj.get("status") or {}).get("conditions") or []):
        if c.get("type") == typ:
            return c
    return None


def age_of(obj):
    t = parse_rfc3339(obj["metadata"].get("creationTimestamp"))
    return human_age(time.time() - t) if t else "<unknown>"


def table_columns(res, items, wide=True):
    """kubectl's columns for a kind: (headers, rows, wide_from), the columns from wide_from on being -o wide's.
    Shared by the imitation's tables and the Table objects the Kubernetes API serves the real kubectl."""
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
            row = [o["metadata"]["name"], status, ",".join(roles) or "<none>", age_of(o), info.get("kubeletVersion", "")]
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


def print_table(res, items, opts, all_ns):
    headers, rows, _ = table_columns(res, items, opts.get("output") == "wide")
    if all_ns and res["namespaced"]:
        headers = ["NAMESPACE"] + headers
        rows = [[o["metadata"].get("namespace", "")] + r for o, r in zip(items, rows)]
    if opts.get("show-labels"):
        headers = headers + ["LABELS"]
        rows = [r + [",".join("%s=%s" % kv for kv in sorted((o["metadata"].get("labels") or {}).items())) or "<none>"]
                for o, r in zip(items, rows)]
    sys.stdout.write(table(rows, headers, opts.get("no-headers")))


def jsonpath(template, data):
    out = []
    pos = 0
    for m in re.finditer(r"\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}", template):
        out.append(template[pos:m.start()])
        pos = m.end()
        expr = m.group(1).strip()
        if expr.startswith('"'):
            out.append(json.loads(expr))
            continue
        if expr.startswith(("range", "end")) or "?(" in expr:
            raise KubectlExit(1, "error: jsonpath %r is %s" % (expr, STANDIN_NOTE))
        if expr.startswith("$"):
            expr = expr[1:]
        tokens = re.findall(r"\.((?:\\\.|[^.\[])+)|\[(\*|-?\d+|'[^']*'|\"[^\"]*\")\]", expr)
        vals = [data]
        for name, idx in tokens:
            nxt = []
            for v in vals:
                if name:
                    key = name.replace("\\.", ".")
                    if key == "*":
                        nxt += list(v.values()) if isinstance(v, dict) else (v if isinstance(v, list) else [])
                    elif isinstance(v, dict) and key in v:
                        nxt.append(v[key])
                elif idx == "*":
                    nxt += v if isinstance(v, list) else (list(v.values()) if isinstance(v, dict) else [])
                elif idx[:1] in "'\"":
                    if isinstance(v, dict) and idx[1:-1] in v:
                        nxt.append(v[idx[1:-1]])
                elif isinstance(v, list):
                    try:
                        nxt.append(v[int(idx)])
                    except IndexError:
                        pass
            vals = nxt
        out.append(" ".join(json.dumps(v) if isinstance(v, (dict, list)) else
                            ("true" if v is True else "false" if v is False else "" if v is None else str(v))
                            for v in vals))
    out.append(template[pos:])
    return "".join(out)


def output_objects(res, items, opts, single, all_ns):
    fmt = opts.get("output") or ""
    if single and len(items) == 1:
        payload = items[0]
    else:
        payload = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
    if fmt == "json":
        sys.stdout.write(json.dumps(payload, indent=4) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml_dump(payload))
    elif fmt == "name":
        for o in items:
            sys.stdout.write("%s/%s\n" % (res["kind"].lower() + ("." + res["group"] if res["group"] else ""),
                                          o["metadata"]["name"]))
    elif fmt.startswith("jsonpath="):
        tmpl = fmt[len("jsonpath="):]
        if len(tmpl) >= 2 and tmpl[0] == tmpl[-1] and tmpl[0] in "'\"":
            tmpl = tmpl[1:-1]
        if "{" not in tmpl:
            tmpl = "{" + tmpl + "}"
        sys.stdout.write(jsonpath(tmpl, payload))
    elif fmt in ("", "wide"):
        print_table(res, items, opts, all_ns)
    else:
        raise KubectlExit(1, "error: output format %r is %s" % (fmt, STANDIN_NOTE))


def split_targets(args):
    """['node', 'a'] / ['node/a'] / ['nodes', 'a', 'b'] -> (resource, [names])"""
    if not args:
        raise KubectlExit(1, "You must specify the type of resource to get. Use \"kubectl api-resources\" for a complete "
                             "list of supported resources.\n\nerror: Required resource not specified.")
    if "/" in args[0]:
        res = args[0].split("/", 1)[0]
        names = []
        for a in args:
            r, _, n = a.partition("/")
            if r != res:
                raise KubectlExit(1, "error: mixed resource types are %s" % STANDIN_NOTE)
            names.append(n)
        return res, names
    if "," in args[0] and len(args) > 1:
        raise KubectlExit(1, "error: names with comma-separated resource types are %s" % STANDIN_NOTE)
    return args[0], args[1:]


def k_get(kube, opts, args):
    if opts.get("raw"):
        sys.stdout.write(kube.raw_get(opts["raw"]))
        return 0
    if opts.get("watch"):
        raise KubectlExit(1, "error: kubectl get --watch is %s" % STANDIN_NOTE)
    resource, names = split_targets(args)
    all_ns = bool(opts.get("all-namespaces"))
    if "," in resource:
        return k_get_types(kube, opts, [r for r in resource.split(",") if r], all_ns)
    req = {"resource": resource, "names": names, "namespace": opts.get("namespace"), "allNamespaces": all_ns,
           "labelSelector": opts.get("selector")}
    try:
        data = kube.call("get", req)
    except KubectlExit as e:
        if opts.get("ignore-not-found") and e.message and "(NotFound)" in e.message:
            return 0
        raise
    items = data["items"]
    res = data["resource"]
    if not items and not names:
        fmt = opts.get("output") or ""
        if fmt in ("json", "yaml"):
            return output_objects(res, items, opts, False, all_ns) or 0
        if fmt in ("", "wide"):
            if res["namespaced"] and not all_ns:
                sys.stderr.write("No resources found in %s namespace.\n" % (opts.get("namespace") or "default"))
            else:
                sys.stderr.write("No resources found\n")
        return 0
    output_objects(res, items, opts, len(names) == 1, all_ns)
    return 0


def k_get_types(kube, opts, resources, all_ns):
    """kubectl get a,b,c: every type is read before anything is printed (an unknown type prints nothing), and
    the objects come as one List whose items carry their kind."""
    fmt = opts.get("output") or ""
    if fmt not in ("json", "yaml", "name"):
        raise KubectlExit(1, "error: comma-separated resource types with output %r are %s" % (fmt, STANDIN_NOTE))
    found = []
    for resource in resources:
        req = {"resource": resource, "names": [], "namespace": opts.get("namespace"), "allNamespaces": all_ns,
               "labelSelector": opts.get("selector")}
        data = kube.call("get", req)
        found.append((data["resource"], data["items"]))
    if fmt == "name":
        for res, items in found:
            output_objects(res, items, opts, False, all_ns)
        return 0
    items = [o for _, objs in found for o in objs]
    output_objects(found[0][0], items, opts, False, all_ns)
    return 0


def read_manifests(opts):
    files = opts.get("filename") or []
    if not files:
        raise KubectlExit(1, "error: must specify one of -f and -k")
    objs = []
    for f in files:
        if f == "-":
            text = sys.stdin.read()
            where = "STDIN"
        else:
            try:
                with open(f, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as e:
                raise KubectlExit(1, 'error: the path "%s" does not exist' % f if isinstance(e, FileNotFoundError)
                                  else "error: %s" % e)
            where = f
        text_s = text.strip()
        if not text_s:
            raise KubectlExit(1, "error: no objects passed to apply")
        try:
            docs = [json.loads(text_s)] if text_s[:1] in "{[" else yaml_load_all(text, typed=True)
        except (ValueError, YAMLError) as e:
            raise KubectlExit(1, 'error: error parsing %s: %s' % (where, e))
        for d in docs:
            if isinstance(d, list):
                objs += d
            elif isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
                objs += d["items"]
            elif isinstance(d, dict):
                objs.append(d)
        for o in objs:
            missing = [k for k in ("apiVersion", "kind") if not (isinstance(o, dict) and o.get(k))]
            if missing:
                raise KubectlExit(1, 'error: error validating "%s": error validating data: [%s]; if you choose to '
                                  'ignore these errors, turn validation off with --validate=false' %
                                  (where, ", ".join("%s not set" % k for k in missing)))
    return objs


def k_apply(kube, opts, args, mode="apply"):
    objs = read_manifests(opts)
    server_side = bool(opts.get("server-side")) and mode == "apply"
    data = kube.call("apply", {"objects": objs, "namespace": opts.get("namespace"), "mode": mode,
                               "serverSide": server_side})
    rc = 0
    for r in data["results"]:
        if "error" in r:
            st = r["error"]
            verb = "creating" if mode == "create" else "applying"
            if st.get("reason") == "NotFound" and "namespaces" in st.get("message", ""):
                sys.stderr.write('Error from server (NotFound): error when creating "%s": %s\n' %
                                 ("STDIN" if "-" in (opts.get("filename") or []) else opts["filename"][0],
                                  st.get("message")))
            else:
                sys.stderr.write("Error from server (%s): error when %s: %s\n" % (st.get("reason"), verb,
                                                                                 st.get("message")))
            rc = 1
            continue
        if r.get("warning"):
            sys.stderr.write(r["warning"] + "\n")
        fmt = opts.get("output")
        if fmt in ("json", "yaml", "name"):
            res = {"kind": r["object"]["kind"], "group": split_api_version(r["object"]["apiVersion"])[0]}
            output_objects(dict(res, namespaced=True), [r["object"]], opts, True, False)
        else:
            # server-side apply says the same whether or not anything changed, as kubectl does
            sys.stdout.write("%s %s\n" % (r["display"], "serverside-applied" if server_side else r["result"]))
    return rc


def k_create(kube, opts, args):
    if opts.get("filename"):
        return k_apply(kube, opts, args, mode="create")
    if not args:
        raise KubectlExit(1, "error: Required resource not specified.")
    dry = (opts.get("dry-run") or "none") in ("client", "true")
    what = args[0]
    if what in ("namespace", "ns"):
        if len(args) < 2:
            raise KubectlExit(1, "error: exactly one NAME is required, got 0")
        obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args[1]}}
    elif what == "secret" and len(args) >= 2 and args[1] == "generic":
        if len(args) < 3:
            raise KubectlExit(1, "error: exactly one NAME is required, got 0")
        data = {}
        for lit in opts.get("from-literal") or []:
            k, sep, v = lit.partition("=")
            if not sep or not k:
                raise KubectlExit(1, "error: invalid literal source %s, expected key=value" % lit)
            data[k] = b64(v)
        for spec in opts.get("from-file") or []:
            k, sep, p = spec.partition("=")
            if not sep:
                k, p = os.path.basename(spec), spec
            try:
                with open(p, "rb") as fh:
                    data[k] = b64(fh.read())
            except OSError as e:
                raise KubectlExit(1, "error: error reading %s: %s" % (p, e.strerror))
        obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": args[2]}, "type": opts.get("type", "Opaque")}
        if data:
            obj["data"] = data
        if opts.get("namespace"):
            obj["metadata"]["namespace"] = opts["namespace"]
    else:
        raise KubectlExit(1, "error: kubectl create %s is %s" % (" ".join(args[:2]), STANDIN_NOTE))
    if dry:
        obj["metadata"]["creationTimestamp"] = None
        fmt = opts.get("output")
        if fmt == "json":
            sys.stdout.write(json.dumps(obj, indent=4) + "\n")
        elif fmt == "yaml":
            sys.stdout.write(yaml_dump(obj))
        else:
            sys.stdout.write("%s/%s created (dry run)\n" % (obj["kind"].lower(), obj["metadata"]["name"]))
        return 0
    data = kube.call("apply", {"objects": [obj], "namespace": opts.get("namespace"), "mode": "create"})
    r = data["results"][0]
    if "error" in r:
        raise status_error(r["error"])
    sys.stdout.write("%s created\n" % r["display"])
    return 0


def k_delete(kube, opts, args):
    if opts.get("filename"):
        objs = read_manifests(opts)
        targets = []
        for o in objs:
            grp, _ = split_api_version(o["apiVersion"])
            targets.append((o["kind"] + ("." + grp if grp else ""), (o.get("metadata") or {}).get("name"),
                            (o.get("metadata") or {}).get("namespace") or opts.get("namespace")))
    else:
        resource, names = split_targets(args)
        if not names:
            raise KubectlExit(1, "error: resource(s) were provided, but no name was specified")
        targets = [(resource, n, opts.get("namespace")) for n in names]
    rc = 0
    for resource, name, ns in targets:
        try:
            r = kube.call("delete", {"resource": resource, "name": name, "namespace": ns})
            sys.stdout.write(r["display"] + "\n")
        except KubectlExit as e:
            if opts.get("ignore-not-found") and e.message and "(NotFound)" in e.message:
                continue
            sys.stderr.write((e.message or "") + "\n")
            rc = 1
    return rc


def _get_one(kube, resource, name, ns):
    data = kube.call("get", {"resource": resource, "names": [name], "namespace": ns})
    return data["resource"], data["items"][0]


def _update(kube, obj, ns):
    data = kube.call("apply", {"objects": [obj], "namespace": ns, "mode": "update"})
    r = data["results"][0]
    if "error" in r:
        raise status_error(r["error"])
    return r


def k_label(kube, opts, args, field="labels"):
    verb = "label" if field == "labels" else "annotate"
    if len(args) < 2:
        raise KubectlExit(1, "error: one or more resources must be specified as <resource> <name> or <resource>/<name>")
    if "/" in args[0]:
        resource, name = args[0].split("/", 1)
        changes = args[1:]
    else:
        resource, name = args[0], args[1]
        changes = args[2:]
    if not changes:
        raise KubectlExit(1, "error: at least one %s update is required" % ("label" if field == "labels" else "annotation"))
    for _ in range(5):
        res, obj = _get_one(kube, resource, name, opts.get("namespace"))
        cur = dict(obj["metadata"].get(field) or {})
        before = dict(cur)
        removed = False
        for ch in changes:
            if ch.endswith("-") and "=" not in ch:
                key = ch[:-1]
                if key in cur:
                    del cur[key]
                    removed = True
                continue
            k, sep, v = ch.partition("=")
            if not sep:
                raise KubectlExit(1, "error: at least one %s update is required" % verb)
            if k in cur and cur[k] != v and not opts.get("overwrite"):
                raise KubectlExit(1, "error: '%s' already has a value (%s), and --overwrite is false" % (k, cur[k]))
            cur[k] = v
        disp = "%s/%s" % (res["kind"].lower() + ("." + res["group"] if res["group"] else ""), name)
        if cur == before:
            sys.stdout.write("%s not %s\n" % (disp, "labeled" if field == "labels" else "annotated"))
            return 0
        obj["metadata"][field] = cur
        try:
            _update(kube, obj, opts.get("namespace"))
        except KubectlExit as e:
            if e.message and "(Conflict)" in e.message:
                continue
            raise
        word = ("labeled" if field == "labels" else "annotated")
        if removed and all(c.endswith("-") and "=" not in c for c in changes):
            word = "unlabeled" if field == "labels" else "annotated"
        sys.stdout.write("%s %s\n" % (disp, word))
        return 0
    raise KubectlExit(1, "error: too many conflicts updating %s/%s" % (resource, name))


def _edit_node(kube, name, edit):
    """Read the Node, let edit(obj) change it (it returns the line to print and whether anything changed), write it
    back; a write that lost a race with the agent's heartbeat (Conflict) is done again on a fresh read."""
    for _ in range(5):
        _, obj = _get_one(kube, "nodes", name, None)
        line, changed = edit(obj)
        if changed:
            try:
                _update(kube, obj, None)
            except KubectlExit as e:
                if e.message and "(Conflict)" in e.message:
                    continue
                raise
        sys.stdout.write(line + "\n")
        return changed
    raise KubectlExit(1, "error: too many conflicts updating node/%s" % name)


def k_taint(kube, opts, args):
    if len(args) < 3:
        raise KubectlExit(1, "error: at least one taint update is required")
    resource, name = args[0], args[1]
    if resource not in ("node", "nodes", "no"):
        raise KubectlExit(1, "error: invalid resource type %s, only node types are supported" % resource)

    def edit(obj):
        taints = list((obj.get("spec") or {}).get("taints") or [])
        added = removed = False
        for ch in args[2:]:
            if ch.endswith("-"):
                spec = ch[:-1]
                key, _, effect = spec.partition(":")
                key = key.split("=", 1)[0]
                keep = [t for t in taints if not (t["key"] == key and (not effect or t["effect"] == effect))]
                if len(keep) == len(taints):
                    raise KubectlExit(1, 'error: taint "%s" not found' % spec)
                taints = keep
                removed = True
                continue
            t = parse_taint(ch)
            if t is None:
                eff = ch.rpartition(":")[2]
                if ":" in ch and eff:
                    raise KubectlExit(1, "error: invalid taint effect: %s, unsupported taint effect" % eff)
                raise KubectlExit(1, "error: unknown taint spec: %s" % ch)
            same = [x for x in taints if x["key"] == t["key"] and x["effect"] == t["effect"]]
            if same and not opts.get("overwrite"):
                raise KubectlExit(1, "error: node %s already has %s taint(s) with same effect(s) and --overwrite is "
                                     "false" % (name, t["key"]))
            taints = [x for x in taints if not (x["key"] == t["key"] and x["effect"] == t["effect"])] + [t]
            added = True
        obj.setdefault("spec", {})["taints"] = taints
        if not taints:
            obj["spec"].pop("taints")
        return "node/%s %s" % (name, "tainted" if added or not removed else "untainted"), True

    _edit_node(kube, name, edit)
    return 0


def _set_unschedulable(kube, name, value):
    """kubectl cordon / uncordon: spec.unschedulable, with kubectl's words; returns True when it changed."""
    word = "cordoned" if value else "uncordoned"

    def edit(obj):
        spec = obj.setdefault("spec", {})
        if bool(spec.get("unschedulable")) == value:
            return "node/%s already %s" % (name, word), False
        if value:
            spec["unschedulable"] = True
        else:
            spec.pop("unschedulable", None)
        return "node/%s %s" % (name, word), True

    return _edit_node(kube, name, edit)


def k_cordon(kube, opts, args, value):
    if len(args) != 1:
        raise KubectlExit(1, "error: USAGE: %s NODE [flags]" % ("cordon" if value else "uncordon"))
    _set_unschedulable(kube, args[0], value)
    return 0


def k_drain(kube, opts, args):
    """kubectl drain NODE: cordon, then evict the node's pods (deleted here: the stand-in has no eviction API and no
    PodDisruptionBudgets), refusing as kubectl does when DaemonSet pods, emptyDir pods or pods without a controller
    are there and the flag that allows them is missing. The workloads' pods come back on other nodes."""
    if len(args) != 1:
        raise KubectlExit(1, "error: USAGE: drain NODE [flags]")
    name = args[0]
    _set_unschedulable(kube, name, True)
    pods = [p for p in kube.call("get", {"resource": "pods", "names": [], "allNamespaces": True})["items"]
            if (p.get("spec") or {}).get("nodeName") == name]
    evict, daemons, problems = [], [], {}

    def ref(p):
        return "%s/%s" % (p["metadata"].get("namespace", ""), p["metadata"]["name"])

    for p in pods:
        owners = [r for r in p["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if any(r.get("kind") == "DaemonSet" for r in owners):
            if not opts.get("ignore-daemonsets"):
                problems.setdefault("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)", []).append(ref(p))
            daemons.append(ref(p))
            continue
        if not owners and not opts.get("force"):
            problems.setdefault("cannot delete Pods that declare no controller (use --force to override)", []).append(ref(p))
        if any("emptyDir" in v for v in (p.get("spec") or {}).get("volumes") or []) and not opts.get("delete-emptydir-data"):
            problems.setdefault("cannot delete Pods with local storage (use --delete-emptydir-data to override)", []).append(ref(p))
        evict.append(p)
    if problems:
        why = ", ".join("%s: %s" % (k, ", ".join(v)) for k, v in problems.items())
        raise KubectlExit(1, "error: unable to drain node %r due to error: %s, continuing command...\n"
                             "There are pending nodes to be drained:\n %s\n%s" % (name, why, name, why))
    if daemons:
        sys.stderr.write("Warning: ignoring DaemonSet-managed Pods: %s\n" % ", ".join(daemons))
    for p in evict:
        sys.stdout.write("evicting pod %s\n" % ref(p))
    for p in evict:
        kube.call("delete", {"resource": "pods", "name": p["metadata"]["name"], "namespace": p["metadata"].get("namespace")})
        sys.stdout.write("pod/%s evicted\n" % p["metadata"]["name"])
    sys.stdout.write("node/%s drained\n" % name)
    return 0


def k_wait(kube, opts, args):
    cond = opts.get("for")
    if not cond:
        raise KubectlExit(1, "error: --for must be specified")
    timeout = parse_duration(opts.get("timeout"), 30.0)
    if timeout is None:
        raise KubectlExit(1, 'error: invalid argument "%s" for "--timeout" flag' % opts.get("timeout"))
    resource, names = split_targets(args)
    want_delete = cond == "delete"
    want_type, want_status = None, "True"
    if not want_delete:
        m = re.fullmatch(r"condition=([^=]+)(?:=(.*))?", cond)
        if not m:
            raise KubectlExit(1, "error: --for=%s is %s (use condition=NAME or delete)" % (cond, STANDIN_NOTE))
        want_type = m.group(1)
        if m.group(2) is not None:
            want_status = m.group(2)
    ns = opts.get("namespace")
    deadline = time.time() + timeout
    if not names:
        if not opts.get("all") and not opts.get("selector"):
            raise KubectlExit(1, "error: resource(s) were provided, but no name was specified")
        data = kube.call("get", {"resource": resource, "namespace": ns, "labelSelector": opts.get("selector"),
                                 "allNamespaces": bool(opts.get("all-namespaces"))})
        names = [o["metadata"]["name"] for o in data["items"]]
        if not names:
            raise KubectlExit(1, "error: no matching resources found")
    first = True
    pending = list(names)
    res = None
    while pending:
        still = []
        for n in pending:
            try:
                data = kube.call("get", {"resource": resource, "names": [n], "namespace": ns})
            except KubectlExit as e:
                if want_delete and e.message and "(NotFound)" in e.message:
                    sys.stdout.write("%s/%s condition met\n" % (resource.split(".")[0].rstrip("s"), n))
                    continue
                if first:
                    raise
                still.append(n)
                continue
            res = data["resource"]
            obj = data["items"][0]
            disp = "%s/%s" % (res["kind"].lower() + ("." + res["group"] if res["group"] else ""), n)
            c = cond_of(obj, want_type) if want_type else None
            if c and str(c.get("status")).lower() == want_status.lower():
                sys.stdout.write("%s condition met\n" % disp)
            else:
                still.append(n)
        first = False
        pending = still
        if not pending:
            return 0
        if time.time() >= deadline:
            plural = res["plural"] + ("." + res["group"] if res and res["group"] else "") if res else resource
            raise KubectlExit(1, "error: timed out waiting for the condition on %s/%s" % (plural, pending[0]))
        time.sleep(min(0.5, max(0.0, deadline - time.time())))
    return 0


# The lab's switch (a file the lab writes on each host, naming the real kubectl client it bind-mounts there):
# when it names an executable, `k3s kubectl` and the `kubectl` link run that client, as the real k3s runs its
# embedded kubectl, against this server's Kubernetes API (kubeapi.py). Without it, the imitation below answers.
REAL_KUBECTL_SWITCH = "/etc/k3s-standin/kubectl"


def real_kubectl():
    path = (read_text(rp(REAL_KUBECTL_SWITCH)) or "").strip()
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def exec_real_kubectl(path, argv):
    """What k3s's kubectl does before handing over: without --kubeconfig or $KUBECONFIG, root gets
    /etc/rancher/k3s/k3s.yaml and anyone else ~/.kube/k3s.yaml, when that file exists (a warning when root cannot
    read it)."""
    env = dict(os.environ)
    given = env.get("KUBECONFIG", "")
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a.startswith("--kubeconfig="):
            given = a.split("=", 1)[1]
        elif a == "--kubeconfig" and i + 1 < len(argv):
            given = argv[i + 1]
    if not given:
        root_user = ROOT != "" or os.geteuid() == 0
        config = rp("/etc/rancher/k3s/k3s.yaml") if root_user else os.path.expanduser("~/.kube/k3s.yaml")
        if os.path.exists(config):
            env["KUBECONFIG"] = config
            if not os.access(config, os.R_OK):
                sys.stderr.write("WARN[0000] Unable to read %s, please start server with --write-kubeconfig-mode or "
                                 "--write-kubeconfig-group to modify kube config permissions\n" % config)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(path, ["kubectl"] + list(argv), env)


def kubectl_main(argv):
    real = real_kubectl()
    if real:
        exec_real_kubectl(real, argv)
    try:
        opts, args = parse_kubectl(argv)
        if opts.get("help") or not args:
            sys.stdout.write("kubectl (k3s stand-in): get, apply -f, create namespace|secret generic, delete, label, "
                             "annotate, taint, cordon, uncordon, drain, wait, version, cluster-info\n")
            return 0
        cmd, rest = args[0], args[1:]
        if cmd == "version":
            v = k3s_version()
            sys.stdout.write("Client Version: %s\nKustomize Version: v5.7.1\n" % v)
            if not opts.get("client"):
                kube = Kube(opts)
                text = kube.raw_get("/version")
                sys.stdout.write("Server Version: %s\n" % json.loads(text).get("gitVersion"))
            return 0
        if cmd == "create" and (opts.get("dry-run") or "none") in ("client", "true"):
            return k_create(None, opts, rest)
        kube = Kube(opts)
        if cmd == "get":
            return k_get(kube, opts, rest)
        if cmd == "apply":
            return k_apply(kube, opts, rest)
        if cmd == "create":
            return k_create(kube, opts, rest)
        if cmd == "delete":
            return k_delete(kube, opts, rest)
        if cmd == "label":
            return k_label(kube, opts, rest, "labels")
        if cmd == "annotate":
            return k_label(kube, opts, rest, "annotations")
        if cmd == "taint":
            return k_taint(kube, opts, rest)
        if cmd == "wait":
            return k_wait(kube, opts, rest)
        if cmd in ("cordon", "uncordon"):
            return k_cordon(kube, opts, rest, cmd == "cordon")
        if cmd == "drain":
            return k_drain(kube, opts, rest)
        if cmd == "cluster-info":
            kube.raw_get("/readyz")
            sys.stdout.write("Kubernetes control plane is running at https://%s\n" % kube.hostport)
            return 0
        raise KubectlExit(1, "error: kubectl %s is %s" % (cmd, STANDIN_NOTE))
    except KubectlExit as e:
        if e.message:
            sys.stderr.write(e.message.rstrip("\n") + "\n")
        return e.code


# ---------------------------------------------------------------------------------------------------------

USAGE = """NAME:
   k3s - Kubernetes, but small and simple (STAND-IN used by the lab tests; not the real k3s)

USAGE:
   k3s [global options] command [command options] [arguments...]

VERSION:
   %s

COMMANDS:
   server   Run management server
   agent    Run node agent
   kubectl  Run kubectl (a subset)

GLOBAL OPTIONS:
   --version, -v  print the version
"""


def main():
    prog = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if prog.startswith("kubectl"):
        return kubectl_main(args)
    if prog in ("crictl", "ctr"):
        sys.stderr.write("%s is %s: the stand-in runs no containers\n" % (prog, STANDIN_NOTE))
        return 1
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE % k3s_version())
        return 0
    if args[0] in ("--version", "-v"):
        v = k3s_version()
        sys.stdout.write("k3s version %s (%s)\ngo version %s\n" % (v, short_commit(v), GO_VERSION))
        return 0
    cmd = args[0]
    if cmd == "server":
        return server_main(args[1:])
    if cmd == "agent":
        return agent_main(args[1:])
    if cmd == "kubectl":
        return kubectl_main(args[1:])
    if cmd in ("crictl", "ctr", "etcd-snapshot", "token", "certificate", "secrets-encrypt", "check-config",
               "completion"):
        sys.stderr.write("k3s %s is %s\n" % (cmd, STANDIN_NOTE))
        return 1
    sys.stderr.write("Incorrect Usage: unknown command %r (k3s stand-in)\n" % cmd)
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
