#ifndef HELLO_UTIL_H
#define HELLO_UTIL_H

/* Parses a decimal number; returns fallback on anything else. */
int parse_int(const char *text, int fallback);

/* The larger of a and b. */
int max_int(int a, int b);

#endif
