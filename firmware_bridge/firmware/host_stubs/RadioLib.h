/* Host stand-in for RadioLib.h: the SX1262 calls bridge_board.ino makes, with RadioLib's signatures. */
#ifndef HOST_STUB_RADIOLIB_H
#define HOST_STUB_RADIOLIB_H
#include <stddef.h>
#include <stdint.h>
#define RADIOLIB_ERR_NONE 0
#define RADIOLIB_ERR_INVALID_BANDWIDTH (-8)
#define RADIOLIB_ERR_INVALID_SPREADING_FACTOR (-9)
#define RADIOLIB_ERR_INVALID_FREQUENCY (-12)
class Module {
public:
    Module(uint32_t, uint32_t, uint32_t, uint32_t) {}
};
class SX1262 {
public:
    SX1262(Module *) {}
    int16_t begin(float, float, uint8_t) { return RADIOLIB_ERR_NONE; }
    void setPacketReceivedAction(void (*)(void)) {}
    int16_t startReceive() { return RADIOLIB_ERR_NONE; }
    size_t getPacketLength(bool = true) { return 0; }
    int16_t readData(uint8_t *, size_t) { return RADIOLIB_ERR_NONE; }
    float getRSSI() { return 0; }
    float getSNR() { return 0; }
    int16_t setFrequency(float) { return RADIOLIB_ERR_NONE; }
    int16_t setSpreadingFactor(uint8_t) { return RADIOLIB_ERR_NONE; }
    int16_t setBandwidth(float) { return RADIOLIB_ERR_NONE; }
};
#endif
