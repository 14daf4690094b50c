/* fuzz_envelope.c - hostile bytes into the envelope parser and every payload
 * decoder: errors are fine, crashes, leaks and out-of-bounds reads are not. */
#include "fuzz.h"

#include "envelope.h"
#include "fb_error.h"

#include <stdlib.h>
#include <string.h>

/* Decode the payload as the message its type names, then free it. */
static void decode_payload(const Fedbft__Envelope *env)
{
    const ProtobufCMessageDescriptor *d = fb_env_payload_descriptor(env->type);
    if (!d)
        return;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, env->payload.len, env->payload.data);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready)
        ready = fb_crypto_init() == 0;
    Fedbft__Envelope *env = NULL;
    uint8_t digest[FB_DIGEST_LEN];
    char err[256];
    if (fb_env_open(data, size, &env, digest, err, sizeof err) == 0) {
        decode_payload(env);
        fedbft__envelope__free_unpacked(env, NULL);
    }
    return 0;
}

/* Seeds: one well-formed, signed envelope per message type whose payload is
 * a populated message of that type. */
size_t fuzz_seed(int i, uint8_t *buf, size_t cap)
{
    fb_crypto_init();
    uint8_t seedkey[FB_SEED_LEN] = {7}, digest[FB_DIGEST_LEN] = {1, 2, 3}, payload[4096];
    fb_identity id;
    fb_key_from_seed(seedkey, &id);
    size_t plen = 0;
    int type = i + 1;
    switch (type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST: {
        Fedbft__Operation op = FEDBFT__OPERATION__INIT;
        op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
        op.key = (ProtobufCBinaryData){3, (uint8_t *)"key"};
        op.value = (ProtobufCBinaryData){5, (uint8_t *)"value"};
        Fedbft__Request r = FEDBFT__REQUEST__INIT;
        r.client = 9;
        r.timestamp = 1234;
        r.op = &op;
        plen = fedbft__request__pack(&r, payload);
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_PREPARE: {
        Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
        p.view = 2;
        p.seq = 17;
        p.digest = (ProtobufCBinaryData){sizeof digest, digest};
        p.replica = 1;
        plen = fedbft__prepare__pack(&p, payload);
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT: {
        Fedbft__Checkpoint c = FEDBFT__CHECKPOINT__INIT;
        c.seq = 128;
        c.state_digest = (ProtobufCBinaryData){sizeof digest, digest};
        plen = fedbft__checkpoint__pack(&c, payload);
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_HELLO: {
        Fedbft__ChannelHello h = FEDBFT__CHANNEL_HELLO__INIT;
        h.identity_key = (ProtobufCBinaryData){FB_PK_LEN, id.pk};
        h.ephemeral_key = (ProtobufCBinaryData){FB_PK_LEN, id.pk};
        h.max_frame = 1 << 20;
        plen = fedbft__channel_hello__pack(&h, payload);
        break;
    }
    default:
        if (type > FEDBFT__MSG_TYPE__MSG_INFER_RESULT)
            return 0;
        memset(payload, 0x2a, 40); /* not a valid payload for this type: decoders must cope */
        plen = 40;
        break;
    }
    uint8_t *wire;
    size_t wlen;
    if (fb_env_seal(type, 1, payload, plen, &id, &wire, &wlen) != 0 || wlen > cap)
        return 0;
    memcpy(buf, wire, wlen);
    free(wire);
    return wlen;
}
