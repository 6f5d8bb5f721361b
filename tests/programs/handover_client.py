"""Traffic through a replacement before the deadline: keeps a connection to
web-0:7000 (a line echo server) and pings it every 0.05 s for the number of
seconds given as the first argument (default 10). When the connection
breaks (the instance behind web-0 was replaced), it resolves web-0 again
and reconnects, retrying every 0.02 s, and records how long that took and
which address web-0 had. Exits 0 if it reconnected at least once and web-0
always had the same address, 1 otherwise.
"""
import socket
import sys
import time


def address():
    return socket.getaddrinfo("web-0", 7000, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def connect(give_up_at):
    while True:
        try:
            a = address()
            return socket.create_connection((a, 7000), timeout=2), a
        except OSError as e:
            if time.monotonic() > give_up_at:
                sys.exit(f"client: cannot reach web-0: {e}")
            time.sleep(0.02)


seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
start = time.monotonic()
conn, addr = connect(start + 30)
addresses = {addr}
pings = 0
outages = []
print(f"client: connected to web-0 at {addr}", flush=True)
while time.monotonic() < start + seconds:
    try:
        conn.sendall(b"ping\n")
        if conn.recv(64) != b"ping\n":
            raise OSError("connection closed")
        pings += 1
    except OSError as e:
        lost = time.monotonic()
        conn.close()
        conn, addr = connect(lost + 20)
        outages.append(time.monotonic() - lost)
        addresses.add(addr)
        print(f"client: reconnected to web-0 at {addr} after {outages[-1]:.2f} s ({e})", flush=True)
    time.sleep(0.05)
longest = max(outages, default=0.0)
print(
    f"client: {pings} pings, {len(outages)} reconnect(s), longest outage {longest:.2f} s, "
    f"{sum(outages):.2f} s in all, web-0 at {' '.join(sorted(addresses))}",
    flush=True,
)
sys.exit(0 if outages and len(addresses) == 1 else 1)
