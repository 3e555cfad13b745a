#ifndef HELLO_BANNER_H
#define HELLO_BANNER_H

/* Prints a banner line naming the program and the library version. */
void banner(const char *program);

#endif
