#ifndef HELLO_TABLE_H
#define HELLO_TABLE_H

/* Prints rows of two columns separated by a rule. */
void table_row(const char *left, const char *right);
void table_rule(int width);

#endif
