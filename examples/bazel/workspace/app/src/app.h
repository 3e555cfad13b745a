#ifndef APP_H
#define APP_H
int app_args(int argc);
int app_banner(void);
int app_total(int n);
int app_limit(int n);
int app_report(const char *name);
#endif
