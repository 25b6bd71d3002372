// reachsafe reference motor-controller firmware (Arduino Uno / Nano / Nano Every, any AVR or ARM
// board with the Arduino core) for a differential-drive robot with an H-bridge such as a TB6612FNG
// or L298N (one PWM pin and two direction pins per motor).
//
// It implements the serial line protocol of docs/deploy.md ("The motor controller protocol"):
//
//   host -> controller   $H,<seq>,<timeout_ms>*XX   hello: stop, set the command timeout
//                        $D,<seq>,<left>,<right>*XX wheel speeds in mm/s; refreshes the timeout
//                        $S,<seq>*XX                stop now
//                        $K,<seq>*XX                keepalive; does NOT refresh the timeout
//   controller -> host   $A,<seq>,<left>,<right>,<flags>*XX   ack with the applied speeds;
//                          flags: 1 = the timeout stopped the motors since the last ack, 2 = fault
//                        $E,<seq>,<reason>*XX       rejected line (seq -1 if unreadable)
//
// XX is the XOR of every character between '$' and '*', as two upper-case hex digits; lines end
// with '\n'. The one safety rule that must survive any edit of this file: if no $D arrived for
// timeout_ms, the motors stop, whatever else happens. Speeds here are open loop (PWM proportional
// to the requested speed); add wheel encoders and a PI loop in setWheel() for closed-loop speed.

#include <Arduino.h>

// ----- wiring and robot constants: edit for your robot ------------------------------------------
const uint8_t LEFT_PWM = 5, LEFT_IN1 = 7, LEFT_IN2 = 8;
const uint8_t RIGHT_PWM = 6, RIGHT_IN1 = 9, RIGHT_IN2 = 10;
const uint8_t STBY = 4;                 // TB6612 standby pin (tie high / unused on an L298N)
const long BAUD = 115200;               // must match drive.baudrate in the robot YAML
const int MAX_SPEED_MM_S = 300;         // wheel speed at full PWM (measure it; >= drive.max_speed_mm_s)
const uint16_t DEFAULT_TIMEOUT_MS = 250;  // until the host's $H sets its own
const uint8_t LINE_MAX = 48;

// ----- state --------------------------------------------------------------------------------------
char line[LINE_MAX + 1];
uint8_t lineLen = 0;
bool overflow = false;
uint16_t timeoutMs = DEFAULT_TIMEOUT_MS;
unsigned long lastDriveMs = 0;
int leftMmS = 0, rightMmS = 0;
uint8_t flags = 0;

void setWheel(uint8_t pwm, uint8_t in1, uint8_t in2, int mmS) {
  mmS = constrain(mmS, -MAX_SPEED_MM_S, MAX_SPEED_MM_S);
  digitalWrite(in1, mmS > 0 ? HIGH : LOW);
  digitalWrite(in2, mmS < 0 ? HIGH : LOW);  // both LOW: coast; use HIGH/HIGH for a hard brake
  analogWrite(pwm, (uint8_t)((long)abs(mmS) * 255 / MAX_SPEED_MM_S));
}

void drive(int left, int right) {
  leftMmS = constrain(left, -MAX_SPEED_MM_S, MAX_SPEED_MM_S);
  rightMmS = constrain(right, -MAX_SPEED_MM_S, MAX_SPEED_MM_S);
  setWheel(LEFT_PWM, LEFT_IN1, LEFT_IN2, leftMmS);
  setWheel(RIGHT_PWM, RIGHT_IN1, RIGHT_IN2, rightMmS);
}

void stopMotors() { drive(0, 0); }

uint8_t xorOf(const char *s, uint8_t n) {
  uint8_t c = 0;
  for (uint8_t i = 0; i < n; i++) c ^= (uint8_t)s[i];
  return c;
}

void reply(const char *body) {
  char out[LINE_MAX + 8];
  snprintf(out, sizeof(out), "$%s*%02X\n", body, xorOf(body, strlen(body)));
  Serial.print(out);
}

void ack(long seq) {
  char body[LINE_MAX];
  snprintf(body, sizeof(body), "A,%ld,%d,%d,%u", seq, leftMmS, rightMmS, flags);
  reply(body);
  flags = 0;
}

void reject(long seq, const char *reason) {
  char body[LINE_MAX];
  snprintf(body, sizeof(body), "E,%ld,%s", seq, reason);
  reply(body);
}

// Parses up to 3 integers after the type letter: "D,12,150,-150" -> n = 3, v = {12, 150, -150}.
uint8_t fields(char *body, long *v, uint8_t maxN) {
  uint8_t n = 0;
  char *p = strchr(body, ',');
  while (p != NULL && n < maxN) {
    char *end;
    v[n++] = strtol(p + 1, &end, 10);
    if (end == p + 1 || (*end != ',' && *end != '\0')) return 255;  // not a number
    p = (*end == ',') ? end : NULL;
  }
  return p == NULL ? n : 255;  // 255: too many fields
}

void handle(char *s, uint8_t n) {
  // s = "$D,12,150,-150*5C" without the newline
  if (n < 5 || s[0] != '$' || s[n - 3] != '*') { reject(-1, "FORMAT"); return; }
  uint8_t sum = (uint8_t)strtol(s + n - 2, NULL, 16);
  s[n - 3] = '\0';
  char *body = s + 1;
  if (xorOf(body, n - 4) != sum) { reject(-1, "CRC"); return; }
  long v[3];
  uint8_t k = fields(body, v, 3);
  if (k == 255 || k == 0) { reject(-1, "FIELDS"); return; }
  switch (body[0]) {
    case 'H':
      if (k != 2 || v[1] < 20 || v[1] > 5000) { reject(v[0], "TIMEOUT"); return; }
      timeoutMs = (uint16_t)v[1];
      stopMotors();
      break;
    case 'D':
      if (k != 3) { reject(v[0], "FIELDS"); return; }
      drive((int)v[1], (int)v[2]);
      lastDriveMs = millis();
      break;
    case 'S':
      stopMotors();
      break;
    case 'K':
      break;  // link alive; deliberately not a motion refresh
    default:
      reject(v[0], "TYPE");
      return;
  }
  ack(v[0]);
}

void setup() {
  pinMode(LEFT_PWM, OUTPUT); pinMode(LEFT_IN1, OUTPUT); pinMode(LEFT_IN2, OUTPUT);
  pinMode(RIGHT_PWM, OUTPUT); pinMode(RIGHT_IN1, OUTPUT); pinMode(RIGHT_IN2, OUTPUT);
  pinMode(STBY, OUTPUT); digitalWrite(STBY, HIGH);
  stopMotors();
  Serial.begin(BAUD);
}

void loop() {
  while (Serial.available() > 0) {
    char c = (char)Serial.read();
    if (c == '\r') continue;
    if (c == '\n') {
      if (!overflow) { line[lineLen] = '\0'; handle(line, lineLen); }
      else reject(-1, "LONG");
      lineLen = 0; overflow = false;
    } else if (lineLen < LINE_MAX) {
      line[lineLen++] = c;
    } else {
      overflow = true;
    }
  }
  // The safety rule: no drive command within the timeout -> stop (and tell the host in the next ack).
  if ((leftMmS != 0 || rightMmS != 0) && millis() - lastDriveMs > timeoutMs) {
    stopMotors();
    flags |= 1;
  }
}
