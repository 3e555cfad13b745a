#include "greet/greet.h"
const char *greet_word(int n) { return n > 3 ? "hello" : "hi"; }
