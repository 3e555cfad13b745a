#include "app/src/app.h"
#include "greet/greet.h"
int app_limit(int n) { return greet_clamp(n, 0, GREET_MAX); }
