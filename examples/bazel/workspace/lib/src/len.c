#include "greet/greet.h"
int greet_len(const char *name) { int n = 0; while (name[n] && n < GREET_MAX) n++; return n; }
