#include "app/src/app.h"
#include "greet/greet.h"
/* Build 3: the application clamps below its maximum. */
int app_limit(int n) { return greet_clamp(n, 1, GREET_MAX - 1); }
