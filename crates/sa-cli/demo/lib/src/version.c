#include <greet/version.h>

#define STR2(x) #x
#define STR(x) STR2(x)

const char *greet_version(void)
{
    return STR(GREET_VERSION_MAJOR) "." STR(GREET_VERSION_MINOR);
}
