#include "greet/greet.h"
int greet_mix(int a, int b) { return greet_sum(greet_scale(a), b); }
