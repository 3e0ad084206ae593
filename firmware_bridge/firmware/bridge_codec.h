/*
 * bridge_codec: the bridge-board frame protocol in portable C99 (no malloc, no stdio).
 *
 * Raw frame, big-endian: version u8 (=1), type u8, seq u16, body length u16, body,
 * CRC-32/ISO-HDLC (zlib CRC) u32 of everything before it. On the wire a frame is
 * 0x00 + COBS(raw) + 0x00. UPLINK body: rssi 0.1 dBm i16, snr 0.1 dB i16, sf u8,
 * frequency Hz u32, sender address u32, payload (0..255 bytes). Replies to commands have
 * type 0x80|command and a one-byte status. Same layout as firmware_bridge/frame_codec.py;
 * both pass firmware_bridge/vectors/ (*.hex files) byte for byte.
 */
#ifndef BRIDGE_CODEC_H
#define BRIDGE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define BC_VERSION 1u
#define BC_HEADER_SIZE 6u
#define BC_UPLINK_HEAD 13u
#define BC_MAX_PAYLOAD 255u
#define BC_MAX_BODY (BC_UPLINK_HEAD + BC_MAX_PAYLOAD)
#define BC_MIN_RAW (BC_HEADER_SIZE + 4u)
#define BC_MAX_RAW (BC_HEADER_SIZE + BC_MAX_BODY + 4u)
#define BC_MAX_CHUNK (BC_MAX_RAW + BC_MAX_RAW / 254u + 1u)
#define BC_MAX_WIRE (BC_MAX_CHUNK + 2u)

enum bc_type {
    BC_TYPE_UPLINK = 0x01,
    BC_TYPE_PING = 0x10,
    BC_TYPE_SET_FREQUENCY = 0x11,
    BC_TYPE_SET_SPREADING_FACTOR = 0x12,
    BC_TYPE_SET_BANDWIDTH = 0x13,
    BC_TYPE_REPLY = 0x80
};

enum bc_status { BC_STATUS_OK = 0, BC_STATUS_BAD_PARAM = 1, BC_STATUS_BUSY = 2,
                 BC_STATUS_RADIO_ERROR = 3, BC_STATUS_UNKNOWN_COMMAND = 4 };

/* Outcome of one chunk; names match the Python reject reasons. */
typedef enum {
    BC_OK = 0, BC_CRC, BC_TRUNCATED, BC_OVERSIZED, BC_GARBAGE, BC_VERSION_MISMATCH,
    BC_LENGTH, BC_MALFORMED, BC_NONE /* no chunk ended yet */
} bc_result;

typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t body_len;
    uint8_t body[BC_MAX_BODY];
} bc_frame;

typedef struct {
    uint32_t address;
    int16_t rssi_x10;
    int16_t snr_x10;
    uint8_t spreading_factor;
    uint32_t frequency_hz;
    uint16_t payload_len;
    uint8_t payload[BC_MAX_PAYLOAD];
} bc_uplink;

typedef struct {
    uint8_t buf[BC_MAX_CHUNK];
    size_t len;
    int skipping;
} bc_decoder;

uint32_t bc_crc32(const uint8_t *data, size_t n);
/* out must hold n + n/254 + 1 bytes; returns the encoded length. */
size_t bc_cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
/* returns 0 and sets *out_len, or -1 when a code byte runs past the end (truncated). */
int bc_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_len);
/* writes 00 cobs(raw) 00 to out; returns its length, or 0 when cap or body length is too small/big. */
size_t bc_encode_frame(const bc_frame *frame, uint8_t *out, size_t cap);
/* fills frame->body/body_len from up; returns 0, or -1 when the payload is too long. */
int bc_uplink_to_frame(const bc_uplink *up, uint16_t seq, bc_frame *frame);
/* parses an UPLINK body; returns 0, or -1 when its length is out of range. */
int bc_frame_to_uplink(const bc_frame *frame, bc_uplink *up);
/* classifies one delimiter-free chunk; fills *frame on BC_OK. */
bc_result bc_classify(const uint8_t *chunk, size_t n, bc_frame *frame);
void bc_decoder_init(bc_decoder *dec);
/* pushes one byte; returns BC_NONE until a chunk ends (or overflows: BC_OVERSIZED). */
bc_result bc_decoder_push(bc_decoder *dec, uint8_t byte, bc_frame *frame);
const char *bc_result_name(bc_result r);

#endif
