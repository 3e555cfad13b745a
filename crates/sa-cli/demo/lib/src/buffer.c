#include "buffer.h"
#include "internal.h"

void greet_buffer_append(struct greet_buffer *b, const char *text)
{
    if (b->len + 1 >= b->cap)
        return;
    b->len += greet_copy(b->data + b->len, text, b->cap - b->len);
}

size_t greet_copy(char *out, const char *src, size_t cap)
{
    size_t i = 0;
    for (; src[i] != '\0' && i + 1 < cap; i++)
        out[i] = src[i];
    out[i] = '\0';
    return i;
}
