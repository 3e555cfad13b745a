#include "greet/greet.h"
int greet_scale(int x) { return x * 2; }
