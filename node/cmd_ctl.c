/* cmd_ctl.c - `fedbft ctl`: one command over a node's admin socket. */
#include "cli.h"

#include "admin.h"
#include "fb_error.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

void cmd_ctl_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft ctl --socket PATH [--json] [--timeout MS] COMMAND [KEY=VALUE...]\n\n"
            "Send one command to a node's admin socket (DATA_DIR/admin.sock) and print\n"
            "the reply, as readable text or (--json) the raw JSON line.  KEY=VALUE pairs\n"
            "become fields of the request (numbers and true/false as JSON values).\n"
            "'fedbft ctl --socket PATH help' lists the node's commands.\n\n"
            "The same protocol works with socat:\n"
            "  echo '{\"command\":\"status\"}' | socat - UNIX-CONNECT:PATH\n");
}

static json_t *value_of(const char *v)
{
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (*v && end && *end == '\0')
        return json_integer(n);
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
        return json_boolean(v[0] == 't');
    return json_string(v);
}

static void print_text(json_t *j, int indent)
{
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        if (json_is_object(v)) {
            printf("%*s%s:\n", indent, "", key);
            print_text(v, indent + 2);
            continue;
        }
        if (json_is_array(v) && json_array_size(v) > 0 && json_is_object(json_array_get(v, 0))) {
            size_t i;
            json_t *item;
            printf("%*s%s:\n", indent, "", key);
            json_array_foreach(v, i, item)
            {
                printf("%*s- #%zu\n", indent + 2, "", i);
                print_text(item, indent + 4);
            }
            continue;
        }
        char *s = json_is_string(v)
                      ? NULL
                      : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(6));
        printf("%*s%-20s %s\n", indent, "", key, s ? s : json_string_value(v));
        free(s);
    }
}

int cmd_ctl(int argc, char **argv)
{
    static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL;
    int json = 0, timeout = 5000, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "+s:jt:", opts, NULL)) != -1) {
        switch (ch) {
        case 's':
            path = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 't':
            timeout = atoi(optarg);
            break;
        default:
            cmd_ctl_usage(stderr);
            return 2;
        }
    }
    if (!path || optind >= argc) {
        cmd_ctl_usage(stderr);
        return 2;
    }
    json_t *req = json_pack("{s:s}", "command", argv[optind]);
    for (int i = optind + 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "fedbft ctl: argument '%s' is not KEY=VALUE\n", argv[i]);
            json_decref(req);
            return 2;
        }
        *eq = '\0';
        json_object_set_new(req, argv[i], value_of(eq + 1));
    }
    json_t *reply = NULL;
    char err[512];
    int rc = admin_call(path, req, timeout, &reply, err, sizeof err);
    json_decref(req);
    if (rc) {
        fprintf(stderr, "fedbft ctl: %s\n", err);
        return 1;
    }
    const char *error = json_string_value(json_object_get(reply, "error"));
    if (json) {
        char *s = json_dumps(reply, JSON_COMPACT);
        printf("%s\n", s ? s : "{}");
        free(s);
    } else if (error) {
        fprintf(stderr, "fedbft ctl: %s\n", error);
    } else {
        print_text(reply, 0);
    }
    json_decref(reply);
    return error ? 1 : 0;
}
