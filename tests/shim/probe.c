/* probe: checks the Boxer shim's socket semantics from plain C.
 *
 *   probe server PORT               accept forever; answer each connection with
 *                                   "peer=IP:PORT local=IP:PORT accepted=IP:PORT\n"
 *   probe client HOST PORT CLOSED UNKNOWN_IP
 *                                   run every client check against a probe server
 *   probe unreachable IP PORT       connect twice, expect ENETUNREACH both times
 *   probe bench HOST PORT N         N x (connect, read 1 byte), print latencies (us)
 *   probe oneshot PORT              server that writes one byte per connection
 *   probe identity                  the node's own address is BOXER_OVERLAY_IP by
 *                                   every common route (run it where the node has
 *                                   a real interface with a default route: the
 *                                   NAT lab; it sends nothing)
 *
 * Prints "ok <check>" per passed check and "FAIL <check>: ..." per failure;
 * exits 1 if anything failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;
#define CHECK(name, cond, ...)                                   \
    do {                                                         \
        if (cond) {                                              \
            printf("ok %s\n", name);                             \
        } else {                                                 \
            printf("FAIL %s: ", name);                           \
            printf(__VA_ARGS__);                                 \
            printf("\n");                                        \
            failures++;                                          \
        }                                                        \
        fflush(stdout);                                          \
    } while (0)

static void fmt(const struct sockaddr *sa, char *out, size_t n) {
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)sa;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        port = ntohs(s->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)sa;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        port = ntohs(s->sin6_port);
    }
    snprintf(out, n, "%s:%d", ip, port);
}

static void name_of(int fd, int peer, char *out, size_t n) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int r = peer ? getpeername(fd, (void *)&ss, &len) : getsockname(fd, (void *)&ss, &len);
    if (r != 0) snprintf(out, n, "error:%s", strerror(errno));
    else fmt((void *)&ss, out, n);
}

static struct in_addr resolve(const char *host) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    struct in_addr a = {0};
    int r = getaddrinfo(host, NULL, &hints, &res);
    if (r != 0) {
        printf("FAIL resolve %s: %s\n", host, gai_strerror(r));
        exit(1);
    }
    a = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return a;
}

static int connect_v4(struct in_addr ip, int port, int nonblock, int *err) {
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = ip};
    int r = connect(fd, (void *)&sa, sizeof sa);
    *err = r == 0 ? 0 : errno;
    return fd;
}

static int server(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (void *)&sa, sizeof sa) || listen(fd, 64)) {
        perror("server bind/listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int c = accept(fd, (void *)&ss, &len);
        if (c < 0) continue;
        char accepted[80], peer[80], local[80], line[300];
        fmt((void *)&ss, accepted, sizeof accepted);
        name_of(c, 1, peer, sizeof peer);
        name_of(c, 0, local, sizeof local);
        int n = snprintf(line, sizeof line, "peer=%s local=%s accepted=%s\n", peer, local, accepted);
        printf("%s", line);
        fflush(stdout);
        if (write(c, line, n) < 0) perror("write");
        close(c);
    }
}

static int read_line(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got + 1 < n) {
        ssize_t r = read(fd, buf + got, 1);
        if (r <= 0) break;
        if (buf[got++] == '\n') break;
    }
    buf[got] = 0;
    return (int)got;
}

/* Connects (already done), reads the server's line, checks that both ends
 * agree on the overlay addresses. */
static void check_exchange(const char *name, int fd, const char *server_addr) {
    char mine[80], peer[80], line[300], expect_peer[120], expect_local[120];
    name_of(fd, 0, mine, sizeof mine);
    name_of(fd, 1, peer, sizeof peer);
    read_line(fd, line, sizeof line);
    snprintf(expect_peer, sizeof expect_peer, "peer=%s ", mine);
    snprintf(expect_local, sizeof expect_local, "local=%s ", server_addr);
    char label[120];
    snprintf(label, sizeof label, "%s: client getpeername is the server's overlay address", name);
    CHECK(label, strcmp(peer, server_addr) == 0, "got %s, want %s", peer, server_addr);
    snprintf(label, sizeof label, "%s: server getpeername/accept is the client's getsockname", name);
    char accepted[120];
    snprintf(accepted, sizeof accepted, "accepted=%s\n", mine);
    CHECK(label, strstr(line, expect_peer) && strstr(line, accepted), "client is %s, server said %s", mine, line);
    snprintf(label, sizeof label, "%s: server getsockname is its overlay address", name);
    CHECK(label, strstr(line, expect_local) != NULL, "server said %s, want %s", line, expect_local);
}

/* getifaddrs lists boxer0 first, with the overlay address `own_ip`, then
 * loopback, and no other interface. */
static void check_interfaces(const char *own_ip) {
    struct ifaddrs *ifs = NULL, *i;
    int found = 0, loopback = 0, first = 0;
    char others[200] = "";
    CHECK("getifaddrs succeeds", getifaddrs(&ifs) == 0, "%s", strerror(errno));
    for (i = ifs; i; i = i->ifa_next) {
        if (strcmp(i->ifa_name, "boxer0") == 0) {
            first |= i == ifs;
            if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET) {
                char a[80];
                fmt(i->ifa_addr, a, sizeof a);
                *strrchr(a, ':') = 0;
                found = strcmp(a, own_ip) == 0;
            }
        } else if (strcmp(i->ifa_name, "lo") == 0) {
            loopback |= i->ifa_addr && i->ifa_addr->sa_family == AF_INET;
        } else if (strlen(others) + strlen(i->ifa_name) + 2 < sizeof others) {
            strcat(others, " ");
            strcat(others, i->ifa_name);
        }
    }
    freeifaddrs(ifs);
    CHECK("getifaddrs lists boxer0 with the overlay address", found, "not found (own address %s)", own_ip);
    CHECK("getifaddrs lists boxer0 first", first, "another interface came first");
    CHECK("getifaddrs keeps loopback", loopback, "no IPv4 entry of lo");
    CHECK("getifaddrs lists only boxer0 and lo", others[0] == 0, "also listed:%s", others);
}

/* The socket's real local address, asked of the kernel past the shim. */
static void real_name(int fd, struct sockaddr_storage *ss) {
    socklen_t len = sizeof *ss;
    memset(ss, 0, sizeof *ss);
    syscall(SYS_getsockname, fd, (struct sockaddr *)ss, &len);
}

static int identity(void) {
    const char *own = getenv("BOXER_OVERLAY_IP");
    if (!own) {
        printf("FAIL identity: BOXER_OVERLAY_IP is not set\n");
        return 1;
    }
    char shown[80], peer[80], real[80], want[120];
    struct sockaddr_storage ss;

    /* "My IP": connect a UDP socket to a public address (connect on UDP
     * sends nothing), read its local address. The kernel picks the real
     * interface's address; the app must see the overlay address, same port. */
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in dns = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_aton("8.8.8.8", &dns.sin_addr);
    CHECK("UDP connect to 8.8.8.8:80", connect(u, (void *)&dns, sizeof dns) == 0, "%s", strerror(errno));
    real_name(u, &ss);
    fmt((void *)&ss, real, sizeof real);
    struct in_addr real_ip = ((struct sockaddr_in *)&ss)->sin_addr;
    printf("real local address %s\n", real);
    CHECK("the kernel's local address is another (the real interface's)",
          strncmp(real, own, strlen(own)) != 0 && strncmp(real, "127.", 4) != 0 && strncmp(real, "0.", 2) != 0,
          "got %s", real);
    name_of(u, 0, shown, sizeof shown);
    snprintf(want, sizeof want, "%s:%d", own, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    CHECK("UDP getsockname after connecting to 8.8.8.8 is the overlay address", strcmp(shown, want) == 0,
          "got %s, want %s", shown, want);
    name_of(u, 1, peer, sizeof peer);
    CHECK("UDP getpeername of 8.8.8.8 is untouched", strcmp(peer, "8.8.8.8:80") == 0, "got %s", peer);
    close(u);

    /* The same from an IPv6 socket with a v4-mapped destination. */
    int u6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 dns6 = {.sin6_family = AF_INET6, .sin6_port = htons(80)};
    inet_pton(AF_INET6, "::ffff:8.8.8.8", &dns6.sin6_addr);
    CHECK("AF_INET6 UDP connect to ::ffff:8.8.8.8:80", connect(u6, (void *)&dns6, sizeof dns6) == 0, "%s",
          strerror(errno));
    real_name(u6, &ss);
    name_of(u6, 0, shown, sizeof shown);
    snprintf(want, sizeof want, "::ffff:%s:%d", own, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    CHECK("AF_INET6 UDP getsockname is the v4-mapped overlay address", strcmp(shown, want) == 0, "got %s, want %s",
          shown, want);
    close(u6);

    /* A TCP socket on the real address (as after connecting to a host
     * outside the overlay; bound here so that nothing is sent). */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in on_real = {.sin_family = AF_INET, .sin_addr = real_ip};
    CHECK("TCP bind to the real address", bind(t, (void *)&on_real, sizeof on_real) == 0, "%s", strerror(errno));
    real_name(t, &ss);
    name_of(t, 0, shown, sizeof shown);
    snprintf(want, sizeof want, "%s:%d", own, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    CHECK("TCP getsockname on the real address is the overlay address", strcmp(shown, want) == 0, "got %s, want %s",
          shown, want);
    close(t);

    /* The wildcard stays the wildcard. */
    int w = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in any = {.sin_family = AF_INET};
    bind(w, (void *)&any, sizeof any);
    name_of(w, 0, shown, sizeof shown);
    CHECK("getsockname of a wildcard bind is the wildcard", strncmp(shown, "0.0.0.0:", 8) == 0, "got %s", shown);
    close(w);

    /* Interfaces: boxer0 and lo only, though the device has more
     * (if_nameindex asks netlink, which the shim does not cover). */
    check_interfaces(own);
    struct if_nameindex *names = if_nameindex(), *n;
    int hidden = 0;
    printf("if_nameindex:");
    for (n = names; n && n->if_index; n++) {
        printf(" %s", n->if_name);
        hidden |= strcmp(n->if_name, "lo") != 0;
    }
    printf("\n");
    if (names) if_freenameindex(names);
    CHECK("the device has an interface besides lo (so getifaddrs hid one)", hidden, "only lo");

    printf("%s\n", failures ? "SOME CHECKS FAILED" : "ALL CHECKS PASSED");
    return failures ? 1 : 0;
}

static int client(const char *host, int port, int closed, const char *unknown) {
    struct in_addr ip = resolve(host);
    char server_addr[80];
    snprintf(server_addr, sizeof server_addr, "%s:%d", inet_ntoa(ip), port);
    int err;

    /* Blocking connect, then both ends' addresses. */
    int fd = connect_v4(ip, port, 0, &err);
    CHECK("blocking connect succeeds", err == 0, "errno %s", strerror(err));

    /* Overlay UDP (while the server's node is surely still a member): a
     * datagram to a port nobody reads is sent (and lost, as UDP may be); a
     * connected UDP socket names both ends by overlay address; broadcast
     * and multicast are refused. */
    {
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in usa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = ip};
        CHECK("UDP sendto an overlay address is sent", sendto(u, "x", 1, 0, (void *)&usa, sizeof usa) == 1, "errno %s",
              strerror(errno));
        CHECK("UDP connect to an overlay address", connect(u, (void *)&usa, sizeof usa) == 0, "errno %s",
              strerror(errno));
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char upeer[80] = "?";
        if (getpeername(u, (void *)&ss, &sl) == 0) fmt((struct sockaddr *)&ss, upeer, sizeof upeer);
        CHECK("UDP getpeername is the overlay destination", strcmp(upeer, server_addr) == 0, "got %s, want %s", upeer,
              server_addr);
        sl = sizeof ss;
        char ulocal[80] = "?";
        if (getsockname(u, (void *)&ss, &sl) == 0) fmt((struct sockaddr *)&ss, ulocal, sizeof ulocal);
        CHECK("UDP getsockname is on the overlay", strncmp(ulocal, "100.96.", 7) == 0, "got %s", ulocal);
        close(u);
        u = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in bcast = {.sin_family = AF_INET, .sin_port = htons(port)};
        bcast.sin_addr.s_addr = htonl(0xffffffff);
        CHECK("UDP broadcast from a node: ENETUNREACH",
              sendto(u, "x", 1, 0, (void *)&bcast, sizeof bcast) < 0 && errno == ENETUNREACH, "errno %s",
              strerror(errno));
        inet_aton("224.0.0.1", &bcast.sin_addr);
        CHECK("UDP multicast from a node: ENETUNREACH",
              sendto(u, "x", 1, 0, (void *)&bcast, sizeof bcast) < 0 && errno == ENETUNREACH, "errno %s",
              strerror(errno));
        close(u);
    }
    int one = 1;
    CHECK("TCP_NODELAY on a redirected socket",
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0, "%s", strerror(errno));
    errno = 4242;
    char mine[80];
    name_of(fd, 0, mine, sizeof mine);
    CHECK("errno preserved across a translated getsockname", errno == 4242, "errno became %d", errno);
    check_exchange("blocking", fd, server_addr);
    close(fd);

    /* A repeated connect answers like the kernel; a destination on a connected
     * TCP socket's sendto is ignored, not refused. */
    fd = connect_v4(ip, port, 0, &err);
    struct sockaddr_in again = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = ip};
    CHECK("connect on a connected socket: EISCONN",
          connect(fd, (void *)&again, sizeof again) < 0 && errno == EISCONN, "errno %s", strerror(errno));
    CHECK("sendto with an overlay address on a connected TCP socket is sent",
          sendto(fd, "x", 1, 0, (void *)&again, sizeof again) == 1, "errno %s", strerror(errno));
    close(fd);

    /* Non-blocking connect: EINPROGRESS (or immediate success), then SO_ERROR 0. */
    fd = connect_v4(ip, port, 1, &err);
    CHECK("non-blocking connect returns EINPROGRESS or succeeds", err == EINPROGRESS || err == 0, "errno %s",
          strerror(err));
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK("non-blocking connect becomes writable", poll(&p, 1, 5000) == 1, "poll timed out");
    int soerr = -1;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    CHECK("SO_ERROR is 0 after a successful non-blocking connect", soerr == 0, "SO_ERROR %s", strerror(soerr));
    fcntl(fd, F_SETFL, 0);
    check_exchange("non-blocking", fd, server_addr);
    close(fd);

    /* Refused, blocking and non-blocking. */
    fd = connect_v4(ip, closed, 0, &err);
    CHECK("connect to a port nobody listens on: ECONNREFUSED", err == ECONNREFUSED, "errno %s", strerror(err));
    close(fd);
    fd = connect_v4(ip, closed, 1, &err);
    if (err == EINPROGRESS) {
        p.fd = fd;
        poll(&p, 1, 5000);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        err = soerr;
    }
    CHECK("non-blocking connect to a closed port: ECONNREFUSED", err == ECONNREFUSED, "errno %s", strerror(err));
    close(fd);

    /* Unknown overlay address. */
    struct in_addr nobody;
    inet_aton(unknown, &nobody);
    fd = connect_v4(nobody, port, 0, &err);
    CHECK("connect to an unknown overlay address: EHOSTUNREACH", err == EHOSTUNREACH, "errno %s", strerror(err));
    close(fd);

    /* IPv6 socket with an IPv4-mapped overlay address. */
    int f6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    s6.sin6_addr.s6_addr[10] = 0xff;
    s6.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&s6.sin6_addr.s6_addr[12], &ip, 4);
    CHECK("AF_INET6 connect to a v4-mapped overlay address", connect(f6, (void *)&s6, sizeof s6) == 0, "%s",
          strerror(errno));
    char peer6[80], want6[100];
    name_of(f6, 1, peer6, sizeof peer6);
    int f24 = socket(AF_INET6, SOCK_STREAM, 0);
    CHECK("AF_INET6 connect with a 24-byte (RFC 2133) address", connect(f24, (void *)&s6, 24) == 0, "%s",
          strerror(errno));
    close(f24);
    snprintf(want6, sizeof want6, "::ffff:%s", server_addr);
    CHECK("AF_INET6 getpeername is the v4-mapped overlay address", strcmp(peer6, want6) == 0, "got %s, want %s",
          peer6, want6);
    close(f6);

    /* After fork, the child connects on its own. */
    pid_t child = fork();
    if (child == 0) {
        int e;
        int c = connect_v4(ip, port, 0, &e);
        char line[300];
        int ok = e == 0 && read_line(c, line, sizeof line) > 0 && strstr(line, "peer=100.") != NULL;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    CHECK("a forked child connects through the shim", WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d",
          status);

    /* getifaddrs shows boxer0 with our overlay address, and loopback. */
    char own_ip[80];
    snprintf(own_ip, sizeof own_ip, "%s", mine);
    *strrchr(own_ip, ':') = 0;
    check_interfaces(own_ip);

    /* Non-overlay traffic passes through untouched: a local listener on 127.0.0.1. */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(l, (void *)&lo, sizeof lo);
    listen(l, 1);
    socklen_t ll = sizeof lo;
    getsockname(l, (void *)&lo, &ll);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK("plain loopback connect passes through", connect(c, (void *)&lo, sizeof lo) == 0, "%s", strerror(errno));
    char lp[80];
    name_of(c, 1, lp, sizeof lp);
    CHECK("plain loopback getpeername is untouched", strncmp(lp, "127.0.0.1:", 10) == 0, "got %s", lp);
    close(c);
    close(l);

    printf("%s\n", failures ? "SOME CHECKS FAILED" : "ALL CHECKS PASSED");
    return failures ? 1 : 0;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench(const char *host, int port, int n) {
    struct in_addr ip = resolve(host);
    double *conn = calloc(n, sizeof *conn), *first = calloc(n, sizeof *first);
    const int warmup = 50; /* first contact and allocator warm-up are not measured */
    for (int i = -warmup; i < n; i++) {
        int err;
        double t0 = now_us();
        int fd = connect_v4(ip, port, 0, &err);
        double t1 = now_us();
        char b;
        if (err || read(fd, &b, 1) != 1) {
            fprintf(stderr, "bench: connection %d failed: %s\n", i, strerror(err));
            return 1;
        }
        double t2 = now_us();
        close(fd);
        if (i < 0) continue;
        conn[i] = t1 - t0;
        first[i] = t2 - t0;
    }
    qsort(conn, n, sizeof *conn, cmp);
    qsort(first, n, sizeof *first, cmp);
    printf("connect_p50_us=%.1f connect_p99_us=%.1f first_byte_p50_us=%.1f first_byte_p99_us=%.1f\n",
           conn[n / 2], conn[n * 99 / 100], first[n / 2], first[n * 99 / 100]);
    return 0;
}

static int oneshot(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (void *)&sa, sizeof sa) || listen(fd, 512)) return 1;
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        if (write(c, "!", 1) < 0) perror("write");
        close(c);
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "oneshot")) return oneshot(atoi(argv[2]));
    if (argc == 2 && !strcmp(argv[1], "identity")) return identity();
    if (argc == 6 && !strcmp(argv[1], "client")) return client(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5]);
    if (argc == 5 && !strcmp(argv[1], "bench")) return bench(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "unreachable")) {
        struct in_addr ip;
        inet_aton(argv[2], &ip);
        for (int i = 0; i < 2; i++) {
            int err;
            close(connect_v4(ip, atoi(argv[3]), 0, &err));
            CHECK("connect without a runtime: ENETUNREACH", err == ENETUNREACH, "errno %s", strerror(err));
        }
        return failures ? 1 : 0;
    }
    fprintf(stderr, "usage: see the comment at the top of probe.c\n");
    return 2;
}
