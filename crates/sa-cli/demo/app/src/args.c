#include <string.h>

#include "args.h"
#include "util.h"

int parse_args(int argc, char **argv, struct options *opts)
{
    opts->name = "world";
    opts->loud = 0;
    opts->width = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-l") == 0)
            opts->loud = 1;
        else if (strcmp(argv[i], "-w") == 0 && i + 1 < argc)
            opts->width = parse_int(argv[++i], 0);
        else if (argv[i][0] == '-')
            return 1;
        else
            opts->name = argv[i];
    }
    return 0;
}
