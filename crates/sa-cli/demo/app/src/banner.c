#include <stdio.h>

#include <greet/greet.h>
#include <greet/version.h>

#include "banner.h"

void banner(const char *program)
{
    printf("%s (libgreet %s, greetings up to %d bytes)\n", program, greet_version(), GREET_MAX);
}
