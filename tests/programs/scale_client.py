"""Traffic through `boxer scale`: keeps one connection open to each of the
first two replicas of `web` and pings them every 0.1 s, while the test
scales web 2 -> 6 -> 3. On `check-N` (a file the test writes in the shared
working directory) it resolves `web`, opens a new connection to every
replica it lists and writes `checked-N` with what it found. On `done` it
exits 0 if no ping on the kept connections failed, 1 otherwise. The
directory of those files is the first argument (default: the working one).
"""
import os
import socket
import sys
import time


def connect(host):
    for _ in range(300):
        try:
            return socket.create_connection((host, 7000), timeout=5)
        except OSError:
            time.sleep(0.1)
    sys.exit(f"cannot reach {host}")


if len(sys.argv) > 1:
    os.chdir(sys.argv[1])
kept = {h: connect(h) for h in ("web-0", "web-1")}
pings = 0
print("client: connected to web-0 and web-1", flush=True)
while not os.path.exists("done"):
    for host, s in kept.items():
        try:
            s.sendall(b"ping\n")
            if s.recv(64) != b"ping\n":
                raise OSError("wrong echo")
        except OSError as e:
            print(f"client: BROKEN connection to {host} after {pings} pings: {e}", flush=True)
            sys.exit(1)
    pings += 1
    for name in os.listdir("."):
        if name.startswith("check-") and not os.path.exists("checked-" + name[6:]):
            addrs = sorted({a[4][0] for a in socket.getaddrinfo("web", 7000, socket.AF_INET, socket.SOCK_STREAM)})
            reached = []
            for a in addrs:
                with socket.create_connection((a, 7000), timeout=5) as c:
                    c.sendall(b"hi\n")
                    reached.append(a if c.recv(64) == b"hi\n" else f"{a}?")
            with open("checked-" + name[6:] + ".tmp", "w") as f:
                f.write(" ".join(reached))
            os.rename("checked-" + name[6:] + ".tmp", "checked-" + name[6:])
            print(f"client: web lists {len(addrs)} replicas, reached {len(reached)}", flush=True)
    time.sleep(0.1)
print(f"client: kept connections unbroken after {pings} pings", flush=True)
