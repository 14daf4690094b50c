/* cmd_keygen.c - `fedbft keygen`: make an identity key pair on disk. */
#include "cli.h"

#include "fb_error.h"
#include "keys.h"

#include <getopt.h>
#include <string.h>

void cmd_keygen_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft keygen --out DIR [--force]\n\n"
                 "Make a fresh Ed25519 identity for a node or client.\n\n"
                 "Writes DIR/node.key (the secret key, mode 0600) and DIR/node.pub (the public\n"
                 "key), creating DIR (mode 0700) if needed, and prints the public key in hex,\n"
                 "the form cluster.json uses.\n\n"
                 "Options:\n"
                 "  --out DIR   directory for the key files (required)\n"
                 "  --force     overwrite an existing key (the old identity is lost)\n"
                 "  --help      show this help\n");
}

int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    int force = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:f", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            dir = optarg;
            break;
        case 'f':
            force = 1;
            break;
        default:
            cmd_keygen_usage(stderr);
            return 2;
        }
    }
    if (!dir || optind != argc) {
        fprintf(stderr, "fedbft keygen: %s\n\n",
                dir ? "unexpected argument" : "--out DIR is required");
        cmd_keygen_usage(stderr);
        return 2;
    }
    fb_identity id;
    char err[512];
    int rc = fb_key_generate(&id);
    if (rc == 0)
        rc = fb_key_save(&id, dir, force, err, sizeof err);
    else
        snprintf(err, sizeof err, "cannot generate a key: %s", fb_strerror(rc));
    if (rc != 0) {
        fb_key_wipe(&id);
        fprintf(stderr, "fedbft keygen: %s\n", err);
        return 1;
    }
    char hex[FB_PK_HEX_LEN + 1];
    fb_pubkey_format(id.pk, hex);
    fb_key_wipe(&id);
    printf("%s\n", hex);
    fprintf(stderr, "wrote %s/%s (secret, mode 0600) and %s/%s\n", dir, FB_KEY_SECRET_FILE, dir,
            FB_KEY_PUBLIC_FILE);
    return 0;
}

void cmd_keyinfo_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft keyinfo FILE\n\n"
                 "Check a key file and print its public key in hex.\n\n"
                 "FILE is a secret key (node.key) or a public key (node.pub).  A secret key\n"
                 "gets every check the node makes before using it: it must be readable by its\n"
                 "owner only (mode 0600), well-formed, and its public key must match its seed.\n");
}

int cmd_keyinfo(int argc, char **argv)
{
    if (argc != 2) {
        cmd_keyinfo_usage(stderr);
        return 2;
    }
    char err[512], hex[FB_PK_HEX_LEN + 1];
    fb_identity id;
    uint8_t pk[FB_PK_LEN];
    const char *kind = "public";
    /* A public key file is recognised by its header; anything else must pass
     * as a secret key, with the mode check. */
    int rc = fb_pubkey_load(argv[1], pk, NULL, 0);
    if (rc != 0) {
        kind = "secret";
        rc = fb_key_load(argv[1], &id, err, sizeof err);
        if (rc == 0)
            memcpy(pk, id.pk, FB_PK_LEN);
        fb_key_wipe(&id);
    }
    if (rc != 0) {
        fprintf(stderr, "fedbft keyinfo: %s\n", err);
        return 1;
    }
    fb_pubkey_format(pk, hex);
    printf("%s\n", hex);
    fprintf(stderr, "%s: valid %s key\n", argv[1], kind);
    return 0;
}
