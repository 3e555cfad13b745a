#include <greet/greet.h>

#include "buffer.h"

size_t greet_format(char *out, const char *name)
{
    struct greet_buffer b = { out, 0, GREET_MAX };
    out[0] = '\0';
    greet_buffer_append(&b, "Hello, ");
    greet_buffer_append(&b, name);
    greet_buffer_append(&b, "!");
    return b.len;
}
