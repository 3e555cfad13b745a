#include <stdio.h>

#include <greet/greet.h>
#include <greet/style.h>

#include "report.h"
#include "table.h"

int report(const struct options *opts)
{
    char greeting[GREET_MAX];
    char padded[GREET_MAX];
    greet_format(greeting, opts->name);
    greet_style_apply(greeting, opts->loud ? GREET_LOUD : GREET_PLAIN);
    greet_pad(padded, greeting, (size_t)opts->width);
    table_row("greeting", padded);
    table_rule(opts->width);
    return printf("%s\n", padded);
}
