/* admin.c - the admin socket server (libuv pipe) and its blocking client. */
#include "admin.h"

#include "fb_error.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_COMMANDS 32

typedef struct command {
    const char *name, *help;
    admin_fn fn;
    void *arg;
} command;

typedef struct aconn {
    uv_pipe_t pipe;
    admin *a;
    char buf[ADMIN_MAX_LINE];
    size_t len;
    bool skipping; /* discarding the rest of an oversized line */
    struct aconn *next;
} aconn;

struct admin {
    uv_pipe_t listener;
    char path[108];
    command cmds[MAX_COMMANDS];
    int ncmds;
    aconn *conns;
    int nconns;
    int closing_handles;
    void (*close_cb)(void *);
    void *close_arg;
};

/* ------------------------------------------------------------ replies */

static void write_done(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void send_json(aconn *c, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(j);
    if (!text)
        return;
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    uv_write_t *w = malloc(sizeof *w);
    if (!w) {
        free(line);
        return;
    }
    w->data = line;
    uv_buf_t b = uv_buf_init(line, (unsigned)(n + 1));
    if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, write_done) != 0) {
        free(line);
        free(w);
    }
}

static void send_error(aconn *c, const char *msg)
{
    send_json(c, json_pack("{s:s}", "error", msg));
}

static json_t *help_cmd(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    admin *a = arg;
    json_t *cmds = json_object();
    for (int i = 0; i < a->ncmds; i++)
        json_object_set_new(cmds, a->cmds[i].name, json_string(a->cmds[i].help));
    return json_pack("{s:o}", "commands", cmds);
}

static void handle_line(aconn *c, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(line, len, 0, &jerr);
    if (!req || !json_is_object(req)) {
        char msg[256];
        snprintf(msg, sizeof msg, "request is not a JSON object: %s",
                 req ? "expected {\"command\": ...}" : jerr.text);
        json_decref(req);
        send_error(c, msg);
        return;
    }
    const char *name = json_string_value(json_object_get(req, "command"));
    if (!name) {
        json_decref(req);
        send_error(c, "missing \"command\" (try {\"command\":\"help\"})");
        return;
    }
    for (int i = 0; i < c->a->ncmds; i++) {
        command *cmd = &c->a->cmds[i];
        if (strcmp(cmd->name, name) != 0)
            continue;
        const char *err = NULL;
        json_t *reply = cmd->fn(cmd->arg, req, &err);
        json_decref(req);
        if (reply)
            send_json(c, reply);
        else
            send_error(c, err ? err : "command failed");
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "unknown command '%.64s' (try {\"command\":\"help\"})", name);
    json_decref(req);
    send_error(c, msg);
}

/* ------------------------------------------------------------ connections */

static void conn_closed(uv_handle_t *h)
{
    aconn *c = h->data;
    admin *a = c->a;
    aconn **p = &a->conns;
    while (*p && *p != c)
        p = &(*p)->next;
    if (*p)
        *p = c->next;
    a->nconns--;
    free(c);
    if (a->close_cb && --a->closing_handles == 0)
        a->close_cb(a->close_arg);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    aconn *c = h->data;
    if (c->len == sizeof c->buf) { /* full without a newline: an oversized line */
        c->skipping = true;
        c->len = 0;
    }
    *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof c->buf - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    aconn *c = s->data;
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, conn_closed);
        return;
    }
    c->len += (size_t)nread;
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (!nl)
            break;
        size_t line = (size_t)(nl - c->buf);
        if (c->skipping) {
            c->skipping = false;
            send_error(c, "request line too long (limit 65536 bytes)");
        } else if (line > 0) {
            handle_line(c, c->buf, line);
        }
        memmove(c->buf, nl + 1, c->len - line - 1);
        c->len -= line + 1;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    admin *a = server->data;
    if (status < 0)
        return;
    aconn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->a = a;
    uv_pipe_init(server->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->next = a->conns;
    a->conns = c;
    a->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0 || a->nconns > ADMIN_MAX_CONNS) {
        uv_close((uv_handle_t *)&c->pipe, conn_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* ------------------------------------------------------------ lifecycle */

int admin_new(uv_loop_t *loop, const char *path, admin **out, char *err, size_t errlen)
{
    admin *a = calloc(1, sizeof *a);
    if (!a)
        return FB_ENOMEM;
    if (strlen(path) >= sizeof a->path) {
        free(a);
        return fb_errf(err, errlen, FB_EINVAL,
                       "admin socket path %s is too long for a Unix socket (max %zu bytes); "
                       "use a shorter data_dir",
                       path, sizeof a->path - 1);
    }
    snprintf(a->path, sizeof a->path, "%s", path);
    /* A socket left by a killed node would make bind fail. */
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    uv_pipe_init(loop, &a->listener, 0);
    a->listener.data = a;
    /* Created owner-only: the admin socket can stop the node. */
    mode_t old = umask(0177);
    int rc = uv_pipe_bind(&a->listener, path);
    umask(old);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->listener, 8, on_connection);
    if (rc != 0) {
        uv_close((uv_handle_t *)&a->listener, NULL);
        fb_errf(err, errlen, FB_EIO, "cannot listen on admin socket %s: %s", path, uv_strerror(rc));
        *out = a; /* the caller closes it */
        return FB_EIO;
    }
    admin_command(a, "help", "list the commands", help_cmd, a);
    *out = a;
    return 0;
}

int admin_command(admin *a, const char *name, const char *help, admin_fn fn, void *arg)
{
    if (a->ncmds == MAX_COMMANDS)
        return FB_ETOOBIG;
    a->cmds[a->ncmds++] = (command){name, help, fn, arg};
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    admin *a = h->data;
    if (a->close_cb && --a->closing_handles == 0)
        a->close_cb(a->close_arg);
}

void admin_close(admin *a, void (*cb)(void *arg), void *arg)
{
    a->close_cb = cb;
    a->close_arg = arg;
    a->closing_handles = 1 + a->nconns;
    for (aconn *c = a->conns; c; c = c->next)
        if (!uv_is_closing((uv_handle_t *)&c->pipe))
            uv_close((uv_handle_t *)&c->pipe, conn_closed);
    if (!uv_is_closing((uv_handle_t *)&a->listener))
        uv_close((uv_handle_t *)&a->listener, listener_closed);
    else if (--a->closing_handles == 0 && cb)
        cb(arg);
    unlink(a->path);
}

void admin_free(admin *a)
{
    free(a);
}

/* ------------------------------------------------------------ client */

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int admin_call(const char *path, json_t *request, int timeout_ms, json_t **reply, char *err,
               size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return fb_errf(err, errlen, FB_EINVAL, "socket path %s is too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return fb_errf(err, errlen, e == ENOENT ? FB_ENOENT : FB_EIO,
                       "cannot connect to %s: %s (is the node running?)", path, strerror(e));
    }
    char *text = json_dumps(request, JSON_COMPACT);
    int rc = 0;
    if (!text)
        rc = FB_ENOMEM;
    size_t n = text ? strlen(text) : 0;
    if (rc == 0 && (write(fd, text, n) != (ssize_t)n || write(fd, "\n", 1) != 1))
        rc = fb_errf(err, errlen, FB_EIO, "cannot write to %s: %s", path, strerror(errno));
    free(text);
    static char buf[1 << 20];
    size_t len = 0;
    long deadline = now_ms() + timeout_ms;
    while (rc == 0 && !memchr(buf, '\n', len)) {
        long left = deadline - now_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            rc = fb_errf(err, errlen, FB_EIO, "no reply from %s within %d ms", path, timeout_ms);
            break;
        }
        ssize_t k = read(fd, buf + len, sizeof buf - len);
        if (k <= 0 || len + (size_t)k == sizeof buf)
            rc = fb_errf(err, errlen, FB_EIO, "connection to %s closed or reply too long", path);
        else
            len += (size_t)k;
    }
    close(fd);
    if (rc)
        return rc;
    json_error_t jerr;
    *reply = json_loadb(buf, (size_t)((char *)memchr(buf, '\n', len) - buf), 0, &jerr);
    if (!*reply)
        return fb_errf(err, errlen, FB_EPROTO, "reply is not JSON: %s", jerr.text);
    return 0;
}
