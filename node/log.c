/* log.c - timestamped log lines on stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Atomic int current_level = FB_LOG_INFO;
static char tag[32] = "fedbft";

static const char *names[] = {"error", "warn", "info", "debug"};

int fb_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *fb_log_level_name(fb_log_level level)
{
    return level <= FB_LOG_DEBUG ? names[level] : "?";
}

void fb_log_set_level(fb_log_level level)
{
    atomic_store(&current_level, (int)level);
}

fb_log_level fb_log_get_level(void)
{
    return (fb_log_level)atomic_load(&current_level);
}

void fb_log_set_tag(const char *t)
{
    snprintf(tag, sizeof tag, "%s", t);
}

void fb_log(fb_log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load(&current_level))
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level], tag);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    /* one write per line, so lines from threads do not interleave */
    fprintf(stderr, "%s\n", line);
}
