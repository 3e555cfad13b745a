#ifndef GREET_VERSION_H
#define GREET_VERSION_H

#define GREET_VERSION_MAJOR 1
#define GREET_VERSION_MINOR 4

/* "MAJOR.MINOR" */
const char *greet_version(void);

#endif
