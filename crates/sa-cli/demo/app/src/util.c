#include <stdlib.h>

#include "util.h"

int parse_int(const char *text, int fallback)
{
    char *end;
    long value = strtol(text, &end, 10);
    return (*end == '\0' && end != text && value >= 0 && value < 1000) ? (int)value : fallback;
}

int max_int(int a, int b)
{
    return a > b ? a : b;
}
