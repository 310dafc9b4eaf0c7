/*
 * upper.c - the example C plugin for sockd.
 *
 * One command, `upper`: answers its arguments (joined by spaces, ending in a
 * newline) upper-cased, then every input frame upper-cased on the stream it
 * came on, until the client ends stream 0.
 *
 * Build:
 *   cc -shared -fPIC -O2 -Wall -Wextra -Werror -I plugins/sdk/include \
 *      -o libsockd_upper.so plugins/examples/upper.c
 * Configure (sockd.toml):
 *   [plugins.upper]
 *   file = "libsockd_upper.so"
 *
 * See docs/PLUGINS.md for the walkthrough.
 */
#include "sockd_plugin.h"

/* The host table from init. One build has one host table, valid for the life
 * of the process, so a file-scope pointer is enough. */
static const sockd_host *host;

static void log_msg(uint32_t level, const char *msg) {
    size_t len = 0;
    while (msg[len] != '\0') {
        len++;
    }
    host->log(host, level, (const uint8_t *)msg, len);
}

static void to_upper(uint8_t *buf, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (buf[i] >= 'a' && buf[i] <= 'z') {
            buf[i] = (uint8_t)(buf[i] - 'a' + 'A');
        }
    }
}

/* Maps a negative host result to the status handle() returns: the host
 * functions return negated codes, handle() returns positive ones. */
static int32_t status(int64_t rc) {
    if (rc == -SOCKD_E_CLOSED) {
        return SOCKD_E_CANCELLED;
    }
    return (int32_t)-rc;
}

static int32_t upper_init(const sockd_host *h, sockd_str config, void **state) {
    (void)config; /* upper has no settings */
    if (h->abi_major != SOCKD_ABI_MAJOR) {
        return SOCKD_E_INTERNAL;
    }
    host = h;
    *state = NULL; /* no per-build state */
    log_msg(SOCKD_LOG_INFO, "upper ready");
    return SOCKD_OK;
}

static int32_t upper_handle(void *state, const sockd_call *call) {
    uint8_t buf[16384];
    uint64_t ch = call->channel;
    int32_t rc;
    (void)state;

    /* The arguments, joined by spaces, as one line. */
    for (size_t i = 0; i < call->argc; i++) {
        size_t done = 0;
        if (i > 0 && (rc = host->write(ch, SOCKD_STREAM_MAIN, (const uint8_t *)" ", 1)) != 0) {
            return status(rc);
        }
        /* Copy into our own buffer: the arguments are borrowed read-only. */
        while (done < call->argv[i].len) {
            size_t n = call->argv[i].len - done;
            if (n > sizeof buf) {
                n = sizeof buf;
            }
            for (size_t j = 0; j < n; j++) {
                buf[j] = call->argv[i].ptr[done + j];
            }
            to_upper(buf, n);
            if ((rc = host->write(ch, SOCKD_STREAM_MAIN, buf, n)) != 0) {
                return status(rc);
            }
            done += n;
        }
    }
    if (call->argc > 0 && (rc = host->write(ch, SOCKD_STREAM_MAIN, (const uint8_t *)"\n", 1)) != 0) {
        return status(rc);
    }

    /* Then every input frame until the client ends stream 0. */
    for (;;) {
        uint8_t stream = 0;
        int64_t n = host->read(ch, &stream, buf, sizeof buf, -1);
        if (n < 0) {
            return status(n);
        }
        if (n == 0) {
            if (stream == SOCKD_STREAM_MAIN) {
                break;
            }
            continue; /* another stream ended; keep reading */
        }
        to_upper(buf, (size_t)n);
        if ((rc = host->write(ch, stream, buf, (size_t)n)) != 0) {
            return status(rc);
        }
    }
    host->write_eof(ch, SOCKD_STREAM_MAIN);
    return SOCKD_OK;
}

static const char *const commands[] = {"upper", NULL};

static const sockd_plugin descriptor = {
    .magic = SOCKD_PLUGIN_MAGIC,
    .size = sizeof(sockd_plugin),
    .abi_major = SOCKD_ABI_MAJOR,
    .abi_minor = SOCKD_ABI_MINOR,
    .name = "upper",
    .version = "1.0.0",
    .commands = commands,
    .init = upper_init,
    .configure = NULL,      /* no settings to change */
    .handle = upper_handle,
    .session_closed = NULL, /* no per-session state */
    .shutdown = NULL,       /* nothing to release */
};

const sockd_plugin *sockd_plugin_entry(void) {
    return &descriptor;
}
