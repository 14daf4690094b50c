/* fuzz_channel.c - hostile bytes into the secure channel, at the two places a
 * peer can reach it: a responder waiting for a HELLO, and an established
 * channel receiving records.  The first input byte picks the target and how
 * the rest is split into feeds (transports deliver arbitrary pieces). */
#include "fuzz.h"

#include "channel.h"
#include "fb_error.h"

#include <stdlib.h>
#include <string.h>

static fb_identity ids[2];
static uint8_t allowed[2][FB_PK_LEN];

/* In-memory wire between two channels, for building an established pair. */
typedef struct {
    uint8_t buf[1 << 16];
    size_t len;
} pipe_buf;

static void to_pipe(void *arg, const uint8_t *bytes, size_t len)
{
    pipe_buf *p = arg;
    if (len <= sizeof p->buf - p->len) {
        memcpy(p->buf + p->len, bytes, len);
        p->len += len;
    }
}

static void discard(void *arg, const uint8_t *bytes, size_t len)
{
    (void)arg;
    (void)bytes;
    (void)len;
}

static void drop_frame(void *arg, const uint8_t *plain, size_t len)
{
    (void)arg;
    (void)plain;
    (void)len;
}

static void init_once(void)
{
    static int ready;
    if (ready)
        return;
    fb_crypto_init();
    for (int i = 0; i < 2; i++) {
        uint8_t seed[FB_SEED_LEN] = {(uint8_t)(0x40 + i)};
        fb_key_from_seed(seed, &ids[i]);
        memcpy(allowed[i], ids[i].pk, FB_PK_LEN);
    }
    ready = 1;
}

static fb_chan *make(fb_chan_role role, int self, fb_chan_io io)
{
    fb_chan_config cfg = {.role = role,
                          .self = &ids[self],
                          .allowed = allowed,
                          .allowed_count = 2,
                          .sender_id = (uint32_t)self,
                          .max_frame = 4096,
                          .io = io};
    cfg.io.frame = drop_frame;
    fb_chan *ch = NULL;
    if (fb_chan_new(&cfg, &ch) != 0)
        abort();
    return ch;
}

/* Move bytes between the two pipes until the handshake settles. */
static void shuttle(fb_chan *a, pipe_buf *to_a, fb_chan *b, pipe_buf *to_b)
{
    for (int round = 0; round < 8 && (to_a->len || to_b->len); round++) {
        pipe_buf tmp;
        tmp.len = to_b->len;
        memcpy(tmp.buf, to_b->buf, tmp.len);
        to_b->len = 0;
        fb_chan_feed(b, tmp.buf, tmp.len);
        tmp.len = to_a->len;
        memcpy(tmp.buf, to_a->buf, tmp.len);
        to_a->len = 0;
        fb_chan_feed(a, tmp.buf, tmp.len);
    }
}

static void feed_in_pieces(fb_chan *ch, const uint8_t *data, size_t size, unsigned piece)
{
    for (size_t off = 0; off < size && fb_chan_get_state(ch) != FB_CHAN_FAILED;) {
        size_t n = piece == 0 ? size - off : piece;
        if (n > size - off)
            n = size - off;
        fb_chan_feed(ch, data + off, n);
        off += n;
    }
    fb_chan_eof(ch);
    fb_chan_error(ch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    if (size < 1)
        return 0;
    unsigned mode = data[0] & 1, piece = data[0] >> 1; /* piece 0 = all at once */
    data++;
    size--;
    if (mode == 0) {
        fb_chan *r = make(FB_CHAN_RESPONDER, 1, (fb_chan_io){.send = discard});
        feed_in_pieces(r, data, size, piece);
        fb_chan_free(r);
        return 0;
    }
    static pipe_buf to_i, to_r;
    to_i.len = to_r.len = 0;
    fb_chan *i = make(FB_CHAN_INITIATOR, 0, (fb_chan_io){.send = to_pipe, .arg = &to_r});
    fb_chan *r = make(FB_CHAN_RESPONDER, 1, (fb_chan_io){.send = to_pipe, .arg = &to_i});
    fb_chan_start(i);
    shuttle(i, &to_i, r, &to_r);
    if (fb_chan_get_state(r) != FB_CHAN_ESTABLISHED)
        abort(); /* the honest handshake must complete */
    feed_in_pieces(r, data, size, piece);
    fb_chan_free(i);
    fb_chan_free(r);
    return 0;
}

/* Seeds: an honest HELLO (mode 0), and frame-shaped inputs for mode 1. */
size_t fuzz_seed(int n, uint8_t *buf, size_t cap)
{
    init_once();
    if (n == 0) {
        static pipe_buf out;
        out.len = 0;
        fb_chan *i = make(FB_CHAN_INITIATOR, 0, (fb_chan_io){.send = to_pipe, .arg = &out});
        fb_chan_start(i);
        fb_chan_free(i);
        if (out.len + 1 > cap)
            return 0;
        buf[0] = 0;
        memcpy(buf + 1, out.buf, out.len);
        return out.len + 1;
    }
    if (n == 1 && cap >= 1 + 4 + 8 + 16 + 5) {
        /* a record-shaped frame: length, counter 0, 21 bytes of "ciphertext" */
        buf[0] = 1;
        uint8_t frame[] = {0, 0, 0, 8 + 21, 0, 0, 0, 0, 0, 0, 0, 0};
        memcpy(buf + 1, frame, sizeof frame);
        memset(buf + 1 + sizeof frame, 0xab, 21);
        return 1 + sizeof frame + 21;
    }
    return 0;
}
