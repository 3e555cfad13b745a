#include "greet/greet.h"
int greet_clamp(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }
