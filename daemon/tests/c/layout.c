/*
 * layout.c - prints the size and offsets of every type in sockd_plugin.h
 * and the value of every constant, one "name value" line each, for the
 * abi_layout test to compare with the Rust mirror in sockd_plugin::sys.
 */
#include <inttypes.h>
#include <stdio.h>

#include "sockd_plugin.h"

#define SIZE(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define ALIGN(t) printf("alignof %s %zu\n", #t, _Alignof(t))
#define OFF(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(t, f))
#define CONST(c) printf("const %s %" PRId64 "\n", #c, (int64_t)(c))

int main(void) {
    SIZE(sockd_str);
    ALIGN(sockd_str);
    OFF(sockd_str, ptr);
    OFF(sockd_str, len);

    SIZE(sockd_call);
    ALIGN(sockd_call);
    OFF(sockd_call, size);
    OFF(sockd_call, channel);
    OFF(sockd_call, session_id);
    OFF(sockd_call, user);
    OFF(sockd_call, home);
    OFF(sockd_call, command);
    OFF(sockd_call, argc);
    OFF(sockd_call, argv);
    OFF(sockd_call, peer);
    OFF(sockd_call, flags);

    SIZE(sockd_host);
    ALIGN(sockd_host);
    OFF(sockd_host, size);
    OFF(sockd_host, abi_major);
    OFF(sockd_host, abi_minor);
    OFF(sockd_host, log);
    OFF(sockd_host, read);
    OFF(sockd_host, write);
    OFF(sockd_host, try_write);
    OFF(sockd_host, write_eof);
    OFF(sockd_host, is_cancelled);
    OFF(sockd_host, set_result);
    OFF(sockd_host, subscribe);
    OFF(sockd_host, push_user);
    OFF(sockd_host, user_online);
    OFF(sockd_host, finish);
    OFF(sockd_host, wake);
    CONST(SOCKD_HOST_SIZE_1_1);

    SIZE(sockd_plugin);
    ALIGN(sockd_plugin);
    OFF(sockd_plugin, magic);
    OFF(sockd_plugin, size);
    OFF(sockd_plugin, abi_major);
    OFF(sockd_plugin, abi_minor);
    OFF(sockd_plugin, name);
    OFF(sockd_plugin, version);
    OFF(sockd_plugin, commands);
    OFF(sockd_plugin, init);
    OFF(sockd_plugin, configure);
    OFF(sockd_plugin, handle);
    OFF(sockd_plugin, session_closed);
    OFF(sockd_plugin, shutdown);
    OFF(sockd_plugin, inline_commands);
    OFF(sockd_plugin, on_input);
    CONST(SOCKD_PLUGIN_SIZE_1_0);
    CONST(SOCKD_PLUGIN_SIZE_1_1);

    /* The magic does not fit an int64_t comparison as a negative; print it
     * as unsigned hex separately. */
    printf("magic %" PRIx64 "\n", (uint64_t)SOCKD_PLUGIN_MAGIC);
    printf("entry %s\n", SOCKD_PLUGIN_ENTRY_SYMBOL);
    CONST(SOCKD_ABI_MAJOR);
    CONST(SOCKD_ABI_MINOR);
    CONST(SOCKD_OK);
    CONST(SOCKD_E_RATE_LIMITED);
    CONST(SOCKD_E_UNAVAILABLE);
    CONST(SOCKD_E_BAD_REQUEST);
    CONST(SOCKD_E_PERMISSION_DENIED);
    CONST(SOCKD_E_NOT_FOUND);
    CONST(SOCKD_E_ALREADY_EXISTS);
    CONST(SOCKD_E_NOT_A_DIRECTORY);
    CONST(SOCKD_E_IS_A_DIRECTORY);
    CONST(SOCKD_E_QUOTA_EXCEEDED);
    CONST(SOCKD_E_NO_SPACE);
    CONST(SOCKD_E_NAME_TOO_LONG);
    CONST(SOCKD_E_TOO_LARGE);
    CONST(SOCKD_E_TIMEOUT);
    CONST(SOCKD_E_CANCELLED);
    CONST(SOCKD_E_BUSY);
    CONST(SOCKD_E_INTERNAL);
    CONST(SOCKD_E_CONFLICT);
    CONST(SOCKD_E_DIRECTORY_NOT_EMPTY);
    CONST(SOCKD_E_WOULD_BLOCK);
    CONST(SOCKD_E_CLOSED);
    CONST(SOCKD_E_PANICKED);
    CONST(SOCKD_PENDING);
    CONST(SOCKD_RUN_ON_THREAD);
    CONST(SOCKD_CALL_INLINE);
    CONST(SOCKD_STREAM_MAIN);
    CONST(SOCKD_STREAM_DIAG);
    CONST(SOCKD_STREAM_CONTROL);
    CONST(SOCKD_LOG_ERROR);
    CONST(SOCKD_LOG_WARN);
    CONST(SOCKD_LOG_INFO);
    CONST(SOCKD_LOG_DEBUG);
    return 0;
}
