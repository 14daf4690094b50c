/* test_config.c - cluster.json and node.json: defaults, write/load round
 * trips, path resolution, cross-checks, and every rejection (each must return
 * the right code and name the offending field). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "fb_error.h"
#include "keys.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256]; /* scratch directory for the whole group */

static void path_in(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", g_dir, name);
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static void write_json(const char *path, json_t *root)
{
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER), 0);
}

/* A deterministic distinct key per index. */
static void test_pk(unsigned i, uint8_t pk[FB_PK_LEN])
{
    uint8_t seed[FB_SEED_LEN];
    memset(seed, (int)(i + 1), sizeof seed);
    fb_identity id;
    assert_int_equal(fb_key_from_seed(seed, &id), 0);
    memcpy(pk, id.pk, FB_PK_LEN);
    fb_key_wipe(&id);
}

static json_t *pk_string(unsigned i)
{
    uint8_t pk[FB_PK_LEN];
    char hex[FB_PK_HEX_LEN + 1];
    test_pk(i, pk);
    fb_pubkey_format(pk, hex);
    return json_string(hex);
}

/* A valid cluster.json: 4 replicas on 127.0.0.1, 2 clients. */
static json_t *base_cluster(void)
{
    json_t *reps = json_array(), *cls = json_array();
    for (unsigned i = 0; i < 4; i++)
        json_array_append_new(reps, json_pack("{s:i, s:s, s:i, s:i, s:o}", "id", (int)i, "host",
                                              "127.0.0.1", "port", 7000 + (int)i, "client_port",
                                              7100 + (int)i, "public_key", pk_string(i)));
    for (unsigned j = 0; j < 2; j++)
        json_array_append_new(cls, json_pack("{s:i, s:s, s:o}", "id", 1000 + (int)j, "name",
                                             j ? "bob" : "alice", "public_key", pk_string(10 + j)));
    json_t *root = json_pack("{s:o, s:o}", "replicas", reps, "clients", cls);
    assert_non_null(root);
    return root;
}

static json_t *base_node(void)
{
    json_t *root = json_pack("{s:i, s:s, s:s, s:s}", "id", 1, "cluster", "../cluster.json", "key",
                             "node.key", "data_dir", "data");
    assert_non_null(root);
    return root;
}

static json_t *replica(json_t *root, size_t i)
{
    return json_array_get(json_object_get(root, "replicas"), i);
}

static json_t *client(json_t *root, size_t i)
{
    return json_array_get(json_object_get(root, "clients"), i);
}

/* ------------------------------------------------------------ defaults, round trips */

static void test_defaults(void **state)
{
    (void)state;
    cfg_node n;
    memset(&n, 0xab, sizeof n);
    cfg_node_defaults(&n);
    assert_int_equal(n.id, 0);
    assert_string_equal(n.cluster_path, "");
    assert_string_equal(n.listen, "");
    assert_int_equal(n.batch_max_requests, 64);
    assert_int_equal(n.batch_max_bytes, 262144);
    assert_int_equal(n.batch_max_delay_ms, 2);
    assert_int_equal(n.checkpoint_interval, 16);
    assert_int_equal(n.log_window, 64);
    assert_int_equal(n.request_timeout_ms, 2000);
    assert_int_equal(n.view_change_timeout_ms, 2000);
    assert_int_equal(n.worker_threads, 0);
    assert_int_equal(n.durability, CFG_DURABILITY_FSYNC);
    assert_int_equal(n.max_frame, 4194304);
    assert_int_equal(n.send_queue_bytes, 16777216);
    assert_string_equal(n.log_level, "info");
    assert_false(n.fault_injection);
    assert_int_equal(n.http_port, 0);
    assert_int_equal(n.verify, CFG_VERIFY_BATCH);
    assert_true(n.sig_cache);
    assert_true(n.digest_cache);
}

static void make_cluster(cfg_cluster *c, uint32_t n, uint32_t m)
{
    memset(c, 0, sizeof *c);
    c->n = n;
    c->f = (n - 1) / 3;
    c->replicas = calloc(n, sizeof *c->replicas);
    c->clients = calloc(m, sizeof *c->clients);
    c->nclients = m;
    assert_non_null(c->replicas);
    assert_non_null(c->clients);
    for (uint32_t i = 0; i < n; i++) {
        c->replicas[i].id = i;
        snprintf(c->replicas[i].host, sizeof c->replicas[i].host, "127.0.0.%u", 1 + i % 2);
        c->replicas[i].port = (uint16_t)(9000 + i);
        c->replicas[i].client_port = (uint16_t)(9100 + i);
        test_pk(i, c->replicas[i].pk);
    }
    for (uint32_t j = 0; j < m; j++) {
        c->clients[j].id = 4000000000u + j;
        snprintf(c->clients[j].name, sizeof c->clients[j].name, "client%u", j);
        test_pk(100 + j, c->clients[j].pk);
    }
}

static void test_cluster_roundtrip(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "rt-cluster.json");
    cfg_cluster c, back;
    make_cluster(&c, 7, 3);
    assert_int_equal(cfg_cluster_write(path, &c, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    int rc = cfg_cluster_load(path, &back, err, sizeof err);
    if (rc)
        fail_msg("load: %s", err);
    assert_int_equal(back.n, 7);
    assert_int_equal(back.f, 2);
    assert_int_equal(back.nclients, 3);
    for (uint32_t i = 0; i < 7; i++) {
        assert_int_equal(back.replicas[i].id, i);
        assert_string_equal(back.replicas[i].host, c.replicas[i].host);
        assert_int_equal(back.replicas[i].port, c.replicas[i].port);
        assert_int_equal(back.replicas[i].client_port, c.replicas[i].client_port);
        assert_memory_equal(back.replicas[i].pk, c.replicas[i].pk, FB_PK_LEN);
    }
    for (uint32_t j = 0; j < 3; j++) {
        assert_int_equal(back.clients[j].id, c.clients[j].id);
        assert_string_equal(back.clients[j].name, c.clients[j].name);
        assert_memory_equal(back.clients[j].pk, c.clients[j].pk, FB_PK_LEN);
    }
    const cfg_client *cl = cfg_find_client(&back, 4000000001u);
    assert_non_null(cl);
    assert_string_equal(cl->name, "client1");
    assert_null(cfg_find_client(&back, 12345));
    cfg_cluster_free(&back);
    assert_null(back.replicas);
    assert_int_equal(back.n, 0);
    cfg_cluster_free(&back); /* idempotent */
    cfg_cluster_free(&c);
    unlink(path);
}

static void test_cluster_replicas_placed_by_id(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "order-cluster.json");
    json_t *root = base_cluster();
    /* list the replicas in reverse order: the result is still indexed by id */
    json_t *reps = json_object_get(root, "replicas");
    json_t *rev = json_array();
    for (size_t i = 4; i-- > 0;)
        json_array_append(rev, json_array_get(reps, i));
    json_object_set_new(root, "replicas", rev);
    json_object_del(root, "clients"); /* optional */
    write_json(path, root);
    json_decref(root);
    cfg_cluster c;
    assert_int_equal(cfg_cluster_load(path, &c, err, sizeof err), 0);
    assert_int_equal(c.nclients, 0);
    assert_null(cfg_find_client(&c, 1000));
    for (uint32_t i = 0; i < 4; i++) {
        uint8_t pk[FB_PK_LEN];
        test_pk(i, pk);
        assert_int_equal(c.replicas[i].id, i);
        assert_int_equal(c.replicas[i].port, 7000 + i);
        assert_memory_equal(c.replicas[i].pk, pk, FB_PK_LEN);
    }
    cfg_cluster_free(&c);
    unlink(path);
}

static void test_cluster_same_port_other_host_ok(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "hosts-cluster.json");
    json_t *root = base_cluster();
    for (size_t i = 0; i < 4; i++) {
        char host[32];
        snprintf(host, sizeof host, "10.0.0.%zu", i + 1);
        json_object_set_new(replica(root, i), "host", json_string(host));
        json_object_set_new(replica(root, i), "port", json_integer(7000));
        json_object_set_new(replica(root, i), "client_port", json_integer(7100));
    }
    write_json(path, root);
    json_decref(root);
    cfg_cluster c;
    int rc = cfg_cluster_load(path, &c, err, sizeof err);
    if (rc)
        fail_msg("load: %s", err);
    assert_int_equal(c.n, 4);
    assert_int_equal(c.f, 1);
    cfg_cluster_free(&c);
    unlink(path);
}

static void test_node_roundtrip(void **state)
{
    (void)state;
    char sub[300], path[400], err[512] = "";
    path_in(sub, sizeof sub, "rtnode");
    mkdir(sub, 0755);
    snprintf(path, sizeof path, "%s/node.json", sub);
    cfg_node n, back;
    cfg_node_defaults(&n);
    n.id = 3;
    snprintf(n.cluster_path, sizeof n.cluster_path, "../cluster.json");
    snprintf(n.key_path, sizeof n.key_path, "node.key");
    snprintf(n.data_dir, sizeof n.data_dir, "/var/lib/fedbft");
    snprintf(n.listen, sizeof n.listen, "0.0.0.0");
    n.batch_max_requests = 128;
    n.batch_max_bytes = 1 << 20;
    n.batch_max_delay_ms = 5;
    n.checkpoint_interval = 32;
    n.log_window = 256;
    n.request_timeout_ms = 3000;
    n.view_change_timeout_ms = 4000;
    n.worker_threads = 6;
    n.durability = CFG_DURABILITY_OS;
    n.max_frame = 8 << 20;
    n.send_queue_bytes = 1ull << 33;
    snprintf(n.log_level, sizeof n.log_level, "debug");
    n.fault_injection = true;
    n.http_port = 7203;
    n.verify = CFG_VERIFY_INLINE;
    n.sig_cache = false;
    n.digest_cache = false;
    assert_int_equal(cfg_node_write(path, &n, err, sizeof err), 0);
    int rc = cfg_node_load(path, &back, err, sizeof err);
    if (rc)
        fail_msg("load: %s", err);
    char real[PATH_MAX], want[PATH_MAX + 32];
    assert_non_null(realpath(g_dir, real));
    snprintf(want, sizeof want, "%s/cluster.json", real);
    assert_string_equal(back.cluster_path, want);
    snprintf(want, sizeof want, "%s/rtnode/node.key", real);
    assert_string_equal(back.key_path, want);
    assert_string_equal(back.data_dir, "/var/lib/fedbft"); /* absolute stays as is */
    assert_string_equal(back.path, path);
    assert_int_equal(back.id, 3);
    assert_string_equal(back.listen, "0.0.0.0");
    assert_int_equal(back.batch_max_requests, 128);
    assert_int_equal(back.batch_max_bytes, 1 << 20);
    assert_int_equal(back.batch_max_delay_ms, 5);
    assert_int_equal(back.checkpoint_interval, 32);
    assert_int_equal(back.log_window, 256);
    assert_int_equal(back.request_timeout_ms, 3000);
    assert_int_equal(back.view_change_timeout_ms, 4000);
    assert_int_equal(back.worker_threads, 6);
    assert_int_equal(back.durability, CFG_DURABILITY_OS);
    assert_int_equal(back.max_frame, 8 << 20);
    assert_int_equal(back.send_queue_bytes, 1ull << 33);
    assert_string_equal(back.log_level, "debug");
    assert_true(back.fault_injection);
    assert_int_equal(back.http_port, 7203);
    assert_int_equal(back.verify, CFG_VERIFY_INLINE);
    assert_false(back.sig_cache);
    assert_false(back.digest_cache);

    /* And the defaults round-trip too (false / 0 are written, not omitted). */
    back.fault_injection = false;
    back.http_port = 0;
    back.verify = CFG_VERIFY_BATCH;
    back.sig_cache = true;
    back.digest_cache = true;
    assert_int_equal(cfg_node_write(path, &back, err, sizeof err), 0);
    cfg_node again;
    rc = cfg_node_load(path, &again, err, sizeof err);
    if (rc)
        fail_msg("load: %s", err);
    assert_false(again.fault_injection);
    assert_int_equal(again.http_port, 0);
    assert_int_equal(again.verify, CFG_VERIFY_BATCH);
    assert_true(again.sig_cache);
    assert_true(again.digest_cache);
    unlink(path);
    rmdir(sub);
}

/* Only the four required fields: every knob takes its default, and relative
 * paths are resolved against node.json's directory, not the working one. */
static void test_node_minimal_defaults_and_paths(void **state)
{
    (void)state;
    char sub[300], path[400], err[512] = "";
    path_in(sub, sizeof sub, "minnode");
    mkdir(sub, 0755);
    snprintf(path, sizeof path, "%s/node.json", sub);
    json_t *root = base_node();
    json_object_set_new(root, "data_dir", json_string("./a/../data/"));
    write_json(path, root);
    json_decref(root);
    cfg_node n, def;
    assert_int_equal(cfg_node_load(path, &n, err, sizeof err), 0);
    cfg_node_defaults(&def);
    assert_int_equal(n.id, 1);
    assert_int_equal(n.batch_max_requests, def.batch_max_requests);
    assert_int_equal(n.log_window, def.log_window);
    assert_int_equal(n.durability, CFG_DURABILITY_FSYNC);
    assert_string_equal(n.log_level, "info");
    assert_string_equal(n.listen, "");
    assert_false(n.fault_injection);
    assert_int_equal(n.http_port, 0);
    assert_int_equal(n.verify, CFG_VERIFY_BATCH); /* the benchmark switches: all on */
    assert_true(n.sig_cache);
    assert_true(n.digest_cache);
    char real[PATH_MAX], want[PATH_MAX + 32];
    assert_non_null(realpath(sub, real));
    snprintf(want, sizeof want, "%s/a/../data/", real); /* only leading ./ ../ are folded */
    assert_string_equal(n.data_dir, want);
    assert_true(n.key_path[0] == '/');
    unlink(path);
    rmdir(sub);
}

/* The benchmark switches, each value written by hand (not by the writer),
 * one at a time so that each is seen to set only its own field. */
typedef struct switch_case {
    const char *key;
    json_t *(*value)(void);
    cfg_verify verify;
    bool sig_cache, digest_cache;
} switch_case;

static json_t *v_batch(void)
{
    return json_string("batch");
}
static json_t *v_inline(void)
{
    return json_string("inline");
}

static void test_node_benchmark_switches(void **state)
{
    (void)state;
    static const switch_case cases[] = {
        {"verify", v_batch, CFG_VERIFY_BATCH, true, true},
        {"verify", v_inline, CFG_VERIFY_INLINE, true, true},
        {"sig_cache", json_true, CFG_VERIFY_BATCH, true, true},
        {"sig_cache", json_false, CFG_VERIFY_BATCH, false, true},
        {"digest_cache", json_true, CFG_VERIFY_BATCH, true, true},
        {"digest_cache", json_false, CFG_VERIFY_BATCH, true, false},
    };
    char path[300], err[512] = "";
    path_in(path, sizeof path, "switches.json");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const switch_case *c = &cases[i];
        json_t *root = base_node();
        json_object_set_new(root, c->key, c->value());
        write_json(path, root);
        json_decref(root);
        cfg_node n;
        memset(&n, 0x5a, sizeof n);
        if (cfg_node_load(path, &n, err, sizeof err) != 0)
            fail_msg("case %zu (%s): %s", i, c->key, err);
        assert_int_equal(n.verify, c->verify);
        assert_int_equal(n.sig_cache, c->sig_cache);
        assert_int_equal(n.digest_cache, c->digest_cache);
    }
    /* All three off together. */
    json_t *root = base_node();
    json_object_set_new(root, "verify", v_inline());
    json_object_set_new(root, "sig_cache", json_false());
    json_object_set_new(root, "digest_cache", json_false());
    write_json(path, root);
    json_decref(root);
    cfg_node n;
    assert_int_equal(cfg_node_load(path, &n, err, sizeof err), 0);
    assert_int_equal(n.verify, CFG_VERIFY_INLINE);
    assert_false(n.sig_cache);
    assert_false(n.digest_cache);
    unlink(path);
}

/* batch_max_requests 1 (no batching) is accepted: the benchmark's baseline. */
static void test_node_batch_of_one(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "batch1.json");
    json_t *root = base_node();
    json_object_set_new(root, "batch_max_requests", json_integer(1));
    write_json(path, root);
    json_decref(root);
    cfg_node n;
    if (cfg_node_load(path, &n, err, sizeof err) != 0)
        fail_msg("load: %s", err);
    assert_int_equal(n.batch_max_requests, 1);
    unlink(path);
}

static void test_node_relative_config_path(void **state)
{
    (void)state;
    char sub[300], path[400], err[512] = "", cwd[PATH_MAX];
    path_in(sub, sizeof sub, "relnode");
    mkdir(sub, 0755);
    snprintf(path, sizeof path, "%s/node.json", sub);
    json_t *root = base_node();
    write_json(path, root);
    json_decref(root);
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(g_dir), 0);
    cfg_node n;
    int rc = cfg_node_load("relnode/node.json", &n, err, sizeof err);
    assert_int_equal(chdir(cwd), 0);
    if (rc)
        fail_msg("load: %s", err);
    char real[PATH_MAX], want[PATH_MAX + 32];
    assert_non_null(realpath(g_dir, real));
    snprintf(want, sizeof want, "%s/cluster.json", real);
    assert_string_equal(n.cluster_path, want); /* absolute: safe after a chdir */
    assert_string_equal(n.path, "relnode/node.json");
    unlink(path);
    rmdir(sub);
}

/* ------------------------------------------------------------ cross-checks */

static void test_node_in_cluster(void **state)
{
    (void)state;
    cfg_cluster c;
    make_cluster(&c, 4, 0);
    cfg_node n;
    cfg_node_defaults(&n);
    snprintf(n.path, sizeof n.path, "/x/node2/node.json");
    snprintf(n.key_path, sizeof n.key_path, "/x/node2/node.key");
    snprintf(n.cluster_path, sizeof n.cluster_path, "/x/cluster.json");
    n.id = 2;
    char err[512] = "";
    assert_int_equal(cfg_check_node_in_cluster(&n, &c, c.replicas[2].pk, err, sizeof err), 0);

    assert_int_equal(cfg_check_node_in_cluster(&n, &c, c.replicas[1].pk, err, sizeof err),
                     FB_EINVAL);
    assert_non_null(strstr(err, "/x/node2/node.json: key:"));
    assert_non_null(strstr(err, "fedbft keyinfo"));

    n.id = 4;
    assert_int_equal(cfg_check_node_in_cluster(&n, &c, c.replicas[2].pk, err, sizeof err),
                     FB_EINVAL);
    assert_non_null(strstr(err, "/x/node2/node.json: id:"));
    assert_non_null(strstr(err, "0..3"));

    /* http_port must not be one of the node's own replica or client ports. */
    n.id = 2;
    n.http_port = c.replicas[2].client_port;
    assert_int_equal(cfg_check_node_in_cluster(&n, &c, c.replicas[2].pk, err, sizeof err),
                     FB_EINVAL);
    assert_non_null(strstr(err, "/x/node2/node.json: http_port:"));
    assert_non_null(strstr(err, "client_port"));
    n.http_port = c.replicas[2].port;
    assert_int_equal(cfg_check_node_in_cluster(&n, &c, c.replicas[2].pk, err, sizeof err),
                     FB_EINVAL);
    assert_non_null(strstr(err, "http_port:"));
    n.http_port = (uint16_t)(c.replicas[2].port + 200);
    assert_int_equal(cfg_check_node_in_cluster(&n, &c, c.replicas[2].pk, err, sizeof err), 0);
    cfg_cluster_free(&c);
}

/* ------------------------------------------------------------ file-level errors */

static void test_missing_file(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "no-such.json");
    cfg_cluster c;
    cfg_node n;
    memset(&c, 0x5a, sizeof c);
    assert_int_equal(cfg_cluster_load(path, &c, err, sizeof err), FB_ENOENT);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "no such file"));
    assert_int_equal(c.n, 0x5a5a5a5a); /* untouched on error */
    assert_int_equal(cfg_node_load(path, &n, err, sizeof err), FB_ENOENT);
    assert_non_null(strstr(err, path));
}

static void test_directory_not_file(void **state)
{
    (void)state;
    char err[512] = "";
    cfg_cluster c;
    assert_int_equal(cfg_cluster_load(g_dir, &c, err, sizeof err), FB_EIO);
    assert_non_null(strstr(err, "not a regular file"));
}

static void test_bad_json_reports_position(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "bad.json");
    write_text(path, "{\n  \"replicas\": [\n    {\"id\": 0,,}\n");
    cfg_cluster c;
    assert_int_equal(cfg_cluster_load(path, &c, err, sizeof err), FB_EINVAL);
    char want[350];
    snprintf(want, sizeof want, "%s:3:", path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "invalid JSON"));
    unlink(path);
}

static void test_top_level_not_object(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "array.json");
    write_text(path, "[1, 2, 3]\n");
    cfg_node n;
    assert_int_equal(cfg_node_load(path, &n, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "top level must be a JSON object"));
    unlink(path);
}

static void test_tiny_error_buffer(void **state)
{
    (void)state;
    char path[300], err[8];
    path_in(path, sizeof path, "no-such.json");
    cfg_cluster c;
    assert_int_equal(cfg_cluster_load(path, &c, err, sizeof err), FB_ENOENT);
    assert_int_equal(strlen(err), sizeof err - 1);
    assert_int_equal(cfg_cluster_load(path, &c, NULL, 0), FB_ENOENT);
}

static void test_write_refuses_invalid(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "invalid-write.json");
    cfg_cluster c;
    make_cluster(&c, 3, 0);
    assert_int_equal(cfg_cluster_write(path, &c, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "replicas"));
    assert_non_null(strstr(err, "at least 4"));
    assert_int_equal(access(path, F_OK), -1); /* nothing written */
    cfg_cluster_free(&c);

    cfg_node n;
    cfg_node_defaults(&n);
    snprintf(n.cluster_path, sizeof n.cluster_path, "c.json");
    snprintf(n.key_path, sizeof n.key_path, "k");
    snprintf(n.data_dir, sizeof n.data_dir, "d");
    n.log_window = 40;
    assert_int_equal(cfg_node_write(path, &n, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "log_window"));
    assert_int_equal(access(path, F_OK), -1);
}

/* ------------------------------------------------------------ rejections */

typedef struct reject_case {
    const char *name;
    void (*mutate)(json_t *root);
    const char *field;  /* must appear in the message, as "FIELD:" */
    const char *detail; /* and this too (NULL: no check) */
} reject_case;

/* cluster.json mutations */
static void c_no_replicas(json_t *r)
{
    json_object_del(r, "replicas");
}
static void c_replicas_object(json_t *r)
{
    json_object_set_new(r, "replicas", json_object());
}
static void c_three_replicas(json_t *r)
{
    json_array_remove(json_object_get(r, "replicas"), 3);
}
static void c_unknown_top(json_t *r)
{
    json_object_set_new(r, "replica", json_array());
}
static void c_replica_not_object(json_t *r)
{
    json_array_set_new(json_object_get(r, "replicas"), 2, json_integer(2));
}
static void c_unknown_replica_field(json_t *r)
{
    json_object_set_new(replica(r, 0), "prot", json_integer(1));
}
static void c_id_string(json_t *r)
{
    json_object_set_new(replica(r, 1), "id", json_string("1"));
}
static void c_id_missing(json_t *r)
{
    json_object_del(replica(r, 1), "id");
}
static void c_id_negative(json_t *r)
{
    json_object_set_new(replica(r, 1), "id", json_integer(-1));
}
static void c_id_duplicate(json_t *r)
{
    json_object_set_new(replica(r, 2), "id", json_integer(1));
}
static void c_id_out_of_range(json_t *r)
{
    json_object_set_new(replica(r, 3), "id", json_integer(4));
}
static void c_host_missing(json_t *r)
{
    json_object_del(replica(r, 2), "host");
}
static void c_host_number(json_t *r)
{
    json_object_set_new(replica(r, 2), "host", json_integer(127));
}
static void c_host_empty(json_t *r)
{
    json_object_set_new(replica(r, 2), "host", json_string(""));
}
static void c_host_space(json_t *r)
{
    json_object_set_new(replica(r, 2), "host", json_string("127.0.0.1 "));
}
static void c_port_zero(json_t *r)
{
    json_object_set_new(replica(r, 1), "port", json_integer(0));
}
static void c_port_big(json_t *r)
{
    json_object_set_new(replica(r, 1), "port", json_integer(65536));
}
static void c_port_real(json_t *r)
{
    json_object_set_new(replica(r, 1), "port", json_real(7001.5));
}
static void c_client_port_missing(json_t *r)
{
    json_object_del(replica(r, 1), "client_port");
}
static void c_port_equals_client_port(json_t *r)
{
    json_object_set_new(replica(r, 1), "client_port", json_integer(7001));
}
static void c_port_clash(json_t *r)
{
    json_object_set_new(replica(r, 3), "port", json_integer(7001));
}
static void c_port_clash_cross(json_t *r)
{
    json_object_set_new(replica(r, 2), "client_port", json_integer(7000));
}
static void c_key_missing(json_t *r)
{
    json_object_del(replica(r, 0), "public_key");
}
static void c_key_short(json_t *r)
{
    json_object_set_new(replica(r, 0), "public_key", json_string("abcd"));
}
static void c_key_not_hex(json_t *r)
{
    char bad[FB_PK_HEX_LEN + 1];
    memset(bad, 'g', FB_PK_HEX_LEN);
    bad[FB_PK_HEX_LEN] = '\0';
    json_object_set_new(replica(r, 0), "public_key", json_string(bad));
}
static void c_key_array(json_t *r)
{
    json_object_set_new(replica(r, 0), "public_key", json_array());
}
static void c_key_duplicate_replicas(json_t *r)
{
    json_object_set(replica(r, 3), "public_key", json_object_get(replica(r, 1), "public_key"));
}
static void c_key_duplicate_client(json_t *r)
{
    json_object_set(client(r, 1), "public_key", json_object_get(replica(r, 2), "public_key"));
}
static void c_clients_object(json_t *r)
{
    json_object_set_new(r, "clients", json_object());
}
static void c_client_not_object(json_t *r)
{
    json_array_set_new(json_object_get(r, "clients"), 0, json_string("alice"));
}
static void c_client_id_duplicate(json_t *r)
{
    json_object_set_new(client(r, 1), "id", json_integer(1000));
}
static void c_client_id_too_big(json_t *r)
{
    json_object_set_new(client(r, 0), "id", json_integer(4294967296LL));
}
static void c_client_id_missing(json_t *r)
{
    json_object_del(client(r, 0), "id");
}
static void c_client_key_missing(json_t *r)
{
    json_object_del(client(r, 1), "public_key");
}
static void c_client_name_long(json_t *r)
{
    char name[100];
    memset(name, 'x', 99);
    name[99] = '\0';
    json_object_set_new(client(r, 0), "name", json_string(name));
}
static void c_client_unknown_field(json_t *r)
{
    json_object_set_new(client(r, 0), "role", json_string("admin"));
}

static const reject_case cluster_cases[] = {
    {"cluster: replicas missing", c_no_replicas, "replicas", "missing"},
    {"cluster: replicas not an array", c_replicas_object, "replicas", "must be an array"},
    {"cluster: n < 4", c_three_replicas, "replicas", "at least 4"},
    {"cluster: unknown top-level field", c_unknown_top, "replica", "unknown field"},
    {"cluster: replica not an object", c_replica_not_object, "replicas[2]", "must be an object"},
    {"cluster: unknown replica field", c_unknown_replica_field, "replicas[0].prot",
     "unknown field"},
    {"cluster: id a string", c_id_string, "replicas[1].id", "whole number"},
    {"cluster: id missing", c_id_missing, "replicas[1].id", "missing"},
    {"cluster: id negative", c_id_negative, "replicas[1].id", "out of range"},
    {"cluster: id duplicate", c_id_duplicate, "replicas[2].id", "listed twice"},
    {"cluster: id out of range", c_id_out_of_range, "replicas[3].id", "0..3"},
    {"cluster: host missing", c_host_missing, "replicas[2].host", "missing"},
    {"cluster: host a number", c_host_number, "replicas[2].host", "must be a string"},
    {"cluster: host empty", c_host_empty, "replicas[2].host", "must not be empty"},
    {"cluster: host with a space", c_host_space, "replicas[2].host", "not a host name"},
    {"cluster: port 0", c_port_zero, "replicas[1].port", "1..65535"},
    {"cluster: port 65536", c_port_big, "replicas[1].port", "1..65535"},
    {"cluster: port fractional", c_port_real, "replicas[1].port", "whole number"},
    {"cluster: client_port missing", c_client_port_missing, "replicas[1].client_port", "missing"},
    {"cluster: port == client_port", c_port_equals_client_port, "replicas[1].client_port",
     "different port"},
    {"cluster: port clash on one host", c_port_clash, "replicas[3].port", "replicas[1].port"},
    {"cluster: client_port clashes with port", c_port_clash_cross, "replicas[2].client_port",
     "replicas[0].port"},
    {"cluster: public_key missing", c_key_missing, "replicas[0].public_key", "fedbft keygen"},
    {"cluster: public_key short", c_key_short, "replicas[0].public_key", "64 hex"},
    {"cluster: public_key not hex", c_key_not_hex, "replicas[0].public_key", "64 hex"},
    {"cluster: public_key an array", c_key_array, "replicas[0].public_key", "must be a string"},
    {"cluster: public key shared by replicas", c_key_duplicate_replicas, "replicas[3].public_key",
     "replicas[1]"},
    {"cluster: public key shared by client and replica", c_key_duplicate_client,
     "clients[1].public_key", "replicas[2]"},
    {"cluster: clients not an array", c_clients_object, "clients", "must be an array"},
    {"cluster: client not an object", c_client_not_object, "clients[0]", "must be an object"},
    {"cluster: client id duplicate", c_client_id_duplicate, "clients[1].id", "listed twice"},
    {"cluster: client id over 32 bits", c_client_id_too_big, "clients[0].id", "out of range"},
    {"cluster: client id missing", c_client_id_missing, "clients[0].id", "missing"},
    {"cluster: client public_key missing", c_client_key_missing, "clients[1].public_key",
     "missing"},
    {"cluster: client name too long", c_client_name_long, "clients[0].name", "too long"},
    {"cluster: unknown client field", c_client_unknown_field, "clients[0].role", "unknown field"},
};

/* node.json mutations */
static void n_id_missing(json_t *r)
{
    json_object_del(r, "id");
}
static void n_id_bool(json_t *r)
{
    json_object_set_new(r, "id", json_true());
}
static void n_cluster_missing(json_t *r)
{
    json_object_del(r, "cluster");
}
static void n_key_missing(json_t *r)
{
    json_object_del(r, "key");
}
static void n_data_dir_missing(json_t *r)
{
    json_object_del(r, "data_dir");
}
static void n_data_dir_empty(json_t *r)
{
    json_object_set_new(r, "data_dir", json_string(""));
}
static void n_cluster_number(json_t *r)
{
    json_object_set_new(r, "cluster", json_integer(1));
}
static void n_unknown(json_t *r)
{
    json_object_set_new(r, "chekpoint_interval", json_integer(16));
}
static void n_durability_bad(json_t *r)
{
    json_object_set_new(r, "durability", json_string("sometimes"));
}
static void n_durability_number(json_t *r)
{
    json_object_set_new(r, "durability", json_integer(1));
}
static void n_log_level_bad(json_t *r)
{
    json_object_set_new(r, "log_level", json_string("verbose"));
}
static void n_log_window_not_multiple(json_t *r)
{
    json_object_set_new(r, "log_window", json_integer(40));
}
static void n_log_window_too_small(json_t *r)
{
    json_object_set_new(r, "checkpoint_interval", json_integer(64));
}
static void n_log_window_huge(json_t *r)
{
    json_object_set_new(r, "log_window", json_integer(1 << 17));
}
static void n_batch_zero(json_t *r)
{
    json_object_set_new(r, "batch_max_requests", json_integer(0));
}
static void n_timeout_negative(json_t *r)
{
    json_object_set_new(r, "request_timeout_ms", json_integer(-5));
}
static void n_timeout_string(json_t *r)
{
    json_object_set_new(r, "view_change_timeout_ms", json_string("2s"));
}
static void n_batch_bytes_over_frame(json_t *r)
{
    json_object_set_new(r, "batch_max_bytes", json_integer(4194304));
}
static void n_queue_under_frame(json_t *r)
{
    json_object_set_new(r, "send_queue_bytes", json_integer(65536));
}
static void n_max_frame_tiny(json_t *r)
{
    json_object_set_new(r, "max_frame", json_integer(100));
}
static void n_workers_huge(json_t *r)
{
    json_object_set_new(r, "worker_threads", json_integer(100000));
}
static void n_listen_space(json_t *r)
{
    json_object_set_new(r, "listen", json_string("0.0.0.0 7000"));
}
static void n_path_too_long(json_t *r)
{
    char p[CFG_PATH_MAX + 10];
    memset(p, 'a', sizeof p - 1);
    p[sizeof p - 1] = '\0';
    json_object_set_new(r, "key", json_string(p));
}

static void n_fault_string(json_t *r)
{
    json_object_set_new(r, "fault_injection", json_string("true"));
}
static void n_fault_number(json_t *r)
{
    json_object_set_new(r, "fault_injection", json_integer(1));
}
static void n_http_port_string(json_t *r)
{
    json_object_set_new(r, "http_port", json_string("8080"));
}
static void n_http_port_huge(json_t *r)
{
    json_object_set_new(r, "http_port", json_integer(65536));
}
static void n_http_port_negative(json_t *r)
{
    json_object_set_new(r, "http_port", json_integer(-1));
}
static void n_http_port_bool(json_t *r)
{
    json_object_set_new(r, "http_port", json_true());
}

static void n_verify_bad(json_t *r)
{
    json_object_set_new(r, "verify", json_string("parallel"));
}
static void n_verify_case(json_t *r)
{
    json_object_set_new(r, "verify", json_string("Inline"));
}
static void n_verify_empty(json_t *r)
{
    json_object_set_new(r, "verify", json_string(""));
}
static void n_verify_bool(json_t *r)
{
    json_object_set_new(r, "verify", json_true());
}
static void n_verify_number(json_t *r)
{
    json_object_set_new(r, "verify", json_integer(1));
}
static void n_sig_cache_string(json_t *r)
{
    json_object_set_new(r, "sig_cache", json_string("false"));
}
static void n_sig_cache_number(json_t *r)
{
    json_object_set_new(r, "sig_cache", json_integer(0));
}
static void n_digest_cache_string(json_t *r)
{
    json_object_set_new(r, "digest_cache", json_string("off"));
}
static void n_digest_cache_null(json_t *r)
{
    json_object_set_new(r, "digest_cache", json_null());
}
static void n_switch_typo(json_t *r)
{
    json_object_set_new(r, "sigcache", json_false());
}

static const reject_case node_cases[] = {
    {"node: id missing", n_id_missing, "id", "missing"},
    {"node: id a boolean", n_id_bool, "id", "whole number"},
    {"node: cluster missing", n_cluster_missing, "cluster", "missing"},
    {"node: key missing", n_key_missing, "key", "fedbft keygen"},
    {"node: data_dir missing", n_data_dir_missing, "data_dir", "missing"},
    {"node: data_dir empty", n_data_dir_empty, "data_dir", "must not be empty"},
    {"node: cluster a number", n_cluster_number, "cluster", "must be a string"},
    {"node: unknown field", n_unknown, "chekpoint_interval", "unknown field"},
    {"node: bad durability", n_durability_bad, "durability", "\"fsync\""},
    {"node: durability a number", n_durability_number, "durability", "must be a string"},
    {"node: bad log_level", n_log_level_bad, "log_level", "\"debug\""},
    {"node: log_window not a multiple", n_log_window_not_multiple, "log_window", "multiple"},
    {"node: log_window < 2x checkpoint_interval", n_log_window_too_small, "log_window",
     "at least twice"},
    {"node: log_window too large", n_log_window_huge, "log_window", "out of range"},
    {"node: batch_max_requests 0", n_batch_zero, "batch_max_requests", "out of range"},
    {"node: negative timeout", n_timeout_negative, "request_timeout_ms", "out of range"},
    {"node: timeout a string", n_timeout_string, "view_change_timeout_ms", "whole number"},
    {"node: batch_max_bytes >= max_frame", n_batch_bytes_over_frame, "batch_max_bytes",
     "max_frame"},
    {"node: send_queue_bytes < max_frame", n_queue_under_frame, "send_queue_bytes", "max_frame"},
    {"node: max_frame tiny", n_max_frame_tiny, "max_frame", "out of range"},
    {"node: worker_threads huge", n_workers_huge, "worker_threads", "out of range"},
    {"node: listen with a space", n_listen_space, "listen", "not a host name"},
    {"node: path too long", n_path_too_long, "key", "too long"},
    {"node: fault_injection a string", n_fault_string, "fault_injection", "true or false"},
    {"node: fault_injection a number", n_fault_number, "fault_injection", "true or false"},
    {"node: http_port a string", n_http_port_string, "http_port", "whole number"},
    {"node: http_port too large", n_http_port_huge, "http_port", "out of range"},
    {"node: http_port negative", n_http_port_negative, "http_port", "out of range"},
    {"node: http_port a boolean", n_http_port_bool, "http_port", "whole number"},
    {"node: verify unknown", n_verify_bad, "verify", "\"inline\""},
    {"node: verify wrong case", n_verify_case, "verify", "\"batch\""},
    {"node: verify empty", n_verify_empty, "verify", "must not be empty"},
    {"node: verify a boolean", n_verify_bool, "verify", "must be a string"},
    {"node: verify a number", n_verify_number, "verify", "must be a string"},
    {"node: sig_cache a string", n_sig_cache_string, "sig_cache", "true or false"},
    {"node: sig_cache a number", n_sig_cache_number, "sig_cache", "true or false"},
    {"node: digest_cache a string", n_digest_cache_string, "digest_cache", "true or false"},
    {"node: digest_cache null", n_digest_cache_null, "digest_cache", "true or false"},
    {"node: misspelt switch", n_switch_typo, "sigcache", "sig_cache"},
};

static void expect_field(const char *err, const char *path, const char *field, const char *detail)
{
    char want[512];
    snprintf(want, sizeof want, "%s: %s:", path, field);
    if (!strstr(err, want))
        fail_msg("message does not name '%s': %s", want, err);
    if (detail && !strstr(err, detail))
        fail_msg("message lacks '%s': %s", detail, err);
}

static void run_cluster_case(void **state)
{
    const reject_case *rc_ = *state;
    char path[300], err[1024] = "";
    path_in(path, sizeof path, "reject-cluster.json");
    json_t *root = base_cluster();
    rc_->mutate(root);
    write_json(path, root);
    json_decref(root);
    cfg_cluster c;
    memset(&c, 0x5a, sizeof c);
    assert_int_equal(cfg_cluster_load(path, &c, err, sizeof err), FB_EINVAL);
    expect_field(err, path, rc_->field, rc_->detail);
    assert_int_equal(c.n, 0x5a5a5a5a);
    unlink(path);
}

static void run_node_case(void **state)
{
    const reject_case *rc_ = *state;
    char path[300], err[1024] = "";
    path_in(path, sizeof path, "reject-node.json");
    json_t *root = base_node();
    rc_->mutate(root);
    write_json(path, root);
    json_decref(root);
    cfg_node n;
    assert_int_equal(cfg_node_load(path, &n, err, sizeof err), FB_EINVAL);
    expect_field(err, path, rc_->field, rc_->detail);
    unlink(path);
}

/* A duplicate key cannot be built with jansson (it would replace), so it is
 * written by hand. */
static void test_duplicate_json_key(void **state)
{
    (void)state;
    char path[300], err[512] = "";
    path_in(path, sizeof path, "dupkey.json");
    write_text(path, "{\"id\": 0, \"id\": 1, \"cluster\": \"c\", \"key\": \"k\", \"data_dir\": "
                     "\"d\"}\n");
    cfg_node n;
    assert_int_equal(cfg_node_load(path, &n, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "duplicate"));
    unlink(path);
}

/* ------------------------------------------------------------ main */

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fedbft-test-config-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    return fb_crypto_init();
}

static int group_teardown(void **state)
{
    (void)state;
    return rmdir(g_dir); /* every test removes its files: this fails if one did not */
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_cluster_roundtrip),
        cmocka_unit_test(test_cluster_replicas_placed_by_id),
        cmocka_unit_test(test_cluster_same_port_other_host_ok),
        cmocka_unit_test(test_node_roundtrip),
        cmocka_unit_test(test_node_minimal_defaults_and_paths),
        cmocka_unit_test(test_node_benchmark_switches),
        cmocka_unit_test(test_node_batch_of_one),
        cmocka_unit_test(test_node_relative_config_path),
        cmocka_unit_test(test_node_in_cluster),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_directory_not_file),
        cmocka_unit_test(test_bad_json_reports_position),
        cmocka_unit_test(test_top_level_not_object),
        cmocka_unit_test(test_tiny_error_buffer),
        cmocka_unit_test(test_write_refuses_invalid),
        cmocka_unit_test(test_duplicate_json_key),
    };
    size_t nfixed = sizeof fixed / sizeof fixed[0];
    size_t ncl = sizeof cluster_cases / sizeof cluster_cases[0];
    size_t nno = sizeof node_cases / sizeof node_cases[0];
    /* One named cmocka test per rejection case, so a failure says which. */
    struct CMUnitTest *tests = calloc(nfixed + ncl + nno, sizeof *tests);
    if (!tests)
        return 1;
    memcpy(tests, fixed, sizeof fixed);
    for (size_t i = 0; i < ncl; i++)
        tests[nfixed + i] = (struct CMUnitTest){cluster_cases[i].name, run_cluster_case, NULL, NULL,
                                                (void *)&cluster_cases[i]};
    for (size_t i = 0; i < nno; i++)
        tests[nfixed + ncl + i] = (struct CMUnitTest){node_cases[i].name, run_node_case, NULL, NULL,
                                                      (void *)&node_cases[i]};
    int failed = _cmocka_run_group_tests("test_config", tests, nfixed + ncl + nno, group_setup,
                                         group_teardown);
    free(tests);
    return failed;
}
