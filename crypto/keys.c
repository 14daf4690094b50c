/* keys.c - generate, save and load Ed25519 identity key files. */
#include "keys.h"

#include "fb_error.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET_HEADER "fedbft-ed25519-secret-v1"
#define PUBLIC_HEADER "fedbft-ed25519-public-v1"
/* Longest well-formed file is header + two hex lines; anything much larger is
 * not a key file, and reading it whole would be unbounded. */
#define KEY_FILE_MAX 512

int fb_crypto_init(void)
{
    return sodium_init() < 0 ? FB_EIO : 0;
}

int fb_key_from_seed(const uint8_t seed[FB_SEED_LEN], fb_identity *out)
{
    if (crypto_sign_ed25519_seed_keypair(out->pk, out->sk, seed) != 0)
        return FB_EINVAL;
    return 0;
}

int fb_key_generate(fb_identity *out)
{
    uint8_t seed[FB_SEED_LEN];
    randombytes_buf(seed, sizeof seed);
    int rc = fb_key_from_seed(seed, out);
    sodium_memzero(seed, sizeof seed);
    return rc;
}

void fb_key_wipe(fb_identity *id)
{
    sodium_memzero(id->sk, sizeof id->sk);
}

int fb_pubkey_parse(const char *hex, uint8_t pk[FB_PK_LEN])
{
    size_t bin_len = 0;
    const char *end = NULL;
    if (!hex || strlen(hex) != FB_PK_HEX_LEN)
        return FB_EINVAL;
    if (sodium_hex2bin(pk, FB_PK_LEN, hex, FB_PK_HEX_LEN, NULL, &bin_len, &end) != 0 ||
        bin_len != FB_PK_LEN || *end != '\0')
        return FB_EINVAL;
    return 0;
}

void fb_pubkey_format(const uint8_t pk[FB_PK_LEN], char *out)
{
    sodium_bin2hex(out, FB_PK_HEX_LEN + 1, pk, FB_PK_LEN);
}

/* Write buf to path atomically: temp file with `mode`, fsync, rename, fsync dir. */
static int write_file_atomic(const char *dir, const char *name, const char *buf, size_t len,
                             mode_t mode, char *err, size_t errlen)
{
    char path[4096], tmp[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= sizeof tmp)
        return fb_errf(err, errlen, FB_EINVAL, "key directory path too long: %s", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return fb_errf(err, errlen, FB_EIO, "cannot create %s: %s", tmp, strerror(errno));
    /* The umask may have removed bits we want, never added any; fchmod makes
     * the mode exact (0600 for secrets regardless of an odd umask). */
    int rc = 0;
    if (fchmod(fd, mode) != 0 || write(fd, buf, len) != (ssize_t)len || fsync(fd) != 0)
        rc = fb_errf(err, errlen, FB_EIO, "cannot write %s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = fb_errf(err, errlen, FB_EIO, "cannot close %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = fb_errf(err, errlen, FB_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc != 0) {
        unlink(tmp);
        return rc;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* mkdir -p: missing parents get 0755 (less the umask), the key directory
 * itself 0700. */
static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path)
        return fb_errf(err, errlen, FB_EINVAL, "bad key directory path '%s'", dir);
    memcpy(path, dir, n + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return fb_errf(err, errlen, FB_EIO, "cannot create directory %s: %s", path,
                           strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return fb_errf(err, errlen, FB_EIO, "cannot create directory %s: %s", path,
                       strerror(errno));
    return 0;
}

int fb_key_save(const fb_identity *id, const char *dir, int overwrite, char *err, size_t errlen)
{
    int rc = make_dirs(dir, err, errlen);
    if (rc)
        return rc;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, FB_KEY_SECRET_FILE) >= sizeof path)
        return fb_errf(err, errlen, FB_EINVAL, "key directory path too long: %s", dir);
    if (!overwrite && access(path, F_OK) == 0)
        return fb_errf(err, errlen, FB_EEXIST,
                       "%s already exists; refusing to overwrite an identity key "
                       "(move it away first, or pass --force)",
                       path);

    char seed_hex[2 * FB_SEED_LEN + 1], pk_hex[FB_PK_HEX_LEN + 1];
    char secret[KEY_FILE_MAX], public[KEY_FILE_MAX];
    /* libsodium's secret key is seed || pk; the file stores the seed. */
    sodium_bin2hex(seed_hex, sizeof seed_hex, id->sk, FB_SEED_LEN);
    fb_pubkey_format(id->pk, pk_hex);
    int slen = snprintf(secret, sizeof secret, "%s\n%s\n%s\n", SECRET_HEADER, seed_hex, pk_hex);
    int plen = snprintf(public, sizeof public, "%s\n%s\n", PUBLIC_HEADER, pk_hex);
    rc = write_file_atomic(dir, FB_KEY_SECRET_FILE, secret, (size_t)slen, 0600, err, errlen);
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(seed_hex, sizeof seed_hex);
    if (rc == 0)
        rc = write_file_atomic(dir, FB_KEY_PUBLIC_FILE, public, (size_t)plen, 0644, err, errlen);
    return rc;
}

/* Read a small key file into buf (NUL-terminated).  If check_mode, refuse a
 * file that group or others may access. */
static int read_key_file(const char *path, int check_mode, char *buf, size_t cap, size_t *len,
                         char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return fb_errf(err, errlen, FB_ENOENT,
                           "key file %s does not exist (create one with: fedbft keygen --out DIR)",
                           path);
        return fb_errf(err, errlen, errno == EACCES ? FB_EPERM : FB_EIO, "cannot open %s: %s", path,
                       strerror(errno));
    }
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = fb_errf(err, errlen, FB_EIO, "cannot stat %s: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = fb_errf(err, errlen, FB_ECORRUPT, "%s is not a regular file", path);
    else if (check_mode && (st.st_mode & 077))
        rc = fb_errf(err, errlen, FB_EPERM,
                     "secret key %s is accessible by group or others (mode %04o); "
                     "refusing to use it. Fix with: chmod 600 %s",
                     path, (unsigned)(st.st_mode & 07777), path);
    else if (st.st_size >= (off_t)cap)
        rc = fb_errf(err, errlen, FB_ECORRUPT, "%s is %lld bytes, too large to be a key file", path,
                     (long long)st.st_size);
    if (rc == 0) {
        ssize_t n = read(fd, buf, cap - 1);
        if (n < 0)
            rc = fb_errf(err, errlen, FB_EIO, "cannot read %s: %s", path, strerror(errno));
        else {
            buf[n] = '\0';
            *len = (size_t)n;
        }
    }
    close(fd);
    return rc;
}

/* Split "header\nhex1\n[hex2\n]" and decode each hex line into out[i]. */
static int parse_key_lines(const char *path, char *buf, size_t len, const char *header,
                           uint8_t *out[], size_t nlines, char *err, size_t errlen)
{
    size_t hlen = strlen(header);
    size_t need = hlen + 1 + nlines * (2 * 32 + 1);
    if (len < need) {
        if (len < hlen || memcmp(buf, header, len < hlen ? len : hlen) == 0)
            return fb_errf(err, errlen, FB_ETRUNC,
                           "%s is truncated (%zu bytes, a key file has %zu)", path, len, need);
    }
    if (len < hlen + 1 || memcmp(buf, header, hlen) != 0 || buf[hlen] != '\n')
        return fb_errf(err, errlen, FB_ECORRUPT, "%s does not start with '%s'; not a %s key file",
                       path, header,
                       strcmp(header, SECRET_HEADER) == 0 ? "fedbft secret" : "fedbft public");
    const char *p = buf + hlen + 1;
    for (size_t i = 0; i < nlines; i++) {
        size_t bin_len = 0;
        const char *end = NULL;
        if (sodium_hex2bin(out[i], 32, p, 64, NULL, &bin_len, &end) != 0 || bin_len != 32 ||
            *end != '\n')
            return fb_errf(err, errlen, FB_ECORRUPT, "%s: line %zu is not 64 hex digits", path,
                           i + 2);
        p = end + 1;
    }
    if (*p != '\0')
        return fb_errf(err, errlen, FB_ECORRUPT, "%s: unexpected data after the key", path);
    return 0;
}

int fb_key_load(const char *path, fb_identity *out, char *err, size_t errlen)
{
    char buf[KEY_FILE_MAX];
    size_t len = 0;
    int rc = read_key_file(path, 1, buf, sizeof buf, &len, err, errlen);
    if (rc)
        return rc;
    uint8_t seed[FB_SEED_LEN], pk[FB_PK_LEN];
    uint8_t *lines[2] = {seed, pk};
    rc = parse_key_lines(path, buf, len, SECRET_HEADER, lines, 2, err, errlen);
    sodium_memzero(buf, sizeof buf);
    if (rc == 0) {
        fb_identity id;
        rc = fb_key_from_seed(seed, &id);
        if (rc == 0 && sodium_memcmp(id.pk, pk, FB_PK_LEN) != 0)
            rc = fb_errf(err, errlen, FB_ECORRUPT,
                         "%s is corrupt: its public key does not match its secret seed", path);
        if (rc == 0)
            *out = id;
        sodium_memzero(&id, sizeof id);
    }
    sodium_memzero(seed, sizeof seed);
    return rc;
}

int fb_pubkey_load(const char *path, uint8_t pk[FB_PK_LEN], char *err, size_t errlen)
{
    char buf[KEY_FILE_MAX];
    size_t len = 0;
    int rc = read_key_file(path, 0, buf, sizeof buf, &len, err, errlen);
    if (rc)
        return rc;
    uint8_t tmp[FB_PK_LEN];
    uint8_t *lines[1] = {tmp};
    rc = parse_key_lines(path, buf, len, PUBLIC_HEADER, lines, 1, err, errlen);
    if (rc == 0)
        memcpy(pk, tmp, FB_PK_LEN);
    return rc;
}
