# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for Pi-hole's DNS: while a Running hostNetwork pod with a UDP containerPort 53 is bound to
# this node (Pi-hole on pi-k3s), the server answers DNS on UDP port 53 of this host ($K3S_STANDIN_DNS_PORT for
# tests). Not a resolver: every A question gets one documentation address.

import json
import os
import socket
import threading

from common import log, read_text, rp


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
