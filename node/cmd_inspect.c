/* cmd_inspect.c - `fedbft inspect`: what a stopped node's store holds, and
 * whether it holds a given list of key-value pairs. */
#include "cli.h"

#include "config.h"
#include "fb_error.h"
#include "store.h"
#include "store_db.h"

#include <errno.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_EXAMPLES 5 /* mismatches shown by --check */

void cmd_inspect_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft inspect --config FILE [--check PAIRS]\n\n"
                 "Print what the node's store holds: last executed sequence number, the\n"
                 "state digest of its key-value state, the number of keys and consensus\n"
                 "records.  Two nodes that executed the same sequence number must print the\n"
                 "same digest.  Run it while the node is stopped.\n\n"
                 "  --check PAIRS  also check the key-value state against PAIRS, a file of\n"
                 "                 \"KEY VALUE\" lines (KEY without spaces, VALUE the rest of the\n"
                 "                 line), as `fedbft client load --acked` writes them; when a\n"
                 "                 key appears more than once its last line counts.  Prints\n"
                 "                 how many keys are missing and how many hold another value,\n"
                 "                 with the first few of each on stderr.\n\n"
                 "Exit status: 0 ok, 1 when a checked key is missing or differs or the store\n"
                 "cannot be read, 2 for a usage error.\n");
}

static void noop_wake(void *arg)
{
    (void)arg;
}

/* Load PAIRS into the temporary table expect(key, value), the last line for
 * a key replacing earlier ones.  Returns 0 or FB_E* with err set. */
static int load_pairs(sqlite3 *db, const char *file, uint64_t *lines, char *err, size_t errlen)
{
    FILE *f = fopen(file, "r");
    if (!f)
        return fb_errf(err, errlen, FB_ENOENT, "%s: cannot open: %s", file, strerror(errno));
    size_t cap = STORE_MAX_KEY + STORE_MAX_VALUE + 3; /* key, space, value, newline, NUL */
    char *line = malloc(cap);
    sqlite3_stmt *ins = NULL;
    int rc = line ? 0 : FB_ENOMEM;
    if (!rc && (sqlite3_exec(db,
                             "CREATE TEMP TABLE expect(key BLOB PRIMARY KEY, value BLOB);"
                             "BEGIN",
                             NULL, NULL, NULL) != SQLITE_OK ||
                sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO temp.expect VALUES (?1, ?2)", -1,
                                   &ins, NULL) != SQLITE_OK))
        rc = fb_errf(err, errlen, FB_EIO, "cannot stage %s: %s", file, sqlite3_errmsg(db));
    *lines = 0;
    while (!rc && fgets(line, (int)cap, f)) {
        size_t len = strlen(line);
        ++*lines;
        if (len && line[len - 1] == '\n')
            line[--len] = '\0';
        else if (!feof(f))
            rc = fb_errf(err, errlen, FB_ETOOBIG, "%s:%llu: line longer than a key and a value",
                         file, (unsigned long long)*lines);
        if (!rc && len == 0)
            continue; /* a blank line */
        char *sp = strchr(line, ' ');
        if (!rc && (!sp || sp == line || (size_t)(sp - line) > STORE_MAX_KEY))
            rc = fb_errf(err, errlen, FB_EINVAL, "%s:%llu: expected \"KEY VALUE\"", file,
                         (unsigned long long)*lines);
        if (rc)
            break;
        size_t klen = (size_t)(sp - line);
        store_db_bind_blob(ins, 1, (const uint8_t *)line, klen);
        store_db_bind_blob(ins, 2, (const uint8_t *)sp + 1, len - klen - 1);
        if (sqlite3_step(ins) != SQLITE_DONE)
            rc = fb_errf(err, errlen, FB_EIO, "cannot stage %s: %s", file, sqlite3_errmsg(db));
        sqlite3_reset(ins);
    }
    if (!rc && ferror(f))
        rc = fb_errf(err, errlen, FB_EIO, "%s: read error", file);
    if (!rc && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = fb_errf(err, errlen, FB_EIO, "cannot stage %s: %s", file, sqlite3_errmsg(db));
    sqlite3_finalize(ins);
    free(line);
    fclose(f);
    return rc;
}

/* Print the key (and values) of one mismatch, shortened to fit a line. */
static void show_mismatch(sqlite3_stmt *st, bool missing)
{
    int klen = sqlite3_column_bytes(st, 0), elen = sqlite3_column_bytes(st, 1);
    const char *key = (const char *)sqlite3_column_blob(st, 0);
    const char *want = (const char *)sqlite3_column_blob(st, 1);
    if (missing) {
        fprintf(stderr, "  missing: %.*s\n", klen > 80 ? 80 : klen, key);
        return;
    }
    int hlen = sqlite3_column_bytes(st, 2);
    const char *have = (const char *)sqlite3_column_blob(st, 2);
    fprintf(stderr, "  differs: %.*s: expected '%.*s', holds '%.*s'\n", klen > 80 ? 80 : klen, key,
            elen > 40 ? 40 : elen, want ? want : "", hlen > 40 ? 40 : hlen, have ? have : "");
}

/* Check the node's KV state (the sqlite file at dbpath, not in use) against
 * the pairs in file.  Returns 0 when every pair is there, 1 otherwise. */
static int check_pairs(const cfg_node *cfg, const char *file)
{
    char err[1024], dbpath[CFG_PATH_MAX + 32];
    snprintf(dbpath, sizeof dbpath, "%s/%s", cfg->data_dir, STORE_DB_FILE);
    store_db d;
    uint64_t lines = 0, keys = 0, missing = 0, differ = 0;
    int rc = store_db_open(&d, dbpath, cfg->durability, err, sizeof err);
    if (!rc)
        rc = load_pairs(d.db, file, &lines, err, sizeof err);
    sqlite3_stmt *st = NULL;
    if (!rc && sqlite3_prepare_v2(d.db,
                                  "SELECT e.key, e.value, kv.value, kv.key IS NULL "
                                  "FROM temp.expect e LEFT JOIN main.kv kv ON kv.key = e.key "
                                  "ORDER BY e.rowid",
                                  -1, &st, NULL) != SQLITE_OK)
        rc = fb_errf(err, sizeof err, FB_EIO, "%s: %s", dbpath, sqlite3_errmsg(d.db));
    int step = SQLITE_DONE;
    while (!rc && (step = sqlite3_step(st)) == SQLITE_ROW) {
        keys++;
        bool gone = sqlite3_column_int(st, 3) != 0;
        bool same = !gone && sqlite3_column_bytes(st, 1) == sqlite3_column_bytes(st, 2) &&
                    memcmp(sqlite3_column_blob(st, 1) ? sqlite3_column_blob(st, 1) : "",
                           sqlite3_column_blob(st, 2) ? sqlite3_column_blob(st, 2) : "",
                           (size_t)sqlite3_column_bytes(st, 1)) == 0;
        if (same)
            continue;
        if (missing + differ < CHECK_EXAMPLES)
            show_mismatch(st, gone);
        missing += gone;
        differ += !gone;
    }
    if (!rc && step != SQLITE_DONE)
        rc = fb_errf(err, sizeof err, FB_EIO, "%s: %s", dbpath, sqlite3_errmsg(d.db));
    sqlite3_finalize(st);
    if (d.db)
        store_db_close(&d);
    if (rc) {
        fprintf(stderr, "fedbft inspect: %s\n", err);
        return 1;
    }
    printf("node %u: checked %llu keys (%llu lines of %s): %llu missing, %llu differ\n", cfg->id,
           (unsigned long long)keys, (unsigned long long)lines, file, (unsigned long long)missing,
           (unsigned long long)differ);
    return missing || differ ? 1 : 0;
}

int cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", required_argument, NULL, 'k'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL, *pairs = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:k:", opts, NULL)) != -1) {
        if (ch == 'c')
            path = optarg;
        else if (ch == 'k')
            pairs = optarg;
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
    return pairs ? check_pairs(&cfg, pairs) : 0;
}
