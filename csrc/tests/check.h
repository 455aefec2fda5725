// A minimal assertion for the native tests: count and report, keep going.
#pragma once

#include <cstdio>

inline int& check_failures() {
  static int failures = 0;
  return failures;
}

#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) {                                                  \
      ++check_failures();                                           \
      std::printf("FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                     \
      std::printf("\n");                                            \
    }                                                               \
  } while (0)

// The exit status of a test program.
inline int check_report() {
  std::printf("%s (%d failures)\n", check_failures() ? "FAILED" : "OK", check_failures());
  return check_failures() ? 1 : 0;
}
