/* test_keys.c - identity key files: round trip, modes, and every rejection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
#include "keys.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char dir[256];
    char key[300];
    char pub[300];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/fedbft-test-keys-XXXXXX");
    if (!f || !mkdtemp(f->dir))
        return -1;
    snprintf(f->key, sizeof f->key, "%s/node.key", f->dir);
    snprintf(f->pub, sizeof f->pub, "%s/node.pub", f->dir);
    *state = f;
    return fb_crypto_init();
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->key);
    unlink(f->pub);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_raw(const char *path, const char *content, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static size_t read_raw(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, cap - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    close(fd);
    return (size_t)n;
}

static void test_save_load_roundtrip(void **state)
{
    fixture *f = *state;
    fb_identity id, back;
    char err[256] = "";
    assert_int_equal(fb_key_generate(&id), 0);
    assert_int_equal(fb_key_save(&id, f->dir, 0, err, sizeof err), 0);

    struct stat st;
    assert_int_equal(stat(f->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    assert_int_equal(fb_key_load(f->key, &back, err, sizeof err), 0);
    assert_memory_equal(back.pk, id.pk, FB_PK_LEN);
    assert_memory_equal(back.sk, id.sk, FB_SK_LEN);

    uint8_t pk[FB_PK_LEN];
    assert_int_equal(fb_pubkey_load(f->pub, pk, err, sizeof err), 0);
    assert_memory_equal(pk, id.pk, FB_PK_LEN);
}

static void test_save_refuses_overwrite(void **state)
{
    fixture *f = *state;
    fb_identity a, b, back;
    char err[256] = "";
    fb_key_generate(&a);
    fb_key_generate(&b);
    assert_int_equal(fb_key_save(&a, f->dir, 0, err, sizeof err), 0);
    assert_int_equal(fb_key_save(&b, f->dir, 0, err, sizeof err), FB_EEXIST);
    assert_non_null(strstr(err, "refusing"));
    assert_int_equal(fb_key_load(f->key, &back, err, sizeof err), 0);
    assert_memory_equal(back.pk, a.pk, FB_PK_LEN);
    assert_int_equal(fb_key_save(&b, f->dir, 1, err, sizeof err), 0);
    assert_int_equal(fb_key_load(f->key, &back, err, sizeof err), 0);
    assert_memory_equal(back.pk, b.pk, FB_PK_LEN);
}

static void test_save_mode_ignores_umask(void **state)
{
    fixture *f = *state;
    fb_identity id;
    char err[256];
    mode_t old = umask(0);
    fb_key_generate(&id);
    int rc = fb_key_save(&id, f->dir, 0, err, sizeof err);
    umask(old);
    assert_int_equal(rc, 0);
    struct stat st;
    assert_int_equal(stat(f->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_load_missing(void **state)
{
    fixture *f = *state;
    fb_identity id;
    char err[256] = "";
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ENOENT);
    assert_non_null(strstr(err, "does not exist"));
    assert_non_null(strstr(err, "keygen"));
}

static void test_load_refuses_world_readable(void **state)
{
    fixture *f = *state;
    fb_identity id;
    char err[256] = "";
    fb_key_generate(&id);
    assert_int_equal(fb_key_save(&id, f->dir, 0, err, sizeof err), 0);
    assert_int_equal(chmod(f->key, 0644), 0);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_EPERM);
    assert_non_null(strstr(err, "chmod 600"));
    assert_int_equal(chmod(f->key, 0640), 0);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_EPERM);
    assert_int_equal(chmod(f->key, 0600), 0);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), 0);
}

static void test_load_short(void **state)
{
    fixture *f = *state;
    fb_identity id;
    char err[256] = "", buf[512];
    fb_key_generate(&id);
    assert_int_equal(fb_key_save(&id, f->dir, 0, err, sizeof err), 0);
    size_t n = read_raw(f->key, buf, sizeof buf);
    /* every proper prefix is reported as truncated */
    for (size_t cut = 0; cut < n; cut += 7) {
        write_raw(f->key, buf, cut, 0600);
        int rc = fb_key_load(f->key, &id, err, sizeof err);
        assert_true(rc == FB_ETRUNC || rc == FB_ECORRUPT);
        if (cut < n - 2)
            assert_int_equal(rc, FB_ETRUNC);
    }
    write_raw(f->key, "", 0, 0600);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ETRUNC);
    assert_non_null(strstr(err, "truncated"));
}

static void test_load_corrupt(void **state)
{
    fixture *f = *state;
    fb_identity id;
    char err[256] = "", buf[512];
    fb_key_generate(&id);
    assert_int_equal(fb_key_save(&id, f->dir, 0, err, sizeof err), 0);
    size_t n = read_raw(f->key, buf, sizeof buf);

    /* a flipped hex digit in the seed: the public key no longer matches */
    char bad[512];
    memcpy(bad, buf, n);
    size_t seed_pos = strlen("fedbft-ed25519-secret-v1\n") + 5;
    bad[seed_pos] = bad[seed_pos] == '0' ? '1' : '0';
    write_raw(f->key, bad, n, 0600);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "does not match"));

    /* a non-hex character */
    memcpy(bad, buf, n);
    bad[seed_pos] = 'z';
    write_raw(f->key, bad, n, 0600);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ECORRUPT);

    /* wrong header: a public key file given as a secret key */
    assert_int_equal(chmod(f->pub, 0600), 0);
    assert_int_equal(fb_key_load(f->pub, &id, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "not a fedbft secret key file"));

    /* trailing garbage */
    memcpy(bad, buf, n);
    memcpy(bad + n, "extra\n", 6);
    write_raw(f->key, bad, n + 6, 0600);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ECORRUPT);

    /* a huge file is not read whole */
    char big[4096];
    memset(big, 'a', sizeof big);
    write_raw(f->key, big, sizeof big, 0600);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "too large"));
}

static void test_load_refuses_directory_and_symlink(void **state)
{
    fixture *f = *state;
    fb_identity id;
    char err[256] = "";
    assert_int_equal(mkdir(f->key, 0700), 0);
    assert_int_equal(fb_key_load(f->key, &id, err, sizeof err), FB_ECORRUPT);
    rmdir(f->key);
    assert_int_equal(symlink("/etc/hostname", f->key), 0);
    assert_int_not_equal(fb_key_load(f->key, &id, err, sizeof err), 0);
    unlink(f->key);
}

static void test_pubkey_hex(void **state)
{
    (void)state;
    fb_identity id;
    uint8_t seed[FB_SEED_LEN] = {1, 2, 3};
    uint8_t pk[FB_PK_LEN];
    char hex[FB_PK_HEX_LEN + 1];
    assert_int_equal(fb_key_from_seed(seed, &id), 0);
    fb_pubkey_format(id.pk, hex);
    assert_int_equal(strlen(hex), FB_PK_HEX_LEN);
    assert_int_equal(fb_pubkey_parse(hex, pk), 0);
    assert_memory_equal(pk, id.pk, FB_PK_LEN);
    hex[10] = 'g';
    assert_int_equal(fb_pubkey_parse(hex, pk), FB_EINVAL);
    assert_int_equal(fb_pubkey_parse("abcd", pk), FB_EINVAL);
    assert_int_equal(fb_pubkey_parse(NULL, pk), FB_EINVAL);
}

static void test_seed_is_deterministic(void **state)
{
    (void)state;
    uint8_t seed[FB_SEED_LEN] = {9};
    fb_identity a, b, c;
    fb_key_from_seed(seed, &a);
    fb_key_from_seed(seed, &b);
    seed[0] = 10;
    fb_key_from_seed(seed, &c);
    assert_memory_equal(a.pk, b.pk, FB_PK_LEN);
    assert_memory_not_equal(a.pk, c.pk, FB_PK_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_save_load_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_refuses_overwrite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_mode_ignores_umask, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_refuses_world_readable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_short, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_refuses_directory_and_symlink, setup, teardown),
        cmocka_unit_test(test_pubkey_hex),
        cmocka_unit_test(test_seed_is_deterministic),
    };
    fb_crypto_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
