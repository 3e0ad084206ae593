/*
 * Host test of bridge_codec against the shared vectors: for every file given on the
 * command line, a good vector must encode to exactly its wire bytes and decode back to
 * its fields; a bad one must be rejected with its reason. Exit status 0 = all passed.
 * Prints one line per vector: "PASS name" or "FAIL name: why".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_codec.h"

#define MAX_VALUE 4096

typedef struct {
    char wire[MAX_VALUE], body[MAX_VALUE], payload[MAX_VALUE], expect[64];
    long version, type, seq, rssi_x10, snr_x10, sf, freq, addr;
    int has_uplink;
} vector;

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long unhex(const char *text, uint8_t *out, size_t cap)
{
    size_t n = strlen(text), i;
    if (n % 2 != 0 || n / 2 > cap) return -1;
    for (i = 0; i < n / 2; i++) {
        int hi = hexval(text[2 * i]), lo = hexval(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi * 16 + lo);
    }
    return (long)(n / 2);
}

static int load(const char *path, vector *v)
{
    static char line[MAX_VALUE + 64];
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    memset(v, 0, sizeof *v);
    while (fgets(line, sizeof line, f)) {
        char *eq, *end;
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        end = eq + 1;
        if (!strcmp(line, "wire")) strncpy(v->wire, end, MAX_VALUE - 1);
        else if (!strcmp(line, "body")) strncpy(v->body, end, MAX_VALUE - 1);
        else if (!strcmp(line, "payload")) { strncpy(v->payload, end, MAX_VALUE - 1); v->has_uplink = 1; }
        else if (!strcmp(line, "expect")) strncpy(v->expect, end, sizeof v->expect - 1);
        else if (!strcmp(line, "version")) v->version = strtol(end, NULL, 10);
        else if (!strcmp(line, "type")) v->type = strtol(end, NULL, 10);
        else if (!strcmp(line, "seq")) v->seq = strtol(end, NULL, 10);
        else if (!strcmp(line, "rssi_x10")) v->rssi_x10 = strtol(end, NULL, 10);
        else if (!strcmp(line, "snr_x10")) v->snr_x10 = strtol(end, NULL, 10);
        else if (!strcmp(line, "sf")) v->sf = strtol(end, NULL, 10);
        else if (!strcmp(line, "freq")) v->freq = (long)strtoul(end, NULL, 10);
        else if (!strcmp(line, "addr")) v->addr = (long)strtoul(end, NULL, 10);
    }
    fclose(f);
    return 0;
}

static bc_result decode_all(const uint8_t *wire, size_t n, bc_frame *frame, int *count)
{
    bc_decoder dec;
    bc_result last = BC_NONE, r;
    size_t i;
    *count = 0;
    bc_decoder_init(&dec);
    for (i = 0; i <= n; i++) {
        r = bc_decoder_push(&dec, i < n ? wire[i] : 0, frame); /* the extra 0x00 flushes */
        if (r != BC_NONE) { last = r; (*count)++; }
    }
    return last;
}

static const char *check(const vector *v)
{
    static uint8_t wire[MAX_VALUE], out[BC_MAX_WIRE], body[MAX_VALUE];
    static bc_frame frame, decoded;
    static bc_uplink up, got;
    long wire_len = unhex(v->wire, wire, sizeof wire), body_len;
    size_t out_len;
    int count;
    bc_result r;
    if (wire_len < 0) return "bad wire hex";
    r = decode_all(wire, (size_t)wire_len, &decoded, &count);
    if (count != 1) return "not exactly one outcome";
    if (strcmp(bc_result_name(r), v->expect) != 0) return "decoder outcome differs from expect";
    if (strcmp(v->expect, "ok") != 0) return NULL;

    body_len = unhex(v->body, body, sizeof body);
    if (body_len < 0 || body_len > (long)BC_MAX_BODY) return "bad body hex";
    memset(&frame, 0, sizeof frame);
    frame.version = (uint8_t)v->version;
    frame.type = (uint8_t)v->type;
    frame.seq = (uint16_t)v->seq;
    frame.body_len = (uint16_t)body_len;
    memcpy(frame.body, body, (size_t)body_len);
    out_len = bc_encode_frame(&frame, out, sizeof out);
    if (out_len != (size_t)wire_len || memcmp(out, wire, out_len) != 0) return "encoded bytes differ";
    if (decoded.version != frame.version || decoded.type != frame.type || decoded.seq != frame.seq ||
        decoded.body_len != frame.body_len || memcmp(decoded.body, frame.body, frame.body_len) != 0)
        return "decoded frame differs";
    if (!v->has_uplink) return NULL;

    memset(&up, 0, sizeof up);
    up.rssi_x10 = (int16_t)v->rssi_x10;
    up.snr_x10 = (int16_t)v->snr_x10;
    up.spreading_factor = (uint8_t)v->sf;
    up.frequency_hz = (uint32_t)v->freq;
    up.address = (uint32_t)v->addr;
    body_len = unhex(v->payload, up.payload, sizeof up.payload);
    if (body_len < 0) return "bad payload hex";
    up.payload_len = (uint16_t)body_len;
    if (bc_uplink_to_frame(&up, (uint16_t)v->seq, &frame) != 0) return "uplink_to_frame failed";
    out_len = bc_encode_frame(&frame, out, sizeof out);
    if (out_len != (size_t)wire_len || memcmp(out, wire, out_len) != 0) return "uplink encoding differs";
    if (bc_frame_to_uplink(&decoded, &got) != 0) return "frame_to_uplink failed";
    if (got.rssi_x10 != up.rssi_x10 || got.snr_x10 != up.snr_x10 || got.spreading_factor != up.spreading_factor ||
        got.frequency_hz != up.frequency_hz || got.address != up.address || got.payload_len != up.payload_len ||
        memcmp(got.payload, up.payload, up.payload_len) != 0)
        return "decoded uplink differs";
    return NULL;
}

int main(int argc, char **argv)
{
    static vector v;
    int i, failed = 0;
    const uint8_t check_input[] = "123456789";
    if (bc_crc32(check_input, 9) != 0xCBF43926u) {
        printf("FAIL crc32 check value\n");
        failed++;
    }
    if (argc < 2) {
        printf("FAIL no vector files given\n");
        return 1;
    }
    for (i = 1; i < argc; i++) {
        const char *why;
        if (load(argv[i], &v) != 0) {
            printf("FAIL %s: cannot read\n", argv[i]);
            failed++;
            continue;
        }
        why = check(&v);
        if (why) {
            printf("FAIL %s: %s\n", argv[i], why);
            failed++;
        } else {
            printf("PASS %s\n", argv[i]);
        }
    }
    printf("%d of %d vectors failed\n", failed, argc - 1);
    return failed ? 1 : 0;
}
