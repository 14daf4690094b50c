/* cmd_inspect.c - `fedbft inspect`: what a stopped node's store holds. */
#include "cli.h"

#include "config.h"
#include "fb_error.h"
#include "store.h"

#include <getopt.h>
#include <sodium.h>
#include <stdio.h>

void cmd_inspect_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft inspect --config FILE\n\n"
                 "Print what the node's store holds: last executed sequence number, the\n"
                 "state digest of its key-value state, the number of keys and consensus\n"
                 "records.  Two nodes that executed the same sequence number must print the\n"
                 "same digest.  Run it while the node is stopped.\n");
}

static void noop_wake(void *arg)
{
    (void)arg;
}

int cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        if (ch == 'c')
            path = optarg;
        else {
            cmd_inspect_usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        cmd_inspect_usage(stderr);
        return 2;
    }
    char err[1024];
    cfg_node cfg;
    store *s = NULL;
    store_loaded ld;
    if (cfg_node_load(path, &cfg, err, sizeof err) != 0 ||
        store_open(cfg.data_dir, cfg.durability, noop_wake, NULL, &s, err, sizeof err) != 0 ||
        store_load(s, &ld, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft inspect: %s\n", err);
        store_close(s);
        return 1;
    }
    char hex[2 * FB_DIGEST_LEN + 1];
    sodium_bin2hex(hex, sizeof hex, ld.app_digest, FB_DIGEST_LEN);
    printf("node %u: last_executed=%llu state_digest=%s keys=%llu records=%zu\n", cfg.id,
           (unsigned long long)ld.last_executed, hex, (unsigned long long)ld.kv_keys, ld.nrecords);
    store_loaded_free(&ld);
    store_close(s);
    return 0;
}
