/*
 * variant.c - a minimal plugin whose descriptor the loader tests bend one
 * field at a time with -D options, to check each refusal:
 *
 *   -DV_NAME='"x"'        the plugin name (default "variant")
 *   -DV_COMMAND='"x"'     its one command (default "variant")
 *   -DV_MAGIC=N           the magic number
 *   -DV_MAJOR=N           abi_major
 *   -DV_SIZE=N            the size field
 *   -DV_NO_COMMANDS       an empty command list
 *   -DV_NULL_HANDLE       no handle function
 *   -DV_INIT_RESULT=N     what init returns
 *   -DV_NO_ENTRY          export the entry point under another name
 */
#include "sockd_plugin.h"

#ifndef V_NAME
#define V_NAME "variant"
#endif
#ifndef V_COMMAND
#define V_COMMAND "variant"
#endif
#ifndef V_MAGIC
#define V_MAGIC SOCKD_PLUGIN_MAGIC
#endif
#ifndef V_MAJOR
#define V_MAJOR SOCKD_ABI_MAJOR
#endif
#ifndef V_SIZE
#define V_SIZE sizeof(sockd_plugin)
#endif
#ifndef V_INIT_RESULT
#define V_INIT_RESULT SOCKD_OK
#endif

static int32_t v_init(const sockd_host *host, sockd_str config, void **state) {
    (void)host;
    (void)config;
    *state = NULL;
    return V_INIT_RESULT;
}

#ifndef V_NULL_HANDLE
static int32_t v_handle(void *state, const sockd_call *call) {
    (void)state;
    (void)call;
    return SOCKD_OK;
}
#endif

#ifdef V_NO_COMMANDS
static const char *const commands[] = {NULL};
#else
static const char *const commands[] = {V_COMMAND, NULL};
#endif

static const sockd_plugin descriptor = {
    .magic = V_MAGIC,
    .size = V_SIZE,
    .abi_major = V_MAJOR,
    .abi_minor = SOCKD_ABI_MINOR,
    .name = V_NAME,
    .version = "0.0.1",
    .commands = commands,
    .init = v_init,
#ifdef V_NULL_HANDLE
    .handle = NULL,
#else
    .handle = v_handle,
#endif
};

#ifdef V_NO_ENTRY
const sockd_plugin *sockd_plugin_entry_misspelt(void) {
    return &descriptor;
}
#else
const sockd_plugin *sockd_plugin_entry(void) {
    return &descriptor;
}
#endif
