/* fb_error.h - error codes shared by every fedbft module.
 *
 * Functions return 0 on success or a negative FB_E* code, and fill their
 * out-parameters only on success.  Where a person will read the error, the
 * function also takes a caller-owned message buffer (char *err, size_t errlen)
 * that names what was wrong and what to do about it.
 */
#ifndef FB_ERROR_H
#define FB_ERROR_H

#include <stdarg.h>
#include <stddef.h>

enum {
    FB_OK = 0,
    FB_EINVAL = -1,       /* bad argument or malformed input */
    FB_ENOMEM = -2,       /* allocation failed */
    FB_EIO = -3,          /* read/write/fsync failed */
    FB_ENOENT = -4,       /* file or entry does not exist */
    FB_EPERM = -5,        /* file permissions unsafe or insufficient */
    FB_ECORRUPT = -6,     /* content fails a consistency check */
    FB_ETRUNC = -7,       /* input ends before a complete item */
    FB_ETOOBIG = -8,      /* input exceeds a configured limit */
    FB_EAUTH = -9,        /* signature or authentication tag does not verify */
    FB_EUNKNOWNKEY = -10, /* key not in the allow-list */
    FB_EREPLAY = -11,     /* frame counter already seen */
    FB_EORDER = -12,      /* frame counter skips ahead (reordered or dropped) */
    FB_EBUSY = -13,       /* bounded queue is full; retry later */
    FB_ESTATE = -14,      /* call not valid in the object's current state */
    FB_EPROTO = -15,      /* peer violated the protocol */
    FB_EVERSION = -16,    /* unsupported protocol or file version */
    FB_EEXIST = -17,      /* refusing to overwrite an existing file */
};

/* Short description of an FB_E* code; never NULL. */
const char *fb_strerror(int code);

/* Write a formatted message into err (if err != NULL and errlen > 0) and
 * return code, so callers can write `return fb_errf(err, n, FB_EIO, "...")`. */
int fb_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
