#include "repl.h"

#include <editline/readline.h>
#include <stdlib.h>
#include <unistd.h>

char *tide_repl_readline(const char *prompt) { return readline(prompt); }
void tide_repl_free(char *line) { free(line); }
void tide_repl_add_history(const char *line) {
  if (line && *line) add_history(line);
}
int tide_repl_history_load(const char *path) { return read_history(path) == 0 ? 0 : -1; }
int tide_repl_history_save(const char *path) { return write_history(path) == 0 ? 0 : -1; }
int tide_repl_isatty(void) { return isatty(0); }
