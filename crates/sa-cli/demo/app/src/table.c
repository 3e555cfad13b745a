#include <stdio.h>

#include "table.h"
#include "util.h"

void table_row(const char *left, const char *right)
{
    printf("%-12s| %s\n", left, right);
}

void table_rule(int width)
{
    for (int i = 0; i < max_int(width, 12) + 14; i++)
        putchar('-');
    putchar('\n');
}
