#ifndef GREET_GREET_H
#define GREET_GREET_H

#include <stddef.h>

/* The longest greeting greet_format writes, terminator included. */
#define GREET_MAX 64

/* Writes "Hello, NAME!" into out (at most GREET_MAX bytes); returns its length. */
size_t greet_format(char *out, const char *name);

/* Pads text with spaces to width columns in out (at most GREET_MAX bytes). */
size_t greet_pad(char *out, const char *text, size_t width);

#endif
