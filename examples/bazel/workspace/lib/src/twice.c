#include "greet/greet.h"
int greet_twice(int x) { return greet_scale(greet_scale(x)); }
