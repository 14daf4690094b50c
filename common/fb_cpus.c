/* fb_cpus.c - the CPUs this process may use (see fb_cpus.h). */
#include "fb_cpus.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CGROUP_ROOT "/sys/fs/cgroup"

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
    unsigned long long cpus = (q + period - 1) / period;
    return cpus > 65536 ? 65536 : (unsigned)cpus;
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

/* The smallest cgroup v2 CPU quota on this process's cgroup and its
 * ancestors, in CPUs; 0 for none (or cgroup v1, or no /proc). */
static unsigned cgroup_v2_cpus(void)
{
    char line[4096], path[4096 + sizeof CGROUP_ROOT + 16], cpu_max[128];
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f)
        return 0;
    char *dir = NULL;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = '\0';
            dir = line + 3; /* "/" inside a container's cgroup namespace */
            break;
        }
    fclose(f);
    if (!dir || dir[0] != '/')
        return 0;
    unsigned best = 0;
    for (;;) {
        snprintf(path, sizeof path, CGROUP_ROOT "%s/cpu.max", strcmp(dir, "/") ? dir : "");
        read_line(path, cpu_max, sizeof cpu_max);
        unsigned c = fb_cpus_from_cpu_max(cpu_max);
        if (c && (!best || c < best))
            best = c;
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir)
            break;
        *slash = '\0';
    }
    return best;
}

/* cgroup v1: the cpu controller's CFS quota as a container sees it. */
static unsigned cgroup_v1_cpus(void)
{
    char q[64], p[64];
    read_line(CGROUP_ROOT "/cpu/cpu.cfs_quota_us", q, sizeof q);
    read_line(CGROUP_ROOT "/cpu/cpu.cfs_period_us", p, sizeof p);
    long long quota = atoll(q), period = atoll(p);
    if (quota <= 0 || period <= 0)
        return 0;
    return (unsigned)((quota + period - 1) / period);
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
    unsigned quota = cgroup_v2_cpus();
    if (!quota)
        quota = cgroup_v1_cpus();
    if (quota && quota < n)
        n = quota;
    return n ? n : 1;
}
