#ifndef GREET_STYLE_H
#define GREET_STYLE_H

enum greet_style { GREET_PLAIN, GREET_LOUD, GREET_QUIET };

/* Applies a style to text in place. */
void greet_style_apply(char *text, enum greet_style style);

#endif
