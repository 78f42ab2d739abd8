#!/usr/bin/env python3
"""Checks an echo example binary against the echo contract, through the devserver's
control API. Usage: echo_contract.py DEVSERVER_BIN EXAMPLE_BIN NAME

Starts the devserver and the example (each in a scratch directory), drives every part of
the contract over HTTP, then checks the exit codes: 0 after SIGTERM, non-zero with a
message on stderr when the token is rejected. Standard library only."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEADLINE = 20.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=DEADLINE):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for(what, pred, deadline=DEADLINE):
    """Polls a condition the devserver cannot push (process start-up, a listening port)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


class Notifications:
    def __init__(self, base, source):
        self.url = f"{base}/control/sources/{source}/notifications"
        self.next = 0

    def take(self, n):
        items = []
        end = time.monotonic() + DEADLINE
        while len(items) < n:
            left = end - time.monotonic()
            expect(left > 0, f"only {len(items)} of {n} notifications arrived")
            status, page = http("GET", f"{self.url}?after={self.next}&waitMs={int(left * 1000)}")
            expect(status == 200, f"notifications: HTTP {status} {page}")
            items += page["items"]
            self.next = page["next"]
        expect(len(items) == n, f"expected {n} notifications, got {len(items)}: {items}")
        return items


def write_config(directory, port, token, health_port):
    os.makedirs(os.path.join(directory, "serverConfig"), exist_ok=True)
    with open(os.path.join(directory, "serverConfig", "server.config"), "w") as f:
        f.write(
            f"targetServer = http://127.0.0.1:{port}\nauthToken = {token}\n"
            f"sources = alpha, beta\ntcpProbePort = 0\nhealthProbePort = {health_port}\n"
        )


def main():
    devserver, example, name = sys.argv[1:4]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work = tempfile.mkdtemp(prefix=f"echo-contract-{name}-")
    server = subprocess.Popen(
        [devserver, "--listen", f"127.0.0.1:{port}", "--token", "contract-token", "--quiet",
         "--source", 'alpha={"a":1}', "--source", 'beta={"b":[2]}'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    connector = None
    try:
        wait_for("the devserver", lambda: _listening(port))
        health_port = free_port()
        write_config(work, port, "contract-token", health_port)
        connector = subprocess.Popen([example], cwd=work, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
        alpha, beta = Notifications(base, "alpha"), Notifications(base, "beta")
        # On configure: {"connected": true, "config": C}.
        expect(alpha.take(1) == [{"connected": True, "config": {"a": 1}}], "alpha config notification")
        expect(beta.take(1) == [{"connected": True, "config": {"b": [2]}}], "beta config notification")
        # Healthy once every source is configured.
        status, ready = wait_for("readiness", lambda: _ready(health_port))
        expect(ready["sources"] == {"alpha": "configured", "beta": "configured"}, f"readyz {ready}")
        # Bursts, in order.
        expect(http("POST", f"{base}/control/sources/alpha/publish", {"burst": 250, "payload": {"p": [1, "x"]}})[0] == 202, "publish")
        got = alpha.take(250)
        expect(got == [{"seq": i, "payload": {"p": [1, "x"]}} for i in range(250)], "burst order/content")
        # Anything else is echoed as is.
        other = {"hello": "world", "n": 7, "nested": {"burst": "not a number"}}
        http("POST", f"{base}/control/sources/beta/publish", other)
        expect(beta.take(1) == [other], "echo of an ordinary publish")
        # Queries: chunked, whole, empty, error.
        status, r = http("POST", f"{base}/control/sources/alpha/query?timeoutMs=10000", {"rows": 7, "chunk": 3})
        expect((status, r["status"], r["parts"], r["rows"]) == (200, 200, 3, [{"i": i} for i in range(7)]), f"chunked query {r}")
        status, r = http("POST", f"{base}/control/sources/alpha/query?timeoutMs=10000", {"rows": 4})
        expect((r["status"], r["parts"], r["rows"]) == (200, 1, [{"i": i} for i in range(4)]), f"whole query {r}")
        status, r = http("POST", f"{base}/control/sources/beta/query?timeoutMs=10000", {"rows": 0})
        expect((r["status"], r["parts"], r["rows"]) == (204, 1, []), f"empty query {r}")
        status, r = http("POST", f"{base}/control/sources/beta/query?timeoutMs=10000", {"error": "boom"})
        expect(r["status"] == 400 and r["error"] == {"messageCode": "echo.error", "messageTemplate": "Echo error: {0}", "parameters": ["boom"]}, f"error query {r}")
        # SIGTERM: exit 0.
        connector.send_signal(signal.SIGTERM)
        code = connector.wait(timeout=DEADLINE)
        expect(code == 0, f"exit code after SIGTERM: {code}; stderr: {connector.stderr.read().decode()}")
        # A rejected token: non-zero, the reason on stderr.
        write_config(work, port, "wrong-token", free_port())
        bad = subprocess.run([example], cwd=work, capture_output=True, timeout=DEADLINE)
        err = bad.stderr.decode()
        expect(bad.returncode != 0, "exit code with a rejected token must be non-zero")
        expect("authentication rejected" in err and "401" in err, f"stderr with a rejected token: {err}")
        print(f"{name}: echo contract OK")
    finally:
        if connector and connector.poll() is None:
            connector.kill()
        server.kill()
        server.wait()


def _listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _ready(port):
    try:
        status, body = http("GET", f"http://127.0.0.1:{port}/readyz", timeout=2)
        return (status, body) if status == 200 else None
    except OSError:
        return None


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"echo contract FAILED: {e}", file=sys.stderr)
        sys.exit(1)
