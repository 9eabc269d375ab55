# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# Shared by the k3s stand-in's modules: versions, paths under $K3S_STANDIN_ROOT, k3s-style log lines,
# time and duration formats, files, systemd notification, process names and signals.

import calendar
import hashlib
import os
import platform
import re
import signal
import socket
import sys
import time


# The entry script (k3s-standin.py, stamped by install.sh) sets this to the version it was installed as.
STANDIN_STAMPED_VERSION = ""
DEFAULT_VERSION = "v1.34.3+k3s1"


GO_VERSION = "go1.24.11"


CONTAINERD_VERSION = "containerd://2.1.5-k3s1"


ROOT = os.environ.get("K3S_STANDIN_ROOT", "").rstrip("/")


NOT_READY_AFTER = float(os.environ.get("K3S_STANDIN_NOTREADY_SECONDS", "10"))


HEARTBEAT_SECONDS = float(os.environ.get("K3S_STANDIN_HEARTBEAT_SECONDS", "2"))


RETRY_SECONDS = float(os.environ.get("K3S_STANDIN_RETRY_SECONDS", "2"))


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


def go_arch():
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
            "armv6l": "arm", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


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
