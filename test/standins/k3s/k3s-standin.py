#!/usr/bin/env python3
# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# A test fixture installed as /usr/local/bin/k3s on the lab's Debian hosts by the stand-in install script
# (test/standins/k3s/install.sh), with its modules in /usr/local/lib/k3s-standin/ (../lib/k3s-standin of the
# binary's directory; in the repository, next to this file). It imitates what a provisioning tool sees of k3s from
# the outside: `k3s --version`, `k3s server` (server.py) with a SQLite datastore (datastore.py), token files, CA,
# kubeconfig and the Kubernetes API over TLS (apiserver.py, kubeapi.py), `k3s agent` (agent.py) joining with the
# node-password and CA-hash rules. It runs no containers; `k3s kubectl` execs the REAL kubectl the lab lends
# (kubectl.py). See test/standins/README.md.
#
# Every file path is prefixed with $K3S_STANDIN_ROOT (default empty) so the unit tests can run a server and
# agents as plain processes in temp dirs; $K3S_STANDIN_PORT (default 6443) sets the API port.

import os
import sys

# install.sh rewrites the next line with the version it was asked to install.
STANDIN_STAMPED_VERSION = ""

USAGE = """NAME:
   k3s - Kubernetes, but small and simple (STAND-IN used by the lab tests; not the real k3s)

USAGE:
   k3s [global options] command [command options] [arguments...]

VERSION:
   %s

COMMANDS:
   server   Run management server
   agent    Run node agent
   kubectl  Run kubectl (the real client the lab lends)

GLOBAL OPTIONS:
   --version, -v  print the version
"""


def import_modules():
    """The stand-in's modules: ../lib/k3s-standin of the binary's own directory (/usr/local/lib/k3s-standin for
    /usr/local/bin/k3s, where install.sh puts them), or next to this file (the repository)."""
    here = os.path.dirname(os.path.realpath(__file__))
    for d in (os.path.join(os.path.dirname(here), "lib", "k3s-standin"), here):
        if os.path.exists(os.path.join(d, "common.py")):
            sys.path.insert(0, d)
            break
    sys.dont_write_bytecode = True  # no __pycache__ left in the repository or in /usr/local/lib
    try:
        import yaml  # noqa: F401  (PyYAML: Debian's python3-yaml, in the lab image)
    except ImportError:
        sys.stderr.write("k3s stand-in: PyYAML is missing: install the Debian package python3-yaml\n")
        sys.exit(1)
    try:
        import common
    except ImportError as e:
        sys.stderr.write("k3s stand-in: its modules are missing (%s): install it with the stand-in install "
                         "script\n" % e)
        sys.exit(1)
    common.STANDIN_STAMPED_VERSION = STANDIN_STAMPED_VERSION
    return common


def main():
    common = import_modules()
    prog = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if prog.startswith("kubectl"):
        from kubectl import kubectl_main
        return kubectl_main(args)
    if prog in ("crictl", "ctr"):
        sys.stderr.write("%s is %s: the stand-in runs no containers\n" % (prog, common.STANDIN_NOTE))
        return 1
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE % common.k3s_version())
        return 0
    if args[0] in ("--version", "-v"):
        v = common.k3s_version()
        sys.stdout.write("k3s version %s (%s)\ngo version %s\n" % (v, common.short_commit(v), common.GO_VERSION))
        return 0
    cmd = args[0]
    if cmd == "server":
        from server import server_main
        return server_main(args[1:])
    if cmd == "agent":
        from agent import agent_main
        return agent_main(args[1:])
    if cmd == "kubectl":
        from kubectl import kubectl_main
        return kubectl_main(args[1:])
    if cmd in ("crictl", "ctr", "etcd-snapshot", "token", "certificate", "secrets-encrypt", "check-config",
               "completion"):
        sys.stderr.write("k3s %s is %s\n" % (cmd, common.STANDIN_NOTE))
        return 1
    sys.stderr.write("Incorrect Usage: unknown command %r (k3s stand-in)\n" % cmd)
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
