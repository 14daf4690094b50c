/* admin.h - the admin socket: a Unix socket in the data directory (mode
 * 0600), one JSON object per line in each direction, usable with socat:
 *
 *   echo '{"command":"status"}' | socat - UNIX-CONNECT:DATA_DIR/admin.sock
 *
 * Requests: {"command": NAME, ...args}.  Replies: one JSON object; errors are
 * {"error": "message"}.  A malformed, unknown or oversized request (over
 * ADMIN_MAX_LINE bytes) gets an error and the connection stays usable.
 * Commands are registered by the node (admin_command).  Loop thread only.
 */
#ifndef FB_ADMIN_H
#define FB_ADMIN_H

#include <jansson.h>
#include <uv.h>

#define ADMIN_SOCKET_FILE "admin.sock"
#define ADMIN_MAX_LINE 65536
#define ADMIN_MAX_CONNS 16

typedef struct admin admin;

/* Handle one request; return a new JSON object (the reply), or NULL with
 * *err set to a static message. */
typedef json_t *(*admin_fn)(void *arg, json_t *request, const char **err);

int admin_new(uv_loop_t *loop, const char *path, admin **out, char *err, size_t errlen);

/* Register a command (name and help are static strings). */
int admin_command(admin *a, const char *name, const char *help, admin_fn fn, void *arg);

/* Close the listener and every connection; cb runs when all are closed. */
void admin_close(admin *a, void (*cb)(void *arg), void *arg);
void admin_free(admin *a);

/* Client side (fedbft ctl): send one request line, read one reply line.
 * Blocking, with a timeout.  Returns 0 and a new JSON object, or an FB_E*
 * code with a message. */
int admin_call(const char *path, json_t *request, int timeout_ms, json_t **reply, char *err,
               size_t errlen);

#endif
