#include "app/src/app.h"
#include "greet/greet.h"
int app_total(int n) { return greet_mix(n, 2); }
