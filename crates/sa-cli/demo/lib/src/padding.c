#include <greet/greet.h>

#include "internal.h"

size_t greet_pad(char *out, const char *text, size_t width)
{
    size_t len = greet_copy(out, text, GREET_MAX);
    while (len < width && len + 1 < GREET_MAX)
        out[len++] = ' ';
    out[len] = '\0';
    return len;
}
