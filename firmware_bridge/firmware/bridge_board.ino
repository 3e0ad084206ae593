/*
 * bridge_board.ino: reference firmware of the LoRa bridge board (RadioLib style).
 *
 * An SX1262 board (e.g. Heltec WiFi LoRa 32 V3, LilyGO T3-S3, RAK4631; set the pins below)
 * listens continuously and forwards every received packet to the edge box over USB serial
 * as one UPLINK frame (bridge_codec.h: COBS framing, CRC-32, 115200 baud). Sender address:
 * sensor nodes put their address in the first ADDRESS_PREFIX_BYTES bytes of each packet
 * (big-endian), which the board moves into the frame's address field; 0 forwards the whole
 * packet with address 0. The host may send PING, SET_FREQUENCY, SET_SPREADING_FACTOR and
 * SET_BANDWIDTH frames; each is answered with a reply frame (same seq, one status byte).
 * Arduino builds bridge_codec.c from this folder. Host check: tests/test_c_codec.py
 * compiles this file against host_stubs/ (syntax and codec API use only).
 */
#include <Arduino.h>
#include <RadioLib.h>

extern "C" {
#include "bridge_codec.h"
}

#define PIN_NSS 8
#define PIN_DIO1 14
#define PIN_RESET 12
#define PIN_BUSY 13
#define ADDRESS_PREFIX_BYTES 2
#define SERIAL_BAUD 115200

static SX1262 radio = new Module(PIN_NSS, PIN_DIO1, PIN_RESET, PIN_BUSY);
static volatile bool packet_ready = false;
static float frequency_mhz = 868.1f;
static uint8_t spreading_factor = 9;
static float bandwidth_khz = 125.0f;
static uint16_t uplink_seq = 0;
static bc_decoder host_decoder;
static bc_frame rx_frame;
static bc_frame tx_frame;
static uint8_t wire[BC_MAX_WIRE];

#if defined(ESP8266) || defined(ESP32)
ICACHE_RAM_ATTR
#endif
static void on_packet(void) { packet_ready = true; }

static void send_frame(const bc_frame *frame)
{
    size_t n = bc_encode_frame(frame, wire, sizeof wire);
    if (n > 0) {
        Serial.write(wire, n);
    }
}

static void reply(uint8_t command, uint16_t seq, uint8_t status)
{
    tx_frame.version = BC_VERSION;
    tx_frame.type = (uint8_t)(BC_TYPE_REPLY | command);
    tx_frame.seq = seq;
    tx_frame.body_len = 1;
    tx_frame.body[0] = status;
    send_frame(&tx_frame);
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint8_t apply_command(const bc_frame *cmd)
{
    int16_t state;
    switch (cmd->type) {
    case BC_TYPE_PING:
        return BC_STATUS_OK;
    case BC_TYPE_SET_FREQUENCY:
        if (cmd->body_len != 4) return BC_STATUS_BAD_PARAM;
        state = radio.setFrequency(be32(cmd->body) / 1.0e6f);
        if (state == RADIOLIB_ERR_INVALID_FREQUENCY) return BC_STATUS_BAD_PARAM;
        if (state != RADIOLIB_ERR_NONE) return BC_STATUS_RADIO_ERROR;
        frequency_mhz = be32(cmd->body) / 1.0e6f;
        break;
    case BC_TYPE_SET_SPREADING_FACTOR:
        if (cmd->body_len != 1) return BC_STATUS_BAD_PARAM;
        state = radio.setSpreadingFactor(cmd->body[0]);
        if (state == RADIOLIB_ERR_INVALID_SPREADING_FACTOR) return BC_STATUS_BAD_PARAM;
        if (state != RADIOLIB_ERR_NONE) return BC_STATUS_RADIO_ERROR;
        spreading_factor = cmd->body[0];
        break;
    case BC_TYPE_SET_BANDWIDTH:
        if (cmd->body_len != 4) return BC_STATUS_BAD_PARAM;
        state = radio.setBandwidth(be32(cmd->body) / 1000.0f);
        if (state == RADIOLIB_ERR_INVALID_BANDWIDTH) return BC_STATUS_BAD_PARAM;
        if (state != RADIOLIB_ERR_NONE) return BC_STATUS_RADIO_ERROR;
        bandwidth_khz = be32(cmd->body) / 1000.0f;
        break;
    default:
        return BC_STATUS_UNKNOWN_COMMAND;
    }
    radio.startReceive();
    return BC_STATUS_OK;
}

static void forward_packet(void)
{
    static uint8_t packet[BC_MAX_PAYLOAD + ADDRESS_PREFIX_BYTES];
    static bc_uplink up;
    size_t len = radio.getPacketLength();
    size_t i;
    int16_t state;
    if (len > sizeof packet) {
        len = sizeof packet;
    }
    state = radio.readData(packet, len);
    if (state != RADIOLIB_ERR_NONE || len < ADDRESS_PREFIX_BYTES) {
        return; /* radio CRC error or a packet too short to carry an address */
    }
    up.address = 0;
    for (i = 0; i < ADDRESS_PREFIX_BYTES; i++) {
        up.address = (up.address << 8) | packet[i];
    }
    up.payload_len = (uint16_t)(len - ADDRESS_PREFIX_BYTES);
    for (i = 0; i < up.payload_len; i++) {
        up.payload[i] = packet[ADDRESS_PREFIX_BYTES + i];
    }
    up.rssi_x10 = (int16_t)(radio.getRSSI() * 10.0f);
    up.snr_x10 = (int16_t)(radio.getSNR() * 10.0f);
    up.spreading_factor = spreading_factor;
    up.frequency_hz = (uint32_t)(frequency_mhz * 1.0e6f + 0.5f);
    if (bc_uplink_to_frame(&up, uplink_seq++, &tx_frame) == 0) {
        send_frame(&tx_frame);
    }
}

void setup()
{
    Serial.begin(SERIAL_BAUD);
    bc_decoder_init(&host_decoder);
    int16_t state = radio.begin(frequency_mhz, bandwidth_khz, spreading_factor);
    while (state != RADIOLIB_ERR_NONE) {
        delay(1000); /* no radio: stay silent; the host sees no frames and pings time out */
        state = radio.begin(frequency_mhz, bandwidth_khz, spreading_factor);
    }
    radio.setPacketReceivedAction(on_packet);
    radio.startReceive();
}

void loop()
{
    while (Serial.available() > 0) {
        bc_result r = bc_decoder_push(&host_decoder, (uint8_t)Serial.read(), &rx_frame);
        if (r == BC_OK && rx_frame.type < BC_TYPE_REPLY) {
            reply(rx_frame.type, rx_frame.seq, apply_command(&rx_frame));
        }
    }
    if (packet_ready) {
        packet_ready = false;
        forward_packet();
        radio.startReceive();
    }
}
