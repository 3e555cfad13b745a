#include "app/src/app.h"
#include "greet/greet.h"
#include "version.h"
int app_banner(void) { return greet_len(APP_VERSION); }
