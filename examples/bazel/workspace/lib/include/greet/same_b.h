/* shared limits */
#define GREET_MAX 64
