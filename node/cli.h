/* cli.h - the fedbft command-line front end: one table of commands, each with
 * its own --help.  Commands return a process exit status (0 ok, 1 failure,
 * 2 usage error). */
#ifndef FB_CLI_H
#define FB_CLI_H

#include <stdint.h>
#include <stdio.h>

typedef struct cli_command {
    const char *name;
    const char *summary;               /* one line for `fedbft --help` */
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
    void (*usage)(FILE *out);          /* full help for `fedbft NAME --help` */
} cli_command;

/* Entry point: dispatch argv[1] to a command. */
int cli_main(int argc, char **argv);

/* A usage error: prints "fedbft WHAT: MESSAGE" and "(run 'fedbft HELP --help'
 * for usage)" on stderr and returns 2, the exit status of a usage error. */
int cli_usage_error(const char *what, const char *help, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Commands (one file each). */
int cmd_keygen(int argc, char **argv);
void cmd_keygen_usage(FILE *out);
int cmd_cluster(int argc, char **argv);
void cmd_cluster_usage(FILE *out);
int cmd_client(int argc, char **argv);
struct cfg_cluster;
/* `fedbft client infer` (cmd_client_infer.c), argv[0] = "infer". */
int cmd_client_infer(const struct cfg_cluster *cl, const char *keyfile, uint64_t timeout_ms,
                     uint64_t retransmit_ms, int argc, char **argv);
void cmd_client_usage(FILE *out);
int cmd_inspect(int argc, char **argv);
void cmd_inspect_usage(FILE *out);
int cmd_bench(int argc, char **argv); /* cmd_bench.c and bench_*.c */
void cmd_bench_usage(FILE *out);
int cmd_ctl(int argc, char **argv);
void cmd_ctl_usage(FILE *out);
int cmd_probe(int argc, char **argv);
void cmd_probe_usage(FILE *out);
int cmd_run(int argc, char **argv);
void cmd_run_usage(FILE *out);
int cmd_keyinfo(int argc, char **argv);
void cmd_keyinfo_usage(FILE *out);
int cmd_model(int argc, char **argv);
void cmd_model_usage(FILE *out);
int cmd_model_run(int argc, char **argv); /* `fedbft model run` */
void cmd_model_run_usage(FILE *out);

#endif
