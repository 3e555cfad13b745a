#ifndef GREET_H
#define GREET_H
#include "greet/same_a.h"
#include "greet/same_b.h"

/* Build 4: the interface, again: every compile reads it. */
int greet_len(const char *name);
const char *greet_word(int n);
int greet_sum(int a, int b);
int greet_scale(int x);
int greet_clamp(int x, int lo, int hi);
int greet_mix(int a, int b);
#endif
