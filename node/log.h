/* log.h - the node's log: one line per event on stderr, with wall-clock
 * time, level and node id.  The level can change at run time. */
#ifndef FB_LOG_H
#define FB_LOG_H

typedef enum fb_log_level {
    FB_LOG_ERROR = 0,
    FB_LOG_WARN = 1,
    FB_LOG_INFO = 2,
    FB_LOG_DEBUG = 3,
} fb_log_level;

/* Parse "error" | "warn" | "info" | "debug"; -1 if none of them. */
int fb_log_parse_level(const char *name);
const char *fb_log_level_name(fb_log_level level);

void fb_log_set_level(fb_log_level level);
fb_log_level fb_log_get_level(void);
/* A tag printed on every line, e.g. "node 2". */
void fb_log_set_tag(const char *tag);

void fb_log(fb_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERROR(...) fb_log(FB_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) fb_log(FB_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) fb_log(FB_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...)                                                                             \
    do {                                                                                           \
        if (fb_log_get_level() >= FB_LOG_DEBUG)                                                    \
            fb_log(FB_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
