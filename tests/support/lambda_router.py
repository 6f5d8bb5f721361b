#!/usr/bin/env python3
"""The Lambda lab's front door: one HTTP endpoint for the AWS SDK, as AWS has.

Invoke requests go to the cargo-lambda emulator (which runs real runtimes
through the real Runtime API); everything else (CreateFunction, GetFunction,
waiters, IAM, ...) goes to moto's server. Two things the emulator does not do
the way Lambda does are put right here:

- a runtime's /error comes back from the emulator as HTTP 500 without
  X-Amz-Function-Error, which the SDK would treat as a service failure; Lambda
  answers 200 with `X-Amz-Function-Error: Unhandled` and the error as payload.
- there is no throttling; `POST /_lab/throttle?n=N` makes the next N invokes
  answer 429 TooManyRequestsException, as Lambda does when its burst or
  concurrency limit is reached (the node was never started).

Each invoke is announced on stdout (`invoke-start ID FUNCTION` /
`invoke-end ID STATUS FUNCTION`) so that the test harness can play Lambda's scaler: start a new
function instance when an invocation finds none idle.

Runs inside the lab's namespace only: it listens and connects on loopback
of that namespace.
"""

import argparse
import http.client
import itertools
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# Headers that describe one hop's connection, not the message.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

# Longest an invoke may take: past any function's 15 minute timeout.
INVOKE_TIMEOUT_SECS = 960

state_lock = threading.Lock()
throttle_left = 0
invoke_ids = itertools.count(1)


def announce(line):
    with state_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Router(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    invoke_upstream = None
    control_upstream = None

    def log_message(self, fmt, *args):  # quiet: the harness reads stdout
        sys.stderr.write("router: " + (fmt % args) + "\n")

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def forward(self, upstream, body, timeout):
        host, port = upstream
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{host}:{port}"
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def handle_any(self):
        global throttle_left
        body = self.body()
        path = urlparse(self.path)
        if path.path == "/_lab/throttle":
            n = int(parse_qs(path.query).get("n", ["0"])[0])
            with state_lock:
                throttle_left = n
            return self.reply(200, [], b"ok\n")
        if self.command == "POST" and path.path.startswith("/2015-03-31/functions/") and path.path.endswith("/invocations"):
            with state_lock:
                throttled = throttle_left > 0
                if throttled:
                    throttle_left -= 1
            if throttled:
                announce("invoke-throttled")
                err = b'{"Type":"User","message":"Rate Exceeded.","Reason":"ReservedFunctionConcurrentInvocationLimitExceeded"}'
                return self.reply(
                    429,
                    [("Content-Type", "application/json"), ("x-amzn-ErrorType", "TooManyRequestsException")],
                    err,
                )
            invoke_id = next(invoke_ids)
            function = path.path.split("/")[3]
            announce(f"invoke-start {invoke_id} {function}")
            status = 502
            try:
                status, headers, payload = self.forward(self.invoke_upstream, body, INVOKE_TIMEOUT_SECS)
                headers = [(k, v) for k, v in headers if k.lower() != "x-amz-function-error"]
                if status >= 500:
                    # The runtime reported /error: Lambda's shape of that answer.
                    status = 200
                    headers.append(("X-Amz-Function-Error", "Unhandled"))
                headers.append(("X-Amz-Executed-Version", "$LATEST"))
                return self.reply(status, headers, payload)
            except OSError as e:
                return self.reply(502, [("Content-Type", "text/plain")], f"emulator unreachable: {e}\n".encode())
            finally:
                announce(f"invoke-end {invoke_id} {status} {function}")
        try:
            status, headers, payload = self.forward(self.control_upstream, body, 60)
        except OSError as e:
            return self.reply(502, [("Content-Type", "text/plain")], f"moto unreachable: {e}\n".encode())
        return self.reply(status, headers, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any


def hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=hostport, required=True, help="HOST:PORT to serve the SDK on")
    p.add_argument("--invoke", type=hostport, required=True, help="HOST:PORT of the cargo-lambda emulator")
    p.add_argument("--control", type=hostport, required=True, help="HOST:PORT of moto's server")
    args = p.parse_args()
    Router.invoke_upstream = args.invoke
    Router.control_upstream = args.control
    server = ThreadingHTTPServer(args.listen, Router)
    server.daemon_threads = True
    announce(f"listening {args.listen[0]}:{server.server_address[1]}")
    server.serve_forever()


if __name__ == "__main__":
    main()
