#ifndef HELLO_ARGS_H
#define HELLO_ARGS_H

struct options {
    const char *name;
    int loud;
    int width;
};

/* Reads -l (loud), -w WIDTH and a name from argv; returns 0 on success. */
int parse_args(int argc, char **argv, struct options *opts);

#endif
