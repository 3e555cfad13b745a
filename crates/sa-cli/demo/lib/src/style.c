#include <ctype.h>

#include <greet/style.h>

void greet_style_apply(char *text, enum greet_style style)
{
    for (; *text != '\0'; text++) {
        if (style == GREET_LOUD)
            *text = (char)toupper((unsigned char)*text);
        else if (style == GREET_QUIET)
            *text = (char)tolower((unsigned char)*text);
    }
}
