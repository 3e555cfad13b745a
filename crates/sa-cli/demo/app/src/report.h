#ifndef HELLO_REPORT_H
#define HELLO_REPORT_H

#include "args.h"

/* Prints the greeting for opts; returns the number of bytes printed. */
int report(const struct options *opts);

#endif
