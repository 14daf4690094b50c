/* fb_cpus.h - how many CPUs this process may use.
 *
 * The online CPUs, narrowed by the process's affinity mask (taskset, a
 * container's cpuset) and by a cgroup CPU quota (`docker run --cpus`, a
 * Kubernetes CPU limit) on its cgroup or any ancestor, the quota rounded up.
 * Thread pools sized from it neither oversubscribe a limited container nor
 * leave an unlimited machine idle.
 */
#ifndef FB_CPUS_H
#define FB_CPUS_H

/* At least 1. */
unsigned fb_usable_cpus(void);

/* The CPUs a cgroup v2 "cpu.max" line allows ("QUOTA PERIOD" in
 * microseconds, rounded up; "max PERIOD" is no limit).  0 for no limit or a
 * line that does not parse. */
unsigned fb_cpus_from_cpu_max(const char *line);

#endif
