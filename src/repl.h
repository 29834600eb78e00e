/* repl.h: line editing and history for the interactive REPL (libedit). */
#ifndef TIDE_REPL_H
#define TIDE_REPL_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif

/* Read a line with editing. Returns a malloc'd string (free with
 * tide_repl_free) or NULL at end of input (Ctrl-D). */
char *tide_repl_readline(const char *prompt);
void tide_repl_free(char *line);
void tide_repl_add_history(const char *line);
/* Load/save history from/to a file; 0 or -1. */
int tide_repl_history_load(const char *path);
int tide_repl_history_save(const char *path);
/* 1 when stdin is a terminal. */
int tide_repl_isatty(void);

#endif
