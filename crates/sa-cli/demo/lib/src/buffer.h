#ifndef GREET_BUFFER_H
#define GREET_BUFFER_H

#include <stddef.h>

struct greet_buffer {
    char *data;
    size_t len;
    size_t cap;
};

void greet_buffer_append(struct greet_buffer *b, const char *text);

#endif
