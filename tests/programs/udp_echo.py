#!/usr/bin/env python3
"""UDP echo server and clients for the overlay UDP end-to-end tests (stdlib only).

  udp_echo.py serve PORT [--v6]
      Bind the wildcard (0.0.0.0, or [::] dual-stack with --v6) on PORT; for
      each datagram print "from <ip>:<port> <size>" and send it back to its
      source with sendto. Also listens (never accepts) on TCP PORT, so a
      `wait_for` on it means the UDP socket is ready.

  udp_echo.py ask HOST PORT N SIZE [--v6] [--timeout S]
      One unconnected socket: N times sendto a SIZE-byte datagram (sequence
      number + filler) and wait for its echo with recvfrom. Prints
      "reply from <ip>:<port>" for each distinct reply source, "local
      <ip>:<port>" (getsockname after the first send) and
      "sent N received M bad B". Exit 0 if M >= 95% of N and B == 0; a
      failing socket call prints "error <ERRNO NAME> <message>" and exits 2.

  udp_echo.py connected HOST PORT N SIZE [--v6] [--timeout S]
      As ask, with connect + send/recv; prints "peer <ip>:<port>"
      (getpeername) and "local <ip>:<port>" (getsockname) after connecting.

HOST is resolved with getaddrinfo (so Boxer names work). With --v6 the
socket is AF_INET6 and IPv4 addresses are used in their mapped form
(::ffff:a.b.c.d). Addresses are printed as the socket reports them (an
AF_INET6 socket shows ::ffff:a.b.c.d), so a test can check which family
the app saw. SIZE is at least 8 (the sequence number).
"""

import argparse
import errno
import socket
import struct
import sys
import time

# Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP header bytes).
MAX_DATAGRAM = 65507
HEADER = struct.Struct("!Q")


def fmt(addr):
    return "%s:%d" % (addr[0], addr[1])


def family(v6):
    return socket.AF_INET6 if v6 else socket.AF_INET


def resolve(host, port, v6):
    """The first IPv4 address of HOST, as a sockaddr of the wanted family."""
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    ip = infos[0][4][0]
    return ("::ffff:" + ip, port, 0, 0) if v6 else (ip, port)


def payload(seq, size):
    size = max(size, HEADER.size)
    body = HEADER.pack(seq)
    filler = bytes((seq + i) % 251 for i in range(min(size - HEADER.size, 251)))
    if filler:
        filler = (filler * (size // len(filler) + 1))[: size - HEADER.size]
    return body + filler


def serve(args):
    s = socket.socket(family(args.v6), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", args.port))
    else:
        s.bind(("0.0.0.0", args.port))
    # Like a DNS server, also listen on TCP PORT (never served): a Boxer
    # `wait_for` (which watches TCP ports) then starts clients only once the
    # UDP socket above is bound.
    ready = socket.socket(family(args.v6), socket.SOCK_STREAM)
    ready.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ready.bind(("::" if args.v6 else "0.0.0.0", args.port))
    ready.listen()
    print("listening %s" % fmt(s.getsockname()), flush=True)
    while True:
        data, src = s.recvfrom(65535)
        print("from %s %d" % (fmt(src), len(data)), flush=True)
        s.sendto(data, src)


def exchange(args, send, recv):
    """Sends N datagrams one at a time and waits for each echo; returns the
    exit status."""
    received = bad = 0
    sources = set()
    for seq in range(args.n):
        data = payload(seq, args.size)
        send(data)
        if seq == 0 and args.on_first_send:
            args.on_first_send()
        deadline = time.monotonic() + args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s = args.sock
            s.settimeout(left)
            try:
                reply, src = recv()
            except socket.timeout:
                break
            if src is not None and fmt(src) not in sources:
                sources.add(fmt(src))
                print("reply from %s" % fmt(src), flush=True)
            if len(reply) >= HEADER.size and HEADER.unpack_from(reply)[0] == seq:
                if reply == data:
                    received += 1
                else:
                    bad += 1
                break
            # An echo of an earlier datagram that arrived late: keep waiting.
    print("sent %d received %d bad %d" % (args.n, received, bad), flush=True)
    return 0 if received * 100 >= args.n * 95 and bad == 0 else 1


def ask(args):
    s = socket.socket(family(args.v6), socket.SOCK_DGRAM)
    dst = resolve(args.host, args.port, args.v6)
    args.sock = s
    args.on_first_send = lambda: print("local %s" % fmt(s.getsockname()), flush=True)
    return exchange(args, lambda d: s.sendto(d, dst), lambda: s.recvfrom(MAX_DATAGRAM + 1))


def connected(args):
    s = socket.socket(family(args.v6), socket.SOCK_DGRAM)
    s.connect(resolve(args.host, args.port, args.v6))
    print("peer %s" % fmt(s.getpeername()), flush=True)
    print("local %s" % fmt(s.getsockname()), flush=True)
    args.sock = s
    args.on_first_send = None
    return exchange(args, s.send, lambda: (s.recv(MAX_DATAGRAM + 1), None))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("port", type=int)
    sp.add_argument("--v6", action="store_true")
    for name in ("ask", "connected"):
        c = sub.add_parser(name)
        c.add_argument("host")
        c.add_argument("port", type=int)
        c.add_argument("n", type=int)
        c.add_argument("size", type=int)
        c.add_argument("--v6", action="store_true")
        c.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each echo")
    args = p.parse_args()
    if args.mode == "serve":
        serve(args)
        return 0
    if not 0 <= args.size <= MAX_DATAGRAM:
        p.error("SIZE must be at most %d" % MAX_DATAGRAM)
    try:
        return ask(args) if args.mode == "ask" else connected(args)
    except OSError as e:
        # "error EHOSTUNREACH ...": tests match the errno name.
        print("error %s %s" % (errno.errorcode.get(e.errno, e.errno), e), flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
