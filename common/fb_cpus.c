/* fb_cpus.c - the CPUs this process may use (see fb_cpus.h). */
#include "fb_cpus.h"

#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CGROUP_ROOT "/sys/fs/cgroup"

/* quota microseconds of CPU time per period, in whole CPUs (rounded up). */
static unsigned quota_cpus(unsigned long long quota, unsigned long long period)
{
    unsigned long long cpus = (quota + period - 1) / period;
    return cpus > 65536 ? 65536u : (unsigned)cpus;
}

unsigned fb_cpus_from_cpu_max(const char *line)
{
    char quota[32];
    unsigned long long period = 0;
    if (!line || sscanf(line, "%31s %llu", quota, &period) != 2 || period == 0 ||
        strcmp(quota, "max") == 0)
        return 0;
    char *end = NULL;
    unsigned long long q = strtoull(quota, &end, 10);
    if (!end || *end != '\0' || q == 0 || quota[0] == '-')
        return 0;
    return quota_cpus(q, period);
}

/* The first line of path, or "" (a file that is not there limits nothing). */
static void read_line(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    if (!fgets(buf, (int)len, f))
        buf[0] = '\0';
    fclose(f);
}

/* This process's cgroup path in /proc/self/cgroup: the cgroup v2 line
 * ("0::PATH") when v1 is false, else the v1 line whose controllers include
 * "cpu" ("N:cpu,cpuacct:PATH").  False if there is none. */
static bool own_cgroup(bool v1, char *out, size_t len)
{
    char line[4096];
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f)
        return false;
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c2[1] != '/')
            continue;
        *c2 = '\0';
        if (!v1) {
            found = strcmp(line, "0") == 0 && c1[1] == '\0';
        } else {
            for (char *tok = strtok(c1 + 1, ","); tok && !found; tok = strtok(NULL, ","))
                found = strcmp(tok, "cpu") == 0;
        }
        if (found)
            snprintf(out, len, "%s", c2 + 1);
    }
    fclose(f);
    return found;
}

/* The CPUs one cgroup directory's quota allows; 0 for none. */
static unsigned dir_quota(bool v1, const char *dir)
{
    char path[4200], a[128], b[64];
    if (!v1) {
        snprintf(path, sizeof path, CGROUP_ROOT "%s/cpu.max", dir);
        read_line(path, a, sizeof a);
        return fb_cpus_from_cpu_max(a);
    }
    snprintf(path, sizeof path, CGROUP_ROOT "/cpu%s/cpu.cfs_quota_us", dir);
    read_line(path, a, sizeof a);
    snprintf(path, sizeof path, CGROUP_ROOT "/cpu%s/cpu.cfs_period_us", dir);
    read_line(path, b, sizeof b);
    long long quota = atoll(a), period = atoll(b); /* quota -1: no limit */
    if (quota <= 0 || period <= 0)
        return 0;
    return quota_cpus((unsigned long long)quota, (unsigned long long)period);
}

/* The smallest CPU quota on this process's cgroup and its ancestors (a
 * container sees its own cgroup as "/"), in CPUs; 0 for none. */
static unsigned cgroup_cpus(bool v1)
{
    char dir[4096];
    if (!own_cgroup(v1, dir, sizeof dir))
        return 0;
    unsigned best = 0;
    for (;;) {
        if (strcmp(dir, "/") == 0)
            dir[0] = '\0'; /* the root: CGROUP_ROOT itself */
        unsigned c = dir_quota(v1, dir);
        if (c && (!best || c < best))
            best = c;
        char *slash = strrchr(dir, '/');
        if (!slash)
            break;
        *slash = '\0';
    }
    return best;
}

unsigned fb_usable_cpus(void)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = online > 0 ? (unsigned)online : 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int a = CPU_COUNT(&set);
        if (a > 0 && (unsigned)a < n)
            n = (unsigned)a;
    }
    unsigned quota = cgroup_cpus(false);
    if (!quota)
        quota = cgroup_cpus(true);
    if (quota && quota < n)
        n = quota;
    return n ? n : 1;
}
