#include "app/src/app.h"
int app_args(int argc) { return argc; }
