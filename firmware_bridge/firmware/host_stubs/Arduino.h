/* Host stand-in for Arduino.h: just enough to syntax-check bridge_board.ino with g++. */
#ifndef HOST_STUB_ARDUINO_H
#define HOST_STUB_ARDUINO_H
#include <stddef.h>
#include <stdint.h>
struct HostSerial {
    void begin(unsigned long) {}
    int available() { return 0; }
    int read() { return -1; }
    size_t write(const uint8_t *, size_t n) { return n; }
};
extern HostSerial Serial;
inline void delay(unsigned long) {}
#endif
