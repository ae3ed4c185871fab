/*
 * ambit_native: the socket options Node has no API for, on a socket's file descriptor.
 *   originalDst(fd, family)   -> { address, port }  SO_ORIGINAL_DST (4) / IP6T_SO_ORIGINAL_DST (6)
 *   setMark(fd, mark)         -> undefined          SO_MARK (needs CAP_NET_ADMIN)
 *   markedSocket(family, mark, transparent?) -> fd  a new non-blocking TCP socket, marked before connect;
 *                                                   transparent: IP(V6)_TRANSPARENT too, so that it may bind
 *                                                   an address that is not this host's (the client's)
 *   notify(path, message)     -> undefined          one datagram to a Unix socket (systemd's $NOTIFY_SOCKET,
 *                                                   '@' for the abstract namespace): Node has no AF_UNIX
 *                                                   datagram socket
 *   listenSocket(host, port, ipv6Only, backlog) -> { fd, port }
 *                                                   a listening TCP socket that nothing polls: the supervisor
 *                                                   holds it and hands it to the processes that accept on it
 *                                                   (libuv's bind reports EADDRINUSE only at its listen, and
 *                                                   its listen starts accepting)
 * Errors are thrown as Error objects whose `code` is the errno name (ENOENT, EPERM, ...).
 * On anything but Linux the module loads and every call throws ENOSYS with a clear message.
 */
#include <node_api.h>
#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <stddef.h>

#ifdef __linux__
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/netfilter_ipv4.h>
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif
#endif

static const char *errno_name(int e) {
  switch (e) {
    case ENOENT: return "ENOENT";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case ENOTCONN: return "ENOTCONN";
    case EMFILE: return "EMFILE";
    case ENOSYS: return "ENOSYS";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EACCES: return "EACCES";
    case EAGAIN: return "EAGAIN";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    default: return "EIO";
  }
}

static napi_value throw_errno(napi_env env, const char *what, int e) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s failed: %s", what, strerror(e));
  napi_throw_error(env, errno_name(e), msg);
  return NULL;
}

static int get_int(napi_env env, napi_value v, int32_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return 0;
  return napi_get_value_int32(env, v, out) == napi_ok;
}

static int args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, "EINVAL", "missing arguments");
    return 0;
  }
  return 1;
}

#ifdef __linux__
static napi_value OriginalDst(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd, family;
  if (!args(env, info, 2, argv)) return NULL;
  if (!get_int(env, argv[0], &fd) || !get_int(env, argv[1], &family) || (family != 4 && family != 6)) {
    napi_throw_type_error(env, "EINVAL", "originalDst(fd: number, family: 4 | 6)");
    return NULL;
  }
  char text[INET6_ADDRSTRLEN];
  int port;
  if (family == 4) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &sa, &len) != 0)
      return throw_errno(env, "getsockopt(SO_ORIGINAL_DST)", errno);
    inet_ntop(AF_INET, &sa.sin_addr, text, sizeof text);
    port = ntohs(sa.sin_port);
  } else {
    struct sockaddr_in6 sa;
    socklen_t len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &sa, &len) != 0)
      return throw_errno(env, "getsockopt(IP6T_SO_ORIGINAL_DST)", errno);
    inet_ntop(AF_INET6, &sa.sin6_addr, text, sizeof text);
    port = ntohs(sa.sin6_port);
  }
  napi_value obj, addr, p;
  napi_create_object(env, &obj);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &addr);
  napi_create_int32(env, port, &p);
  napi_set_named_property(env, obj, "address", addr);
  napi_set_named_property(env, obj, "port", p);
  return obj;
}

static napi_value SetMark(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  uint32_t mark;
  if (!args(env, info, 2, argv)) return NULL;
  if (!get_int(env, argv[0], &fd) || napi_get_value_uint32(env, argv[1], &mark) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "setMark(fd: number, mark: number)");
    return NULL;
  }
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0)
    return throw_errno(env, "setsockopt(SO_MARK)", errno);
  return NULL;
}

static napi_value MarkedSocket(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  int32_t family;
  uint32_t mark;
  bool transparent = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      !get_int(env, argv[0], &family) || (family != 4 && family != 6) ||
      napi_get_value_uint32(env, argv[1], &mark) != napi_ok ||
      (argc > 2 && napi_get_value_bool(env, argv[2], &transparent) != napi_ok)) {
    napi_throw_type_error(env, "EINVAL", "markedSocket(family: 4 | 6, mark: number, transparent?: boolean)");
    return NULL;
  }
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket()", errno);
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "setsockopt(SO_MARK)", e);
  }
  /* Before bind(): only a transparent socket may bind an address this host does not have. */
  int on = 1;
  if (transparent && (family == 4 ? setsockopt(fd, SOL_IP, IP_TRANSPARENT, &on, sizeof on)
                                  : setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on)) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, family == 4 ? "setsockopt(IP_TRANSPARENT)" : "setsockopt(IPV6_TRANSPARENT)", e);
  }
  napi_value out;
  napi_create_int32(env, fd, &out);
  return out;
}

/* Small on purpose: systemd's notify messages are a few lines (READY=1, STATUS=..., MONOTONIC_USEC=...). */
#define NOTIFY_MAX 4096

static napi_value Notify(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args(env, info, 2, argv)) return NULL;
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  char path[sizeof sa.sun_path + 1];
  char msg[NOTIFY_MAX + 1];
  size_t plen = 0, mlen = 0;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &plen) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], msg, sizeof msg, &mlen) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "notify(path: string, message: string)");
    return NULL;
  }
  if (plen == 0 || plen >= sizeof sa.sun_path || (path[0] != '/' && path[0] != '@')) {
    napi_throw_type_error(env, "EINVAL", "notify: the socket path must be absolute or '@abstract', under 108 bytes");
    return NULL;
  }
  if (mlen == 0 || mlen >= NOTIFY_MAX) {
    napi_throw_type_error(env, "EINVAL", "notify: the message must be 1 to 4095 bytes");
    return NULL;
  }
  memcpy(sa.sun_path, path, plen);
  if (path[0] == '@') sa.sun_path[0] = '\0';
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket(AF_UNIX)", errno);
  ssize_t n = sendto(fd, msg, mlen, MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
  int e = errno;
  close(fd);
  if (n < 0) return throw_errno(env, "sendto(NOTIFY_SOCKET)", e);
  return NULL;
}
static napi_value ListenSocket(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  char host[INET6_ADDRSTRLEN + 1];
  size_t hlen = 0;
  int32_t port, backlog;
  bool v6only = false;
  if (napi_get_value_string_utf8(env, argv[0], host, sizeof host, &hlen) != napi_ok ||
      !get_int(env, argv[1], &port) || port < 0 || port > 65535 ||
      napi_get_value_bool(env, argv[2], &v6only) != napi_ok || !get_int(env, argv[3], &backlog) || backlog < 1) {
    napi_throw_type_error(env, "EINVAL",
                          "listenSocket(host: IP literal, port: 0-65535, ipv6Only: boolean, backlog: >= 1)");
    return NULL;
  }
  struct sockaddr_storage ss;
  socklen_t len;
  memset(&ss, 0, sizeof ss);
  int family;
  if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
    struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
    family = sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    len = sizeof *sa;
  } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
    struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;
    family = sa->sin6_family = AF_INET6;
    sa->sin6_port = htons((uint16_t)port);
    len = sizeof *sa;
  } else {
    napi_throw_type_error(env, "EINVAL", "listenSocket: the host must be an IPv4 or IPv6 literal");
    return NULL;
  }
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket()", errno);
  int on = 1;
  int v6 = v6only ? 1 : 0;
  const char *what = NULL;
  /* As libuv does: a restarted daemon rebinds past TIME_WAIT. */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) what = "setsockopt(SO_REUSEADDR)";
  else if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) != 0)
    what = "setsockopt(IPV6_V6ONLY)";
  else if (bind(fd, (struct sockaddr *)&ss, len) != 0) what = "bind()";
  else if (listen(fd, backlog) != 0) what = "listen()";
  if (what) {
    int e = errno;
    close(fd);
    return throw_errno(env, what, e);
  }
  struct sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  if (getsockname(fd, (struct sockaddr *)&bound, &blen) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "getsockname()", e);
  }
  int got = family == AF_INET ? ntohs(((struct sockaddr_in *)&bound)->sin_port)
                              : ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
  napi_value obj, vfd, vport;
  napi_create_object(env, &obj);
  napi_create_int32(env, fd, &vfd);
  napi_create_int32(env, got, &vport);
  napi_set_named_property(env, obj, "fd", vfd);
  napi_set_named_property(env, obj, "port", vport);
  return obj;
}
#else
static napi_value Unsupported(napi_env env, napi_callback_info info) {
  (void)info;
  napi_throw_error(env, "ENOSYS",
                   "transparent capture needs Linux (SO_ORIGINAL_DST, SO_MARK); this platform has neither");
  return NULL;
}
#define OriginalDst Unsupported
#define SetMark Unsupported
#define MarkedSocket Unsupported
#define Notify Unsupported
#define ListenSocket Unsupported
#endif

void ambit_conn_init(napi_env env, napi_value exports);
void ambit_h2_init(napi_env env, napi_value exports);

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"originalDst", NULL, OriginalDst, NULL, NULL, NULL, napi_default, NULL},
    {"setMark", NULL, SetMark, NULL, NULL, NULL, napi_default, NULL},
    {"markedSocket", NULL, MarkedSocket, NULL, NULL, NULL, napi_default, NULL},
    {"notify", NULL, Notify, NULL, NULL, NULL, napi_default, NULL},
    {"listenSocket", NULL, ListenSocket, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  ambit_conn_init(env, exports);
  ambit_h2_init(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
