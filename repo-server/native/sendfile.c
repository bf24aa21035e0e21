// Zero-copy file bodies for repo-server/static.ts: sendfile(2) from a file descriptor to a
// connected, non-blocking TCP socket, driven by Node's own event loop. Node has no
// sendfile, so its streaming path copies every byte from the page cache into a buffer and
// again into the socket; this hands page-cache pages to the socket instead, as nginx does.
//
//   start(sockFd, fileFd, offset, length, callback(err, sent)) -> number | handle
//     Sends what fits at once (on the caller's stack). All sent: returns the byte count
//     and never calls back. Else watches a dup() of the socket for writability (libuv
//     watches each fd once, and Node's TCP handle already has the original), sends the
//     rest as room appears, then stops watching, closes the dup and calls back once.
//     Errors of the first attempt are thrown (err.code: EPIPE, ECONNRESET, ...).
//   cancel(handle)  stop now (the socket went away): no callback, the dup is closed
//   sent(handle)    bytes sent so far (to tell a slow client from a stalled one)
//
// A file that ends before the range does fails with code ESHRANK: the caller must cut the
// connection, as the promised Content-Length can no longer be honoured. The file
// descriptor stays the caller's (close it after the callback, or after cancel()).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <unistd.h>
#include <node_api.h>
#include <uv.h>

// Bytes sent per connection per loop turn, so one fast client cannot hold the loop for a
// whole 8 MiB range while others wait (nginx's sendfile_max_chunk is 2 MiB too).
#define TURN_BYTES (2 << 20)
// pump() result for a file shorter than the range
#define SHRANK (-1000000)

typedef struct transfer {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int sock; // our dup of the socket
  int file;
  int64_t off;
  int64_t left;
  int64_t sent;
  int active; // watching, callback not yet made
  int refs;   // the JS handle and the libuv handle: freed when both are gone
} transfer_t;

/** Sends up to TURN_BYTES. 1: all sent; 0: the socket is full (or the turn is over); <0: -errno or SHRANK. */
static int pump(int sock, int file, int64_t *off, int64_t *left, int64_t *sent) {
  int64_t budget = TURN_BYTES;
  while (*left > 0 && budget > 0) {
    size_t n = (size_t)(*left < budget ? *left : budget);
    off_t o = (off_t)*off;
    ssize_t r = sendfile(sock, file, &o, n);
    if (r > 0) {
      *off += r;
      *left -= r;
      *sent += r;
      budget -= r;
      if ((size_t)r < n) return *left == 0 ? 1 : 0; // the socket is full: spare the EAGAIN call
    } else if (r == 0) {
      return SHRANK;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return 0;
    } else {
      return -errno;
    }
  }
  return *left == 0 ? 1 : 0;
}

static napi_value make_error(napi_env env, int code) {
  const char *name;
  const char *message;
  if (code == SHRANK) {
    name = "ESHRANK";
    message = "the file ended before the range did (changed while it was sent)";
  } else {
    name = uv_err_name(code); // on Unix, libuv's codes are -errno
    message = uv_strerror(code);
  }
  napi_value n, m, err, syscall;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &n);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, n, m, &err);
  napi_create_string_utf8(env, "sendfile", NAPI_AUTO_LENGTH, &syscall);
  napi_set_named_property(env, err, "syscall", syscall);
  return err;
}

static void release(transfer_t *t) {
  if (--t->refs == 0) free(t);
}

static void on_closed(uv_handle_t *h) {
  release((transfer_t *)h->data);
}

/** Stops watching and closes the dup (uv_poll_stop removes it from epoll first). */
static void stop(transfer_t *t) {
  t->active = 0;
  uv_poll_stop(&t->poll);
  close(t->sock);
  t->sock = -1;
  uv_close((uv_handle_t *)&t->poll, on_closed);
}

static void forget_js(transfer_t *t) {
  napi_delete_reference(t->env, t->callback);
  napi_async_destroy(t->env, t->context);
}

static void on_writable(uv_poll_t *h, int status, int events) {
  (void)events;
  transfer_t *t = (transfer_t *)h->data;
  if (!t->active) return;
  int r = status < 0 ? status : pump(t->sock, t->file, &t->off, &t->left, &t->sent);
  if (r == 0) return;
  stop(t);
  napi_env env = t->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[2];
  napi_get_reference_value(env, t->callback, &cb);
  napi_get_global(env, &recv); // make_callback wants an object
  if (r == 1) napi_get_null(env, &argv[0]);
  else argv[0] = make_error(env, r);
  napi_create_int64(env, t->sent, &argv[1]);
  // make_callback (not call_function): runs the process.nextTick and promise queues after
  // it, as for any callback that comes from the event loop
  if (cb) napi_make_callback(env, t->context, recv, cb, 2, argv, NULL);
  bool thrown = false;
  napi_value exception;
  // nothing above JS on this stack to catch it: report it as uncaught, like Node's own callbacks
  if (napi_is_exception_pending(env, &thrown) == napi_ok && thrown && napi_get_and_clear_last_exception(env, &exception) == napi_ok)
    napi_fatal_exception(env, exception);
  forget_js(t);
  napi_close_handle_scope(env, scope);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  release((transfer_t *)data);
}

static int arg_int64(napi_env env, napi_value v, int64_t *out) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_number) return 0;
  return napi_get_value_int64(env, v, out) == napi_ok;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t sock, file, off, len;
  napi_valuetype cbtype = napi_undefined;
  if (argc == 5) napi_typeof(env, argv[4], &cbtype);
  if (argc < 5 || !arg_int64(env, argv[0], &sock) || !arg_int64(env, argv[1], &file) || !arg_int64(env, argv[2], &off) ||
      !arg_int64(env, argv[3], &len) || cbtype != napi_function || sock < 0 || file < 0 || off < 0 || len < 0 || sock > INT32_MAX ||
      file > INT32_MAX)
    return throw_type(env, "start(sockFd, fileFd, offset, length, callback)");

  int64_t sent = 0;
  int r = pump((int)sock, (int)file, &off, &len, &sent);
  napi_value result;
  if (r < 0) {
    napi_throw(env, make_error(env, r));
    return NULL;
  }
  if (r == 1) {
    napi_create_int64(env, sent, &result);
    return result;
  }

  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    napi_throw_error(env, "ENOLOOP", "no event loop");
    return NULL;
  }
  transfer_t *t = calloc(1, sizeof *t);
  if (!t) {
    napi_throw(env, make_error(env, UV_ENOMEM));
    return NULL;
  }
  t->sock = fcntl((int)sock, F_DUPFD_CLOEXEC, 0);
  if (t->sock < 0) {
    int e = -errno;
    free(t);
    napi_throw(env, make_error(env, e));
    return NULL;
  }
  int u = uv_poll_init(loop, &t->poll, t->sock);
  if (u != 0) {
    close(t->sock);
    free(t);
    napi_throw(env, make_error(env, u));
    return NULL;
  }
  t->poll.data = t;
  t->refs = 1; // the libuv handle's, until it is closed
  u = uv_poll_start(&t->poll, UV_WRITABLE, on_writable);
  if (u != 0) {
    stop(t); // closes the dup and the handle, which frees t
    napi_throw(env, make_error(env, u));
    return NULL;
  }
  t->env = env;
  t->file = (int)file;
  t->off = off;
  t->left = len;
  t->sent = sent;
  t->active = 1;
  t->refs = 2;
  napi_value name, resource;
  napi_create_object(env, &resource);
  napi_create_string_utf8(env, "loopship:sendfile", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[4], 1, &t->callback);
  napi_async_init(env, resource, name, &t->context);
  if (napi_create_external(env, t, finalize, NULL, &result) != napi_ok) {
    // unlikely; the transfer still runs and calls back, it just cannot be cancelled
    t->refs--;
    napi_get_undefined(env, &result);
  }
  return result;
}

static transfer_t *handle_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype type;
  void *data = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_external) return NULL;
  napi_get_value_external(env, argv[0], &data);
  return (transfer_t *)data;
}

static napi_value cancel(napi_env env, napi_callback_info info) {
  transfer_t *t = handle_arg(env, info);
  if (!t) return throw_type(env, "cancel(handle)");
  if (t->active) {
    stop(t);
    forget_js(t);
  }
  return NULL;
}

static napi_value sent(napi_env env, napi_callback_info info) {
  transfer_t *t = handle_arg(env, info);
  if (!t) return throw_type(env, "sent(handle)");
  napi_value v;
  napi_create_int64(env, t->sent, &v);
  return v;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"start", NULL, start, NULL, NULL, NULL, napi_enumerable, NULL},
    {"cancel", NULL, cancel, NULL, NULL, NULL, napi_enumerable, NULL},
    {"sent", NULL, sent, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
