/*
 * variant.c - a minimal plugin whose descriptor the loader tests bend one
 * field at a time with -D options, to check each refusal:
 *
 *   -DV_NAME='"x"'        the plugin name (default "variant")
 *   -DV_COMMAND='"x"'     its one command (default "variant")
 *   -DV_MAGIC=N           the magic number
 *   -DV_MAJOR=N           abi_major
 *   -DV_SIZE=N            the size field
 *   -DV_MINOR=N           abi_minor (with V_SIZE=SOCKD_PLUGIN_SIZE_1_0: a 1.0 plugin)
 *   -DV_INLINE='"x"'      list that command in inline_commands (ABI 1.1)
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
#ifndef V_MINOR
#define V_MINOR SOCKD_ABI_MINOR
#endif
#ifndef V_INIT_RESULT
#define V_INIT_RESULT SOCKD_OK
#endif

static const sockd_host *host;

static int32_t v_init(const sockd_host *h, sockd_str config, void **state) {
    (void)config;
    host = h;
    *state = NULL;
    return V_INIT_RESULT;
}

#ifndef V_NULL_HANDLE
/* Answers "read N": what a read that may wait 2 s returned (0 at EOF on a
 * call thread, -SOCKD_E_WOULD_BLOCK on an inline call). */
static int32_t v_handle(void *state, const sockd_call *call) {
    (void)state;
    uint8_t stream = 0, buf[16];
    int64_t n = host->read(call->channel, &stream, buf, sizeof buf, 2000);
    char text[32] = "read ";
    int len = 5;
    if (n < 0) {
        text[len++] = '-';
        n = -n;
    }
    char digits[24];
    int d = 0;
    do {
        digits[d++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (d > 0) text[len++] = digits[--d];
    text[len++] = '\n';
    return host->write(call->channel, SOCKD_STREAM_MAIN, (const uint8_t *)text, (size_t)len) == 0
               ? SOCKD_OK
               : SOCKD_E_INTERNAL;
}
#endif

#ifdef V_NO_COMMANDS
static const char *const commands[] = {NULL};
#else
static const char *const commands[] = {V_COMMAND, NULL};
#endif

#ifdef V_INLINE
static const char *const inline_commands[] = {V_INLINE, NULL};
#endif

static const sockd_plugin descriptor = {
    .magic = V_MAGIC,
    .size = V_SIZE,
    .abi_major = V_MAJOR,
    .abi_minor = V_MINOR,
    .name = V_NAME,
    .version = "0.0.1",
    .commands = commands,
    .init = v_init,
#ifdef V_NULL_HANDLE
    .handle = NULL,
#else
    .handle = v_handle,
#endif
#ifdef V_INLINE
    .inline_commands = inline_commands,
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
