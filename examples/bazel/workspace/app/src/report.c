#include "app/src/app.h"
#include "greet/greet.h"
int app_report(const char *name) { return greet_len(greet_word(greet_len(name))); }
