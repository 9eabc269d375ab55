# STAND-IN for k3s used by the lab tests; not the real k3s.
#
# What stands in for the API listener of k3s: one port, two protocols. A TLS connection is served the
# Kubernetes REST API (kubeapi.py) the real kubectl and the flux stand-in use; a plain-HTTP one the stand-in's
# agent protocol (standing in for k3s's supervisor protocol: /cacerts, node registration, heartbeats).

import base64
import hmac
import json
import re
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import GO_VERSION, go_arch, log, short_commit
from datastore import ApiError


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
        if self.tls and not path.startswith(("/cacerts", "/v1-k3s/")):
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
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as e:
            return self._send(e.code, e.status())
        except Exception as e:  # keep serving; report like an apiserver would
            log("error", "stand-in API error on %s %s: %r" % (method, path, e))
            return self._send(500, ApiError(500, "InternalError", "an error on the server (%s) has prevented the "
                                            "request from succeeding" % e).status())
