/*
 * sockd_plugin.h - the sockd handler ABI, version 1.2.
 *
 * A plugin is a shared library exporting one symbol, sockd_plugin_entry,
 * which returns a pointer to a static sockd_plugin descriptor. The daemon
 * checks the descriptor (magic, size, ABI version, name) before it calls
 * anything else, then calls init() with a table of host functions.
 *
 * Threading: every call to handle() runs on its own thread and may block,
 * except calls of the commands listed in inline_commands (ABI 1.1), which
 * run on the connection's own task and must not block (see docs/PLUGINS.md).
 * An inline handle() may return SOCKD_PENDING (ABI 1.2): the call stays
 * open and on_input() serves it on the connection's task as input arrives.
 * Host functions are thread-safe and may be called from any thread.
 *
 * Memory: everything the host passes in (strings, the call, the host table)
 * is borrowed; calls and their strings are valid until handle() returns, the
 * host table for the life of the process. Everything the plugin passes to a
 * host function is borrowed for the duration of that call only. Nothing is
 * ever freed across the boundary. The descriptor and the strings it points
 * to must stay valid for as long as the library is loaded.
 *
 * Versioning: a new minor version only appends fields to the end of
 * sockd_host, sockd_plugin and sockd_call; a plugin checks host->size (and
 * call->size) before using a field newer than the minor it was built for.
 * A major bump breaks the ABI.
 *
 * See docs/PLUGINS.md for the guide.
 */
#ifndef SOCKD_PLUGIN_H
#define SOCKD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SOCKD_PLUGIN_MAGIC UINT64_C(0x314c50444b434f53) /* "SOCKDPL1" little-endian */
#define SOCKD_ABI_MAJOR 1
#define SOCKD_ABI_MINOR 2
#define SOCKD_PLUGIN_ENTRY_SYMBOL "sockd_plugin_entry"

/* Status codes: the wire protocol's error codes (docs/PROTOCOL.md).
 * handle() returns one; host functions return 0 or a negated one. */
#define SOCKD_OK 0
#define SOCKD_E_UNAVAILABLE 8
#define SOCKD_E_BAD_REQUEST 10
#define SOCKD_E_PERMISSION_DENIED 11
#define SOCKD_E_NOT_FOUND 12
#define SOCKD_E_ALREADY_EXISTS 13
#define SOCKD_E_NOT_A_DIRECTORY 14
#define SOCKD_E_IS_A_DIRECTORY 15
#define SOCKD_E_QUOTA_EXCEEDED 16
#define SOCKD_E_NO_SPACE 17
#define SOCKD_E_NAME_TOO_LONG 18
#define SOCKD_E_TOO_LARGE 19
#define SOCKD_E_TIMEOUT 20
#define SOCKD_E_CANCELLED 21
#define SOCKD_E_BUSY 22
#define SOCKD_E_INTERNAL 23
#define SOCKD_E_CONFLICT 24
#define SOCKD_E_DIRECTORY_NOT_EMPTY 27
#define SOCKD_E_RATE_LIMITED 6
/* Host-only results, never sent on the wire. */
#define SOCKD_E_WOULD_BLOCK 100 /* try_write: the client's window is full */
#define SOCKD_E_CLOSED 101      /* the channel is gone or was never valid */
#define SOCKD_E_PANICKED 102    /* returned by the Rust SDK when a handler panicked */
/* ABI 1.2: statuses an inline handle() (or on_input()) may return. */
#define SOCKD_PENDING 103       /* keep the call open; on_input() serves it */
#define SOCKD_RUN_ON_THREAD 104 /* inline handle(): run this call on a call thread instead */

/* ABI 1.2: sockd_call.flags. */
#define SOCKD_CALL_INLINE 1u /* handle() runs on the connection's task */

/* Well-known streams within a channel. */
#define SOCKD_STREAM_MAIN 0    /* stdout, file data, command input */
#define SOCKD_STREAM_DIAG 1    /* stderr */
#define SOCKD_STREAM_CONTROL 2 /* the command's own structured messages */

/* Log levels. */
#define SOCKD_LOG_ERROR 1
#define SOCKD_LOG_WARN 2
#define SOCKD_LOG_INFO 3
#define SOCKD_LOG_DEBUG 4

/* Borrowed bytes, not NUL-terminated. */
typedef struct sockd_str {
    const uint8_t *ptr;
    size_t len;
} sockd_str;

/* One command invocation, valid until handle() returns. */
typedef struct sockd_call {
    uint32_t size;        /* sizeof(sockd_call) as the host built it */
    uint64_t channel;     /* handle for the channel functions below */
    uint64_t session_id;  /* the authenticated session this call belongs to */
    sockd_str user;       /* authenticated user name */
    sockd_str home;       /* the user's home directory (absolute; may not exist yet) */
    sockd_str command;    /* the command name the client opened */
    size_t argc;
    const sockd_str *argv; /* argc arguments (arbitrary bytes) */
    sockd_str peer;        /* client address, "ip:port" */
    /* ---- ABI 1.2 (check size first) ---- */
    uint32_t flags; /* SOCKD_CALL_INLINE when handle() runs on the connection's task */
} sockd_call;

/* Services the daemon offers, one table per loaded plugin. */
typedef struct sockd_host {
    uint32_t size; /* sizeof(sockd_host) as the host built it */
    uint16_t abi_major;
    uint16_t abi_minor;

    /* Log through the daemon's logger, tagged with the plugin's name. */
    void (*log)(const struct sockd_host *host, uint32_t level, const uint8_t *msg, size_t len);

    /* Read the next input on a channel into buf. Blocks up to timeout_ms
     * (-1: no limit; 0: do not block). Returns the byte count (> 0) and sets
     * *stream; returns 0 with *stream set when the client ended that stream;
     * returns -SOCKD_E_TIMEOUT, -SOCKD_E_CANCELLED (client cancelled or went
     * away) or -SOCKD_E_CLOSED. A frame larger than cap is returned in parts. */
    int64_t (*read)(uint64_t channel, uint8_t *stream, uint8_t *buf, size_t cap, int64_t timeout_ms);

    /* Write len bytes on a stream. Blocks while the client's window is full
     * (backpressure). Returns 0, -SOCKD_E_CANCELLED or -SOCKD_E_CLOSED. */
    int32_t (*write)(uint64_t channel, uint8_t stream, const uint8_t *data, size_t len);

    /* Like write, but all or nothing and never blocks: -SOCKD_E_WOULD_BLOCK
     * when the client's window cannot take len bytes now. */
    int32_t (*try_write)(uint64_t channel, uint8_t stream, const uint8_t *data, size_t len);

    /* Tell the client that a stream has ended. */
    int32_t (*write_eof)(uint64_t channel, uint8_t stream);

    /* Nonzero once the client cancelled the call or disconnected. */
    int32_t (*is_cancelled)(uint64_t channel);

    /* Attach a value (for example an exit status) and a message to the
     * CLOSE frame sent when handle() returns. */
    int32_t (*set_result)(uint64_t channel, int64_t value, const uint8_t *msg, size_t len);

    /* Make this channel a push target: push_user() reaches it. */
    int32_t (*subscribe)(uint64_t channel);

    /* Deliver data to every subscribed channel of this plugin (any build)
     * whose session belongs to user, without blocking. Returns how many
     * channels took it; *full (may be NULL) receives how many were skipped
     * because their window was full. */
    int64_t (*push_user)(const struct sockd_host *host, const uint8_t *user, size_t user_len, uint8_t stream,
                         const uint8_t *data, size_t len, uint64_t *full);

    /* Nonzero if user has at least one live authenticated session. */
    int32_t (*user_online)(const uint8_t *user, size_t user_len);

    /* ---- ABI 1.2 (check size first) ---- */

    /* End a pending call (one whose inline handle() returned SOCKD_PENDING)
     * with status, as if handle() had returned it; from any thread. Exactly
     * once: returns 0 if this ended the call, -SOCKD_E_CLOSED if it had
     * already ended (finished, failed, or cancelled by the client), and
     * -SOCKD_E_BAD_REQUEST for a call that is not pending. */
    int32_t (*finish)(uint64_t channel, int32_t status);

    /* Run a pending call's on_input() now, on the calling thread, although
     * nothing arrived (say, a thread of yours made room for more input);
     * if it is running elsewhere it runs once more when it returns. Never
     * call it holding a lock your on_input() takes. Returns 0,
     * -SOCKD_E_CLOSED (the call ended) or -SOCKD_E_BAD_REQUEST (not
     * pending). */
    int32_t (*wake)(uint64_t channel);
} sockd_host;

/* sizeof(sockd_host) in ABI 1.0 and 1.1, before finish was appended. */
#define SOCKD_HOST_SIZE_1_1 offsetof(sockd_host, finish)

/* What a plugin exports through sockd_plugin_entry(). */
typedef struct sockd_plugin {
    uint64_t magic; /* SOCKD_PLUGIN_MAGIC */
    uint32_t size;  /* sizeof(sockd_plugin) */
    uint16_t abi_major;
    uint16_t abi_minor;
    const char *name;             /* NUL-terminated; [a-z0-9_-]{1,32} */
    const char *version;          /* NUL-terminated, e.g. "1.2.0" */
    const char *const *commands;  /* NULL-terminated list of command names */

    /* Called once per loaded build, before any other function. config is
     * the plugin's [plugins.NAME] table from sockd.toml as TOML text. Store
     * host for later use; set *state. Return SOCKD_OK or an error code. */
    int32_t (*init)(const sockd_host *host, sockd_str config, void **state);

    /* Called on reload with the new config. May be NULL. */
    int32_t (*configure)(void *state, sockd_str config);

    /* Serve one call on its own thread. May block. Return SOCKD_OK or an
     * error code; the host then sends CLOSE to the client. */
    int32_t (*handle)(void *state, const sockd_call *call);

    /* A session ended: drop its per-session state. May be NULL. */
    void (*session_closed)(void *state, uint64_t session_id);

    /* The daemon stops using this build (shutdown, or a newer build was
     * loaded and the last call of this one finished). May be NULL. */
    void (*shutdown)(void *state);

    /* ---- ABI 1.1 ---- */

    /* NULL, or a NULL-terminated list of commands (each one also listed in
     * commands) whose calls the host runs inline, on the connection's own
     * task, with no thread hand-off. Their handle() must return promptly
     * and never block: on an inline call read() with a timeout other than 0
     * returns -SOCKD_E_WOULD_BLOCK, and write() never waits (it behaves as
     * try_write()). The call ends when handle() returns. */
    const char *const *inline_commands;

    /* ---- ABI 1.2 ---- */

    /* NULL, or: serves a pending call (its inline handle() returned
     * SOCKD_PENDING). Called on the connection's task, never concurrently
     * for one call, whenever something arrived for it: input (DATA, EOF),
     * cancellation (the client's CLOSE or disconnect) or credit. Drain the
     * input with read(timeout 0); the same no-blocking rules as handle().
     * Return SOCKD_PENDING to keep the call open, or a status to end it. */
    int32_t (*on_input)(void *state, uint64_t channel);
} sockd_plugin;

/* sizeof(sockd_plugin) in ABI 1.0, before inline_commands was appended. */
#define SOCKD_PLUGIN_SIZE_1_0 offsetof(sockd_plugin, inline_commands)
/* sizeof(sockd_plugin) in ABI 1.1, before on_input was appended. */
#define SOCKD_PLUGIN_SIZE_1_1 offsetof(sockd_plugin, on_input)

typedef const sockd_plugin *(*sockd_plugin_entry_fn)(void);

/* The one exported symbol. */
const sockd_plugin *sockd_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* SOCKD_PLUGIN_H */
