/* main.c: the `tide` executable. Embeds LuaJIT, points package.path at the
 * Lua modules next to the executable (no environment variables needed), and
 * hands the command line to lua/tide/cli.lua. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* Find the folder holding tide/init.lua: $TIDE_LUA_DIR, <exe>/lua,
 * <exe>/../lua, <exe>/../share/tide/lua. */
static int find_lua_dir(char *out, size_t n) {
  const char *env = getenv("TIDE_LUA_DIR");
  if (env && *env) {
    snprintf(out, n, "%s", env);
    return 0;
  }
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) return -1;
  exe[len] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return -1;
  *slash = '\0';
  static const char *rel[] = {"/lua", "/../lua", "/../share/tide/lua"};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
    char probe[PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s%s/tide/init.lua", exe, rel[i]);
    if (file_exists(probe)) {
      char dir[PATH_MAX + 32];
      snprintf(dir, sizeof dir, "%s%s", exe, rel[i]);
      if (!realpath(dir, out)) {
        size_t dl = strlen(dir);
        if (dl >= n) return -1;
        memcpy(out, dir, dl + 1);
      }
      return 0;
    }
  }
  return -1;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int main(int argc, char **argv) {
  /* The kernels allocate their scratch per call (panels, quantized activation rows: KiB to a few MiB).
   * glibc serves those from fresh mmaps until its adaptive threshold has seen them freed, and gives heap
   * tops back to the system eagerly; after any larger free (a prefill, a benchmark's buffers) the next steps
   * paid for page faults again: decode steps right after one measured 1.2-3x their steady time, and a
   * dsv3-moe-1b q8_0 prefill was ~10% slower. Fixed thresholds keep such scratch on the heap and resident.
   * A setting of this process (the executable), not of the library. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  char luadir[PATH_MAX];
  if (find_lua_dir(luadir, sizeof luadir) != 0) {
    fprintf(stderr, "tide: cannot find the Lua modules (lua/tide/init.lua) next to the executable; "
                    "set TIDE_LUA_DIR\n");
    return 2;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "tide: cannot create a Lua state\n");
    return 2;
  }
  luaL_openlibs(L);

  /* package.path = <luadir>/?.lua;<luadir>/?/init.lua;<old> */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", luadir, luadir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_pushstring(L, luadir);
  lua_setfield(L, -2, "tide_lua_dir");
  lua_pop(L, 1);

  /* arg table as the luajit binary builds it: arg[0] = program */
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");

  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "tide.cli");
  int status = lua_pcall(L, 1, 1, 1);
  int rc = 0;
  if (status == 0) {
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i);
    }
    status = lua_pcall(L, 1, 1, 1);
    if (status == 0) rc = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  }
  if (status != 0) {
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    rc = 1;
  }
  fflush(stdout);
  lua_close(L);
  return rc;
}
