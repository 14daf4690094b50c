/* test_cpus.c - fb_cpus: cgroup "cpu.max" lines, and the usable CPU count
 * following this process's affinity mask. */
#include "fb_cpus.h"

#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static void test_cpu_max_lines(void **state)
{
    (void)state;
    assert_int_equal(fb_cpus_from_cpu_max("200000 100000\n"), 2);
    assert_int_equal(fb_cpus_from_cpu_max("150000 100000"), 2); /* 1.5 CPUs: rounded up */
    assert_int_equal(fb_cpus_from_cpu_max("50000 100000"), 1);
    assert_int_equal(fb_cpus_from_cpu_max("max 100000\n"), 0); /* no limit */
    assert_int_equal(fb_cpus_from_cpu_max(""), 0);
    assert_int_equal(fb_cpus_from_cpu_max(NULL), 0);
    assert_int_equal(fb_cpus_from_cpu_max("garbage"), 0);
    assert_int_equal(fb_cpus_from_cpu_max("100000 0"), 0);
    assert_int_equal(fb_cpus_from_cpu_max("-1 100000"), 0);
    assert_int_equal(fb_cpus_from_cpu_max("12x 100000"), 0);
}

/* Within the machine's online CPUs; pinned to one CPU, exactly one. */
static void test_follows_affinity(void **state)
{
    (void)state;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = fb_usable_cpus();
    assert_true(n >= 1);
    assert_true(online < 1 || n <= (unsigned)online);
    cpu_set_t old, one;
    assert_int_equal(sched_getaffinity(0, sizeof old, &old), 0);
    int first = -1;
    for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
        if (CPU_ISSET(i, &old))
            first = i;
    assert_true(first >= 0);
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0);
    unsigned pinned = fb_usable_cpus();
    assert_int_equal(sched_setaffinity(0, sizeof old, &old), 0);
    assert_int_equal(pinned, 1);
    assert_int_equal(fb_usable_cpus(), n);
}

static bool write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "we");
    if (!f)
        return false;
    bool ok = fputs(text, f) >= 0;
    return (fclose(f) == 0) && ok;
}

/* A child moved into a fresh cgroup limited to 1 CPU sees 1 CPU, and so does
 * a child of that cgroup (the limit is on an ancestor).  Needs root and a
 * cgroup v1 cpu controller (cgroup v2: its cpu controller enabled at the root);
 * skipped otherwise. */
static void test_follows_cgroup_quota(void **state)
{
    (void)state;
    char dir[128], inner[160], path[200];
    const char *root = NULL;
    bool v1 = access("/sys/fs/cgroup/cpu/cgroup.procs", W_OK) == 0;
    if (v1) {
        root = "/sys/fs/cgroup/cpu";
    } else {
        FILE *f = fopen("/sys/fs/cgroup/cgroup.subtree_control", "re");
        char ctl[256] = "";
        if (f) {
            if (!fgets(ctl, sizeof ctl, f))
                ctl[0] = '\0';
            fclose(f);
        }
        if (strstr(ctl, "cpu") && access("/sys/fs/cgroup/cgroup.procs", W_OK) == 0)
            root = "/sys/fs/cgroup";
    }
    snprintf(dir, sizeof dir, "%s/fedbft-test-cpus-%d", root ? root : "", (int)getpid());
    if (!root || mkdir(dir, 0755) != 0) {
        skip(); /* not root, or no cpu controller to limit */
        return;
    }
    snprintf(inner, sizeof inner, "%s/inner", dir);
    bool made = mkdir(inner, 0755) == 0;
    if (v1) {
        snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
        made = made && write_file(path, "100000");
        snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
        made = made && write_file(path, "100000");
    } else {
        snprintf(path, sizeof path, "%s/cpu.max", dir);
        made = made && write_file(path, "100000 100000");
    }
    if (!made) { /* a cgroup we may make but not limit: nothing to test */
        rmdir(inner);
        rmdir(dir);
        skip();
        return;
    }
    int seen[2] = {-1, -1};
    for (int k = 0; k < 2; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            char procs[200], me[32];
            snprintf(procs, sizeof procs, "%s/cgroup.procs", k ? inner : dir);
            snprintf(me, sizeof me, "%d", (int)getpid());
            _exit(write_file(procs, me) ? (int)fb_usable_cpus() : 255);
        }
        int st = 0;
        if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st))
            seen[k] = WEXITSTATUS(st);
    }
    rmdir(inner);
    rmdir(dir);
    assert_int_equal(seen[0], 1); /* the cgroup's own quota */
    assert_int_equal(seen[1], 1); /* an ancestor's */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_max_lines),
        cmocka_unit_test(test_follows_affinity),
        cmocka_unit_test(test_follows_cgroup_quota),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
