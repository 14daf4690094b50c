/* envelope.c - the Envelope: digest, seal (signed, except REPLY), structural open. */
#include "envelope.h"

#include "fb_error.h"
#include "sig.h"

#include <stdbool.h>
#include <stdlib.h>

static void put_be32(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

static int envelope_type_valid(int type)
{
    return type >= FEDBFT__MSG_TYPE__MSG_REQUEST && type <= FEDBFT__MSG_TYPE__MSG_INFER_RESULT;
}

bool fb_env_type_signed(int type)
{
    return type != FEDBFT__MSG_TYPE__MSG_REPLY && type != FEDBFT__MSG_TYPE__MSG_COMMIT;
}

const ProtobufCMessageDescriptor *fb_env_payload_descriptor(int type)
{
    switch (type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
        return &fedbft__request__descriptor;
    case FEDBFT__MSG_TYPE__MSG_REPLY:
        return &fedbft__reply__descriptor;
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        return &fedbft__pre_prepare__descriptor;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        return &fedbft__prepare__descriptor;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        return &fedbft__commit__descriptor;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        return &fedbft__checkpoint__descriptor;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        return &fedbft__view_change__descriptor;
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        return &fedbft__new_view__descriptor;
    case FEDBFT__MSG_TYPE__MSG_STATE_REQUEST:
        return &fedbft__state_request__descriptor;
    case FEDBFT__MSG_TYPE__MSG_STATE_RESPONSE:
        return &fedbft__state_response__descriptor;
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_HELLO:
        return &fedbft__channel_hello__descriptor;
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_REPLY:
        return &fedbft__channel_reply__descriptor;
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH:
        return &fedbft__channel_finish__descriptor;
    case FEDBFT__MSG_TYPE__MSG_INFER_RESULT:
        return &fedbft__infer_result__descriptor;
    default:
        return NULL;
    }
}

int fb_env_digest(int type, uint32_t version, uint32_t sender, const uint8_t *payload,
                  size_t payload_len, uint8_t out[FB_DIGEST_LEN])
{
    if (!envelope_type_valid(type))
        return FB_EINVAL;
    uint8_t hdr[8];
    put_be32(hdr, version);
    put_be32(hdr + 4, sender);
    fb_digest_ctx ctx;
    fb_digest_init(&ctx, (fb_domain)type);
    fb_digest_update(&ctx, hdr, sizeof hdr);
    fb_digest_update(&ctx, payload, payload_len);
    fb_digest_final(&ctx, out);
    return 0;
}

int fb_env_seal(int type, uint32_t sender, const uint8_t *payload, size_t payload_len,
                const fb_identity *id, uint8_t **out, size_t *out_len)
{
    uint8_t digest[FB_DIGEST_LEN], sig[FB_SIG_LEN];
    int rc = fb_env_digest(type, FB_PROTOCOL_VERSION, sender, payload, payload_len, digest);
    if (rc)
        return rc;
    bool signed_type = fb_env_type_signed(type);
    if (signed_type) {
        if (!id)
            return FB_EINVAL;
        fb_sig_sign(id, digest, sig);
    }

    Fedbft__Envelope env = FEDBFT__ENVELOPE__INIT;
    env.type = (Fedbft__MsgType)type;
    env.sender = sender;
    env.version = FB_PROTOCOL_VERSION;
    env.payload.data = (uint8_t *)payload;
    env.payload.len = payload_len;
    env.signature.data = signed_type ? sig : NULL;
    env.signature.len = signed_type ? sizeof sig : 0;
    size_t n = fedbft__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return FB_ENOMEM;
    fedbft__envelope__pack(&env, buf);
    *out = buf;
    *out_len = n;
    return 0;
}

int fb_env_unpack(const uint8_t *buf, size_t len, Fedbft__Envelope **out, char *err, size_t errlen)
{
    Fedbft__Envelope *env = fedbft__envelope__unpack(NULL, len, buf);
    if (!env)
        return fb_errf(err, errlen, FB_EINVAL,
                       "envelope: not a valid protobuf Envelope (%zu bytes)", len);
    int rc = 0;
    if (env->version != FB_PROTOCOL_VERSION)
        rc = fb_errf(err, errlen, FB_EVERSION, "envelope: protocol version %u, this node speaks %u",
                     env->version, FB_PROTOCOL_VERSION);
    else if (!envelope_type_valid(env->type))
        rc = fb_errf(err, errlen, FB_EPROTO, "envelope: unknown message type %d", (int)env->type);
    else if (!fb_env_type_signed(env->type) && env->signature.len != 0)
        rc = fb_errf(err, errlen, FB_EPROTO,
                     "envelope: a %s carries no signature (the channel authenticates it), "
                     "this one has %zu bytes",
                     env->type == FEDBFT__MSG_TYPE__MSG_REPLY ? "REPLY" : "COMMIT",
                     env->signature.len);
    else if (fb_env_type_signed(env->type) && env->signature.len != FB_SIG_LEN)
        rc = fb_errf(err, errlen, FB_EPROTO, "envelope: signature is %zu bytes, expected %d",
                     env->signature.len, FB_SIG_LEN);
    if (rc) {
        fedbft__envelope__free_unpacked(env, NULL);
        return rc;
    }
    *out = env;
    return 0;
}

int fb_env_open(const uint8_t *buf, size_t len, Fedbft__Envelope **out,
                uint8_t digest[FB_DIGEST_LEN], char *err, size_t errlen)
{
    Fedbft__Envelope *env = NULL;
    int rc = fb_env_unpack(buf, len, &env, err, errlen);
    if (rc)
        return rc;
    fb_env_digest(env->type, env->version, env->sender, env->payload.data, env->payload.len,
                  digest);
    *out = env;
    return 0;
}
