#include "greet/greet.h"
int greet_sum(int a, int b) { return a + b; }
