/* shared limits */
#define GREET_MAX 128
