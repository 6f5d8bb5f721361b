"""A ZooKeeper client across the ensemble: waits for a quorum of 3, writes,
crashes the leader (through its node's kill file), and measures how long
until writes succeed again (the two followers elect a new leader) and until
the replaced node serves again (boxer up's restart policy). Prints one
`zk-recovery ...` line and exits 0 when the data written before is intact.
"""
import logging
import socket
import sys
import time

from kazoo.client import KazooClient

# Kazoo logs every dropped connection while the leader is down.
logging.basicConfig(level=logging.ERROR)

HOSTS = ["zk-0", "zk-1", "zk-2"]
LIMIT_S = 120


def mode(host):
    """ZooKeeper's own view of a server: leader, follower, or None."""
    try:
        with socket.create_connection((host, 2181), timeout=2) as s:
            s.sendall(b"srvr")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("Mode: "):
                return line[6:].strip()
    except OSError:
        return None
    return None


def until(what, check, limit=LIMIT_S):
    start = time.time()
    while time.time() - start < limit:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    print(f"gave up waiting for {what}", flush=True)
    sys.exit(1)


modes = until("a quorum of 3", lambda: (m := {h: mode(h) for h in HOSTS}) and all(m.values()) and m)
leader = next(h for h, m in modes.items() if m == "leader")
print(f"ensemble up: {modes}", flush=True)
zk = KazooClient(hosts=",".join(f"{h}:2181" for h in HOSTS), timeout=5)
zk.start(timeout=30)
zk.ensure_path("/boxer")
zk.create("/boxer/before", b"written before the crash")

open(f"kill-{leader}", "w").close()
until(f"{leader} to go down", lambda: mode(leader) is None)
down = time.time()


def write():
    try:
        zk.create("/boxer/after-", b"x", sequence=True)
        return True
    except Exception:
        return False


until("a write after the crash", write)
quorum_s = time.time() - down
until(f"{leader}'s replacement to serve", lambda: mode(leader) in ("leader", "follower"))
replaced_s = time.time() - down
new_modes = {h: mode(h) for h in HOSTS}
data, _ = zk.get("/boxer/before")
assert data == b"written before the crash", data
print(
    f"zk-recovery leader={leader} quorum_after_s={quorum_s:.2f} replaced_after_s={replaced_s:.2f} modes={new_modes}",
    flush=True,
)
zk.stop()
