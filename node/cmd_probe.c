/* cmd_probe.c - `fedbft probe`: one HTTP GET of a node's /ready (or another
 * path) that exits 0 on a 2xx answer: a health check for containers, where
 * there is no curl.
 *
 * Blocking and bounded: one connection, one request, at most PROBE_READ_MAX
 * bytes of answer, all within --timeout-ms (name resolution aside: a DNS
 * name is resolved by getaddrinfo, which takes no deadline). */
#include "cli.h"

#include "config.h"
#include "fb_error.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <http_parser.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROBE_DEFAULT_PATH "/ready"
#define PROBE_DEFAULT_HOST "127.0.0.1"
#define PROBE_DEFAULT_TIMEOUT_MS 2000
#define PROBE_MAX_TIMEOUT_MS 600000
#define PROBE_READ_MAX (64 * 1024) /* bytes of answer read at most */
#define PROBE_PATH_MAX 1024
#define PROBE_REASON_MAX 64 /* reason phrase kept ("Service Unavailable") */
#define PROBE_LINE_MAX 160  /* first line of the body kept for the message */

void cmd_probe_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft probe [--config NODE_JSON | [--host H] --port P] [--path PATH]\n"
            "                    [--timeout-ms T]\n\n"
            "One HTTP GET of PATH on a node's HTTP port (node.json \"http_port\"), for health\n"
            "checks where there is no curl (a Docker HEALTHCHECK, a Kubernetes exec probe).\n"
            "Prints one line: the URL, then the status and the first line of the body, or\n"
            "why no answer came (connection refused, timed out, not HTTP).\n\n"
            "What the node answers:\n"
            "  /ready    200 \"ready\" while the node is connected to a quorum of replicas\n"
            "            (2f+1 of 3f+1, itself included), in an active view (no view change\n"
            "            under way) and not fetching state from its peers; else 503 \"not\n"
            "            ready\".\n"
            "            A readiness check: whether the node can take part in ordering now.\n"
            "  /health   200 \"ok\" whenever the node's event loop answers: a liveness check.\n"
            "  /metrics  Prometheus metrics.\n\n"
            "Options:\n"
            "  --config NODE_JSON  probe the node this node.json configures: its http_port on\n"
            "                      its \"listen\" address (0.0.0.0 is probed as 127.0.0.1 and\n"
            "                      :: as ::1) or, without one, its host in cluster.json\n"
            "  --host H            the address or name to probe (default %s)\n"
            "  --port P            the HTTP port (required without --config)\n"
            "  --path PATH         the path to GET (default %s)\n"
            "  --timeout-ms T      for connecting and the whole answer, 1..%d (default %d)\n"
            "  --help              show this help\n\n"
            "Exit status: 0 on a 2xx status; 1 on any other status, a refused or failed\n"
            "connection, a timeout, or an answer that is not HTTP; 2 on a usage error (a\n"
            "node.json that does not load or has no http_port included).\n",
            PROBE_DEFAULT_HOST, PROBE_DEFAULT_PATH, PROBE_MAX_TIMEOUT_MS, PROBE_DEFAULT_TIMEOUT_MS);
}

/* ------------------------------------------------------------ options */

typedef struct probe_opts {
    const char *config, *host, *port_arg, *path;
    uint32_t timeout_ms;
} probe_opts;

/* Where to probe, resolved from the options or node.json. */
typedef struct probe_target {
    char host[CFG_HOST_MAX];
    uint16_t port;
    char url[CFG_HOST_MAX + PROBE_PATH_MAX + 32];
} probe_target;

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return FB_EINVAL;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return FB_EINVAL;
    *out = v;
    return 0;
}

/* A path we can put on the request line: starts with '/', printable, no
 * spaces (nothing that could end the line or add a header). */
static bool path_ok(const char *path)
{
    if (path[0] != '/' || strlen(path) >= PROBE_PATH_MAX)
        return false;
    for (const char *p = path; *p; p++)
        if (!isgraph((unsigned char)*p))
            return false;
    return true;
}

enum { OPT_CONFIG = 256, OPT_HOST, OPT_PORT, OPT_PATH, OPT_TIMEOUT };

static int parse_probe_opts(int argc, char **argv, probe_opts *o)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, OPT_CONFIG},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"path", required_argument, NULL, OPT_PATH},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {NULL, 0, NULL, 0},
    };
    *o = (probe_opts){.path = PROBE_DEFAULT_PATH, .timeout_ms = PROBE_DEFAULT_TIMEOUT_MS};
    unsigned long v;
    int c;
    optind = 1;
    opterr = 0; /* we print our own message */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            o->config = optarg;
            break;
        case OPT_HOST:
            o->host = optarg;
            break;
        case OPT_PORT:
            o->port_arg = optarg;
            break;
        case OPT_PATH:
            o->path = optarg;
            break;
        case OPT_TIMEOUT:
            if (parse_uint(optarg, 1, PROBE_MAX_TIMEOUT_MS, &v) != 0)
                return cli_usage_error("probe", "probe",
                                       "--timeout-ms %s: must be 1..%d milliseconds", optarg,
                                       PROBE_MAX_TIMEOUT_MS);
            o->timeout_ms = (uint32_t)v;
            break;
        default: {
            const char *arg = optind > 1 ? argv[optind - 1] : NULL;
            return cli_usage_error("probe", "probe", "%s: %s", arg ? arg : "?",
                                   optopt ? "needs a value" : "unknown option");
        }
        }
    }
    if (optind < argc)
        return cli_usage_error("probe", "probe", "unexpected argument '%s'", argv[optind]);
    if (o->config && (o->host || o->port_arg))
        return cli_usage_error("probe", "probe",
                               "--config and --host/--port: give one (--config reads the "
                               "address and port from node.json)");
    if (!o->config && !o->port_arg)
        return cli_usage_error("probe", "probe",
                               "what to probe? give --config NODE_JSON or --port P");
    if (!path_ok(o->path))
        return cli_usage_error("probe", "probe",
                               "--path '%s': must start with '/' and hold no spaces or control "
                               "characters (at most %d bytes), e.g. /ready",
                               o->path, PROBE_PATH_MAX - 1);
    return 0;
}

/* An unspecified (wildcard) bind address is probed on the loopback. */
static const char *probe_host_for_listen(const char *listen)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, listen, &a4) == 1 && a4.s_addr == htonl(INADDR_ANY))
        return "127.0.0.1";
    if (inet_pton(AF_INET6, listen, &a6) == 1 && IN6_IS_ADDR_UNSPECIFIED(&a6))
        return "::1";
    return listen;
}

/* Without "listen" a node binds its own host in cluster.json. */
static int host_from_cluster(const cfg_node *n, char *host, size_t cap, char *err, size_t errlen)
{
    cfg_cluster cl;
    int rc = cfg_cluster_load(n->cluster_path, &cl, err, errlen);
    if (rc)
        return rc;
    if (n->id < cl.n)
        snprintf(host, cap, "%s", cl.replicas[n->id].host);
    else
        rc = fb_errf(err, errlen, FB_EINVAL, "%s: id %u is not a replica of %s", n->path, n->id,
                     n->cluster_path);
    cfg_cluster_free(&cl);
    return rc;
}

/* The node's HTTP address from node.json (and cluster.json without "listen"). */
static int target_from_config(const char *path, probe_target *t)
{
    char err[1024];
    cfg_node *n = malloc(sizeof *n);
    if (!n) {
        fprintf(stderr, "fedbft probe: out of memory\n");
        return 2;
    }
    int rc = cfg_node_load(path, n, err, sizeof err);
    if (rc) {
        fprintf(stderr, "fedbft probe: %s\n", err);
    } else if (n->http_port == 0) {
        fprintf(stderr,
                "fedbft probe: %s: http_port is 0: this node serves no HTTP (set "
                "\"http_port\" to probe it)\n",
                path);
        rc = FB_EINVAL;
    } else if (n->listen[0]) {
        snprintf(t->host, sizeof t->host, "%s", probe_host_for_listen(n->listen));
    } else {
        rc = host_from_cluster(n, t->host, sizeof t->host, err, sizeof err);
        if (rc)
            fprintf(stderr, "fedbft probe: %s\n", err);
    }
    t->port = n->http_port;
    free(n);
    return rc ? 2 : 0;
}

static int resolve_target(const probe_opts *o, probe_target *t)
{
    memset(t, 0, sizeof *t);
    if (o->config) {
        int rc = target_from_config(o->config, t);
        if (rc)
            return rc;
    } else {
        char err[512];
        unsigned long port;
        const char *host = o->host ? o->host : PROBE_DEFAULT_HOST;
        if (cfg_check_host(host, err, sizeof err) != 0)
            return cli_usage_error("probe", "probe", "--host: %s", err);
        if (parse_uint(o->port_arg, 1, 65535, &port) != 0)
            return cli_usage_error("probe", "probe", "--port %s: must be a TCP port, 1..65535",
                                   o->port_arg);
        snprintf(t->host, sizeof t->host, "%s", host);
        t->port = (uint16_t)port;
    }
    bool v6 = strchr(t->host, ':') != NULL; /* an IPv6 literal goes in brackets */
    snprintf(t->url, sizeof t->url, "http://%s%s%s:%u%s", v6 ? "[" : "", t->host, v6 ? "]" : "",
             t->port, o->path);
    return 0;
}

/* ------------------------------------------------------------ the request */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ms_left(int64_t deadline)
{
    int64_t left = deadline - now_ms();
    return left > 0 ? (int)left : 0;
}

/* Why a probe failed, in words for the one-line report. */
static void describe_errno(int e, char *why, size_t cap)
{
    if (e == ECONNREFUSED) {
        snprintf(why, cap, "connection refused");
        return;
    }
    snprintf(why, cap, "%s", strerror(e));
    why[0] = (char)tolower((unsigned char)why[0]); /* "No route" -> "no route" */
}

/* Wait for fd to be ready for events, up to the deadline: 0, or the errno
 * (ETIMEDOUT when the deadline passed). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&pfd, 1, ms_left(deadline));
        if (n > 0)
            return 0;
        if (n == 0)
            return ETIMEDOUT;
        if (errno != EINTR)
            return errno;
    }
}

/* Connect to one address before the deadline: the socket, or -1 with the
 * errno in *e. */
static int connect_one(const struct addrinfo *a, int64_t deadline, int *e)
{
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
        *e = errno;
        return -1;
    }
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
        return fd;
    *e = errno;
    if (*e == EINPROGRESS) {
        socklen_t sl = sizeof *e;
        *e = wait_fd(fd, POLLOUT, deadline);
        if (*e == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, e, &sl) != 0)
            *e = errno;
        if (*e == 0)
            return fd;
    }
    close(fd);
    return -1;
}

/* Connect to the first address of host:port that answers; -1 with why. */
static int probe_connect(const probe_target *t, int64_t deadline, uint32_t timeout_ms, char *why,
                         size_t cap)
{
    char service[8];
    snprintf(service, sizeof service, "%u", t->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int g = getaddrinfo(t->host, service, &hints, &res);
    if (g != 0) {
        snprintf(why, cap, "cannot resolve the host: %s", gai_strerror(g));
        return -1;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *a = res; a && fd < 0 && ms_left(deadline) > 0; a = a->ai_next)
        fd = connect_one(a, deadline, &e);
    freeaddrinfo(res);
    if (fd >= 0)
        return fd;
    if (e == ETIMEDOUT || ms_left(deadline) == 0)
        snprintf(why, cap, "no connection within %u ms (timed out)", timeout_ms);
    else
        describe_errno(e, why, cap);
    return -1;
}

static int send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int e = wait_fd(fd, POLLOUT, deadline);
            if (e)
                return e;
            continue;
        }
        return n < 0 ? errno : EPIPE;
    }
    return 0;
}

/* ------------------------------------------------------------ the answer */

typedef struct probe_resp {
    bool headers_done, complete;
    char reason[PROBE_REASON_MAX];
    size_t reason_len;
    char line[PROBE_LINE_MAX]; /* the first line of the body */
    size_t line_len;
    bool line_done;
} probe_resp;

static int on_status(http_parser *p, const char *at, size_t len)
{
    probe_resp *r = p->data;
    size_t room = sizeof r->reason - 1 - r->reason_len;
    size_t n = len < room ? len : room;
    memcpy(r->reason + r->reason_len, at, n);
    r->reason_len += n;
    r->reason[r->reason_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    ((probe_resp *)p->data)->headers_done = true;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    probe_resp *r = p->data;
    for (size_t i = 0; i < len && !r->line_done; i++) {
        unsigned char ch = (unsigned char)at[i];
        if (ch == '\n' || r->line_len == sizeof r->line - 1) {
            r->line_done = true;
        } else if (ch != '\r') {
            r->line[r->line_len++] = isprint(ch) ? (char)ch : '?';
            r->line[r->line_len] = '\0';
        }
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    ((probe_resp *)p->data)->complete = true;
    return 0;
}

/* Read and parse the answer until it is complete, the peer closes, the
 * deadline passes or PROBE_READ_MAX bytes came.  0 once a status line and
 * headers were parsed (enough to judge), else the reason in why. */
static int read_answer(int fd, http_parser *parser, probe_resp *r, int64_t deadline,
                       uint32_t timeout_ms, char *why, size_t cap)
{
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_status = on_status;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    char buf[16384];
    size_t total = 0;
    while (!r->complete && total < PROBE_READ_MAX) {
        int e = wait_fd(fd, POLLIN, deadline);
        if (e) {
            if (r->headers_done)
                return 0; /* the status is known; the rest of the body is not needed */
            if (e == ETIMEDOUT)
                snprintf(why, cap, "no answer within %u ms (timed out)", timeout_ms);
            else
                describe_errno(e, why, cap);
            return FB_EIO;
        }
        size_t want = PROBE_READ_MAX - total < sizeof buf ? PROBE_READ_MAX - total : sizeof buf;
        ssize_t n = recv(fd, buf, want, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0) {
            if (r->headers_done)
                return 0;
            describe_errno(errno, why, cap);
            return FB_EIO;
        }
        total += (size_t)n;
        http_parser_execute(parser, &settings, buf, (size_t)n); /* n == 0: end of input */
        enum http_errno pe = HTTP_PARSER_ERRNO(parser);
        if (pe != HPE_OK && !r->complete) {
            snprintf(why, cap, "not an HTTP answer (%s)", http_errno_description(pe));
            return FB_EINVAL;
        }
        if (n == 0)
            break;
    }
    if (r->headers_done)
        return 0;
    if (total >= PROBE_READ_MAX)
        snprintf(why, cap, "no end of the headers in the first %d bytes of the answer",
                 PROBE_READ_MAX);
    else
        snprintf(why, cap, "connection closed before an HTTP answer (%zu bytes)", total);
    return FB_EIO;
}

/* GET the path; 0 with the parsed answer, or the reason there is none. */
static int probe_get(const probe_target *t, const probe_opts *o, http_parser *parser, probe_resp *r,
                     char *why, size_t cap)
{
    int64_t deadline = now_ms() + o->timeout_ms;
    int fd = probe_connect(t, deadline, o->timeout_ms, why, cap);
    if (fd < 0)
        return FB_EIO;
    char req[PROBE_PATH_MAX + CFG_HOST_MAX + 160];
    bool v6 = strchr(t->host, ':') != NULL;
    int len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nUser-Agent: fedbft-probe\r\n"
                       "Accept: */*\r\nConnection: close\r\n\r\n",
                       o->path, v6 ? "[" : "", t->host, v6 ? "]" : "", t->port);
    int rc = 0;
    int e = send_all(fd, req, (size_t)len, deadline);
    if (e) {
        if (e == ETIMEDOUT)
            snprintf(why, cap, "could not send the request within %u ms", o->timeout_ms);
        else
            describe_errno(e, why, cap);
        rc = FB_EIO;
    }
    if (rc == 0) {
        http_parser_init(parser, HTTP_RESPONSE);
        parser->data = r;
        rc = read_answer(fd, parser, r, deadline, o->timeout_ms, why, cap);
    }
    close(fd);
    return rc;
}

int cmd_probe(int argc, char **argv)
{
    probe_opts o;
    probe_target t;
    int rc = parse_probe_opts(argc, argv, &o);
    if (rc == 0)
        rc = resolve_target(&o, &t);
    if (rc)
        return rc;
    http_parser parser;
    probe_resp r;
    memset(&r, 0, sizeof r);
    char why[256];
    if (probe_get(&t, &o, &parser, &r, why, sizeof why) != 0) {
        fprintf(stderr, "probe: %s: %s\n", t.url, why);
        return 1;
    }
    unsigned status = parser.status_code;
    const char *reason = r.reason_len ? r.reason : http_status_str((enum http_status)status);
    bool ok = status >= 200 && status <= 299;
    fprintf(ok ? stdout : stderr, "probe: %s: %u %s%s%s\n", t.url, status, reason,
            r.line_len ? ": " : "", r.line);
    return ok ? 0 : 1;
}
