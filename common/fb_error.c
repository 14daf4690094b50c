/* fb_error.c - words for the FB_E* codes. */
#include "fb_error.h"

#include <stdio.h>

const char *fb_strerror(int code)
{
    switch (code) {
    case FB_OK:
        return "success";
    case FB_EINVAL:
        return "invalid argument or malformed input";
    case FB_ENOMEM:
        return "out of memory";
    case FB_EIO:
        return "I/O error";
    case FB_ENOENT:
        return "not found";
    case FB_EPERM:
        return "unsafe or insufficient permissions";
    case FB_ECORRUPT:
        return "corrupt data";
    case FB_ETRUNC:
        return "truncated input";
    case FB_ETOOBIG:
        return "input exceeds size limit";
    case FB_EAUTH:
        return "authentication failed";
    case FB_EUNKNOWNKEY:
        return "unknown key";
    case FB_EREPLAY:
        return "replayed frame";
    case FB_EORDER:
        return "frame out of order";
    case FB_EBUSY:
        return "queue full";
    case FB_ESTATE:
        return "invalid in current state";
    case FB_EPROTO:
        return "protocol violation";
    case FB_EVERSION:
        return "unsupported version";
    case FB_EEXIST:
        return "already exists";
    default:
        return "unknown error";
    }
}

int fb_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
