// Just enough of the Arduino core to build docs/firmware/diffdrive.ino as a Linux program, so the
// reference firmware is tested against the real driver: Serial is stdin/stdout (a pty in the test),
// millis() is CLOCK_MONOTONIC, and pins are no-ops (the firmware reports its speeds in every ack).
#pragma once
#include <poll.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#define HIGH 1
#define LOW 0
#define OUTPUT 1

inline unsigned long millis() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long)ts.tv_sec * 1000UL + (unsigned long)(ts.tv_nsec / 1000000);
}
inline void pinMode(uint8_t, uint8_t) {}
inline void digitalWrite(uint8_t, uint8_t) {}
inline void analogWrite(uint8_t, int) {}
template <class T, class L, class H>
T constrain(T x, L lo, H hi) { return x < lo ? (T)lo : (x > hi ? (T)hi : x); }

struct FakeSerial {
  void begin(long) {}
  int available() {
    pollfd p{0, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (!(p.revents & POLLIN)) exit(0);  // the other end hung up: the cable is gone
    return 1;
  }
  int read() {
    unsigned char c;
    if (::read(0, &c, 1) != 1) exit(0);
    return c;
  }
  void print(const char *s) {
    if (::write(1, s, strlen(s)) < 0) exit(0);
  }
};
inline FakeSerial Serial;

void setup();
void loop();
int main() {
  setup();
  for (;;) {
    loop();
    usleep(500);
  }
}
