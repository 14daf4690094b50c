/* cli.c - dispatch `fedbft <command>` and print help. */
#include "cli.h"

#include "keys.h"

#include <stdarg.h>
#include <string.h>

#ifndef FEDBFT_VERSION
#define FEDBFT_VERSION "unknown"
#endif

static int cmd_version(int argc, char **argv);
static void cmd_version_usage(FILE *out);
static int cmd_help(int argc, char **argv);
static void cmd_help_usage(FILE *out);

static const cli_command commands[] = {
    {"keygen", "make an Ed25519 identity (secret key file mode 0600)", cmd_keygen,
     cmd_keygen_usage},
    {"keyinfo", "check a key file and print its public key", cmd_keyinfo, cmd_keyinfo_usage},
    {"cluster", "run a local test cluster: init, up, down, status, kill, restart", cmd_cluster,
     cmd_cluster_usage},
    {"run", "run a node in the foreground (fedbft run --config node.json)", cmd_run, cmd_run_usage},
    {"client", "put/get/del/cas and infer against a cluster, or a write load", cmd_client,
     cmd_client_usage},
    {"bench", "consensus benchmark against a local or running cluster", cmd_bench, cmd_bench_usage},
    {"ctl", "send a command to a node's admin socket", cmd_ctl, cmd_ctl_usage},
    {"probe", "HTTP GET of a node's /ready (health checks): exit 0 on 2xx", cmd_probe,
     cmd_probe_usage},
    {"inspect", "show what a stopped node's store holds", cmd_inspect, cmd_inspect_usage},
    {"model", "GGUF models: info, synth, quantize, run (local generation)", cmd_model,
     cmd_model_usage},
    {"version", "print the version", cmd_version, cmd_version_usage},
    {"help", "show help for a command", cmd_help, cmd_help_usage},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void main_usage(FILE *out)
{
    fprintf(out,
            "fedbft %s - a Byzantine-fault-tolerant federation node\n\n"
            "Usage: fedbft <command> [options]\n\nCommands:\n",
            FEDBFT_VERSION);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nRun 'fedbft <command> --help' for a command's options.\n");
}

static const cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    return 0;
}

static void cmd_version_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft version\n\nPrint the fedbft version and protocol version.\n");
}

static int cmd_version(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        cmd_version_usage(stderr);
        return 2;
    }
    printf("fedbft %s (protocol 1)\n", FEDBFT_VERSION);
    return 0;
}

static void cmd_help_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft help [COMMAND]\n\nList the commands, or show one command's help.\n");
}

static int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        main_usage(stdout);
        return 0;
    }
    const cli_command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "fedbft: unknown command '%s'\n", argv[1]);
        return 2;
    }
    c->usage(stdout);
    return 0;
}

int cli_main(int argc, char **argv)
{
    if (argc < 2) {
        main_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        main_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0)
        return cmd_version(1, argv + 1);
    const cli_command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "fedbft: unknown command '%s' (run 'fedbft --help' for the list)\n",
                argv[1]);
        return 2;
    }
    if (wants_help(argc - 1, argv + 1)) {
        c->usage(stdout);
        return 0;
    }
    if (fb_crypto_init() != 0) {
        fprintf(stderr, "fedbft: libsodium failed to initialise\n");
        return 1;
    }
    return c->run(argc - 1, argv + 1);
}

int cli_usage_error(const char *what, const char *help, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fedbft %s: %s\n(run 'fedbft %s --help' for usage)\n", what, msg, help);
    return 2;
}
