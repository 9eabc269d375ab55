# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# `k3s kubectl` and the `kubectl` link: the REAL kubectl client, exec'd. The stand-in has no kubectl of its own.

import os
import sys

from common import ROOT, read_text, rp


REAL_KUBECTL_SWITCH = "/etc/k3s-standin/kubectl"


def real_kubectl():
    path = (read_text(rp(REAL_KUBECTL_SWITCH)) or "").strip()
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def kubectl_main(argv):
    """What k3s's kubectl does before handing over: without --kubeconfig or $KUBECONFIG, root gets
    /etc/rancher/k3s/k3s.yaml and anyone else ~/.kube/k3s.yaml, when that file exists (a warning when root cannot
    read it)."""
    path = real_kubectl()
    if not path:
        sys.stderr.write("k3s kubectl: no kubectl client: the k3s stand-in (a test fixture, see "
                         "test/standins/README.md) has no embedded kubectl; it runs the real client that %s names, "
                         "and that file is missing or does not name an executable (the lab writes it on every host "
                         "at each start)\n" % REAL_KUBECTL_SWITCH)
        return 1
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
