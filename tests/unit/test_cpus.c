/* test_cpus.c - fb_cpus: cgroup "cpu.max" lines, and the usable CPU count
 * following this process's affinity mask. */
#include "fb_cpus.h"

#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_max_lines),
        cmocka_unit_test(test_follows_affinity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
