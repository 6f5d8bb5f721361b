"""Computes a real result across the Dask workers and shows who did the work."""
import socket
import sys

from dask.distributed import Client


def square_on(x):
    return x * x, socket.gethostname()


def main():
    client = Client(sys.argv[1], timeout="60s")
    client.wait_for_workers(3, timeout=120)
    futures = client.map(square_on, range(1000))
    results = client.gather(futures)
    total = sum(r for r, _ in results)
    hosts = sorted({h for _, h in results})
    print(f"sum of squares 0..999 = {total}")
    print(f"computed on {len(hosts)} workers: {', '.join(hosts)}")
    # A reduction whose inputs live on different workers: the final task
    # fetches them over worker-to-worker connections.
    parts = client.map(lambda i: list(range(i * 100_000, (i + 1) * 100_000)), range(10))
    partial = client.map(sum, parts)
    total = client.submit(sum, partial).result()
    print(f"distributed sum 0..999999 = {total}")
    client.close()


if __name__ == "__main__":
    main()
