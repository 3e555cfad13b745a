#ifndef GREET_INTERNAL_H
#define GREET_INTERNAL_H

#include <stddef.h>

/* Copies at most cap - 1 bytes of src to out and terminates it; returns the length. */
size_t greet_copy(char *out, const char *src, size_t cap);

#endif
