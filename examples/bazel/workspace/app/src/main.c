#include <stdio.h>
#include "app/src/app.h"
#include "version.h"
int main(int argc, char **argv) {
    (void)argv;
    printf("app %s: %d\n", APP_VERSION, app_total(app_args(argc)) + app_banner());
    return 0;
}
