/* bridge_codec.c: see bridge_codec.h for the frame layout and the contracts. */
#include "bridge_codec.h"

uint32_t bc_crc32(const uint8_t *data, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    int bit;
    for (i = 0; i < n; i++) {
        crc ^= data[i];
        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 1u) ? (crc >> 1) ^ 0xEDB88320u : (crc >> 1);
        }
    }
    return crc ^ 0xFFFFFFFFu;
}

size_t bc_cobs_encode(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t code_at = 0, o = 1, i;
    uint8_t code = 1;
    for (i = 0; i < n; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
            continue;
        }
        out[o++] = in[i];
        code++;
        if (code == 0xFF) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        }
    }
    out[code_at] = code;
    return o;
}

int bc_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_len)
{
    size_t i = 0, o = 0, end;
    uint8_t code;
    while (i < n) {
        code = in[i];
        if (code == 0) {
            return -1;
        }
        end = i + code;
        if (end > n) {
            return -1;
        }
        for (i = i + 1; i < end; i++) {
            out[o++] = in[i];
        }
        if (code != 0xFF && i < n) {
            out[o++] = 0;
        }
    }
    *out_len = o;
    return 0;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

size_t bc_encode_frame(const bc_frame *frame, uint8_t *out, size_t cap)
{
    uint8_t raw[BC_MAX_RAW];
    size_t n, i, enc;
    uint32_t crc;
    if (frame->body_len > BC_MAX_BODY) {
        return 0;
    }
    raw[0] = frame->version;
    raw[1] = frame->type;
    put16(raw + 2, frame->seq);
    put16(raw + 4, frame->body_len);
    for (i = 0; i < frame->body_len; i++) {
        raw[BC_HEADER_SIZE + i] = frame->body[i];
    }
    n = BC_HEADER_SIZE + frame->body_len;
    crc = bc_crc32(raw, n);
    put32(raw + n, crc);
    n += 4;
    if (cap < n + n / 254u + 3u) {
        return 0;
    }
    out[0] = 0;
    enc = bc_cobs_encode(raw, n, out + 1);
    out[enc + 1] = 0;
    return enc + 2;
}

int bc_uplink_to_frame(const bc_uplink *up, uint16_t seq, bc_frame *frame)
{
    uint16_t i;
    if (up->payload_len > BC_MAX_PAYLOAD) {
        return -1;
    }
    frame->version = BC_VERSION;
    frame->type = BC_TYPE_UPLINK;
    frame->seq = seq;
    put16(frame->body, (uint16_t)up->rssi_x10);
    put16(frame->body + 2, (uint16_t)up->snr_x10);
    frame->body[4] = up->spreading_factor;
    put32(frame->body + 5, up->frequency_hz);
    put32(frame->body + 9, up->address);
    for (i = 0; i < up->payload_len; i++) {
        frame->body[BC_UPLINK_HEAD + i] = up->payload[i];
    }
    frame->body_len = (uint16_t)(BC_UPLINK_HEAD + up->payload_len);
    return 0;
}

int bc_frame_to_uplink(const bc_frame *frame, bc_uplink *up)
{
    uint16_t i;
    if (frame->body_len < BC_UPLINK_HEAD || frame->body_len > BC_MAX_BODY) {
        return -1;
    }
    up->rssi_x10 = (int16_t)get16(frame->body);
    up->snr_x10 = (int16_t)get16(frame->body + 2);
    up->spreading_factor = frame->body[4];
    up->frequency_hz = get32(frame->body + 5);
    up->address = get32(frame->body + 9);
    up->payload_len = (uint16_t)(frame->body_len - BC_UPLINK_HEAD);
    for (i = 0; i < up->payload_len; i++) {
        up->payload[i] = frame->body[BC_UPLINK_HEAD + i];
    }
    return 0;
}

bc_result bc_classify(const uint8_t *chunk, size_t n, bc_frame *frame)
{
    uint8_t raw[BC_MAX_CHUNK];
    size_t len = 0, expected, i;
    int looks = n >= 2 && chunk[0] >= 2 && chunk[1] == BC_VERSION;
    uint16_t body_len;
    if (n > BC_MAX_CHUNK) {
        return BC_OVERSIZED;
    }
    if (bc_cobs_decode(chunk, n, raw, &len) != 0 || len < BC_MIN_RAW) {
        return looks ? BC_TRUNCATED : BC_GARBAGE;
    }
    body_len = get16(raw + 4);
    expected = BC_HEADER_SIZE + (size_t)body_len + 4u;
    if (bc_crc32(raw, len - 4) != get32(raw + len - 4)) {
        if (raw[0] != BC_VERSION) {
            return BC_GARBAGE;
        }
        return expected > len ? BC_TRUNCATED : BC_CRC;
    }
    if (raw[0] != BC_VERSION) {
        return BC_VERSION_MISMATCH;
    }
    if (expected != len) {
        return BC_LENGTH;
    }
    if (raw[1] == BC_TYPE_UPLINK && (body_len < BC_UPLINK_HEAD || body_len > BC_MAX_BODY)) {
        return BC_MALFORMED;
    }
    if (body_len > BC_MAX_BODY) {
        return BC_LENGTH;
    }
    frame->version = raw[0];
    frame->type = raw[1];
    frame->seq = get16(raw + 2);
    frame->body_len = body_len;
    for (i = 0; i < body_len; i++) {
        frame->body[i] = raw[BC_HEADER_SIZE + i];
    }
    return BC_OK;
}

void bc_decoder_init(bc_decoder *dec)
{
    dec->len = 0;
    dec->skipping = 0;
}

bc_result bc_decoder_push(bc_decoder *dec, uint8_t byte, bc_frame *frame)
{
    bc_result r;
    if (byte == 0) {
        if (dec->skipping) {
            dec->skipping = 0;
            return BC_NONE;
        }
        if (dec->len == 0) {
            return BC_NONE;
        }
        r = bc_classify(dec->buf, dec->len, frame);
        dec->len = 0;
        return r;
    }
    if (dec->skipping) {
        return BC_NONE;
    }
    if (dec->len == BC_MAX_CHUNK) {
        dec->len = 0;
        dec->skipping = 1;
        return BC_OVERSIZED;
    }
    dec->buf[dec->len++] = byte;
    return BC_NONE;
}

const char *bc_result_name(bc_result r)
{
    switch (r) {
    case BC_OK: return "ok";
    case BC_CRC: return "crc";
    case BC_TRUNCATED: return "truncated";
    case BC_OVERSIZED: return "oversized";
    case BC_GARBAGE: return "garbage";
    case BC_VERSION_MISMATCH: return "version";
    case BC_LENGTH: return "length";
    case BC_MALFORMED: return "malformed";
    default: return "none";
    }
}
