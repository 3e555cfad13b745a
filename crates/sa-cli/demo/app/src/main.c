#include <stdio.h>

#include <greet/greet.h>

#include "args.h"
#include "banner.h"
#include "report.h"

int main(int argc, char **argv)
{
    struct options opts;
    if (parse_args(argc, argv, &opts) != 0) {
        fprintf(stderr, "usage: hello [-l] [-w WIDTH] NAME\n");
        return 2;
    }
    banner("hello");
    return report(&opts) > 0 ? 0 : 1;
}
