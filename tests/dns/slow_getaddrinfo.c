// An LD_PRELOAD shim for Tests/StoreTests/RedisDNSTests.swift: a resolver that stalls.
//
// getaddrinfo for a name ending in ".slow.test" sleeps SLOWDNS_DELAY_MS (default 1500) and then answers 127.0.0.1,
// except "nx.slow.test", which answers EAI_NONAME after the same delay, and "two.*.slow.test", which answers
// 127.0.0.2 then 127.0.0.1. Every other name goes to the real
// getaddrinfo. Built by the test at run time:
//
//     cc -shared -fPIC -o slowdns.so slow_getaddrinfo.c -ldl
//
// Outside the Swift targets on purpose: SwiftPM would otherwise try to compile it into a module.

#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

static const char suffix[] = ".slow.test";

static int is_slow(const char *node) {
    if (node == NULL) return 0;
    size_t length = strlen(node), suffix_length = sizeof suffix - 1;
    if (length > 0 && node[length - 1] == '.') length--;   // a fully qualified "x.slow.test."
    return length >= suffix_length && strncasecmp(node + length - suffix_length, suffix, suffix_length) == 0;
}

static void stall(void) {
    const char *text = getenv("SLOWDNS_DELAY_MS");
    long milliseconds = text != NULL && *text != '\0' ? strtol(text, NULL, 10) : 1500;
    struct timespec delay = { milliseconds / 1000, (milliseconds % 1000) * 1000000L };
    while (nanosleep(&delay, &delay) != 0) {}
}

static int port_of(const char *service, const struct addrinfo *hints) {
    if (service == NULL) return 0;
    char *end = NULL;
    long port = strtol(service, &end, 10);
    if (*service != '\0' && *end == '\0' && port >= 0 && port <= 65535) return (int)port;
    if (hints != NULL && (hints->ai_flags & AI_NUMERICSERV)) return -1;
    struct servent *entry = getservbyname(service, "tcp");
    return entry != NULL ? ntohs((unsigned short)entry->s_port) : -1;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    if (!is_slow(node)) {
        int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
            (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))dlsym(RTLD_NEXT,
                                                                                                  "getaddrinfo");
        return real != NULL ? real(node, service, hints, res) : EAI_FAIL;
    }
    stall();
    size_t length = strlen(node);
    if (strncasecmp(node, "nx.slow.test", 12) == 0 && (length == 12 || (length == 13 && node[12] == '.'))) {
        return EAI_NONAME;
    }
    if (hints != NULL && hints->ai_family != AF_UNSPEC && hints->ai_family != AF_INET) return EAI_FAMILY;
    int port = port_of(service, hints);
    if (port < 0) return EAI_SERVICE;

    // "two.<anything>.slow.test" answers 127.0.0.2 first (nothing listens there: refused), then 127.0.0.1: the
    // client must try the second address. Every other name answers 127.0.0.1 alone.
    int two = strncasecmp(node, "two.", 4) == 0;
    unsigned long addresses[2] = { two ? 0x7F000002UL : INADDR_LOOPBACK, INADDR_LOOPBACK };
    struct addrinfo *first = NULL, **link = &first;
    for (int index = 0; index < (two ? 2 : 1); index++) {
        // One block for the addrinfo and its address, so the real freeaddrinfo (free of each node) releases it.
        struct answer { struct addrinfo info; struct sockaddr_in address; };
        struct answer *answer = calloc(1, sizeof *answer);
        if (answer == NULL) return EAI_MEMORY;
        answer->address.sin_family = AF_INET;
        answer->address.sin_port = htons((unsigned short)port);
        answer->address.sin_addr.s_addr = htonl(addresses[index]);
        answer->info.ai_family = AF_INET;
        answer->info.ai_socktype = hints != NULL && hints->ai_socktype != 0 ? hints->ai_socktype : SOCK_STREAM;
        answer->info.ai_protocol = hints != NULL ? hints->ai_protocol : 0;
        answer->info.ai_addrlen = sizeof answer->address;
        answer->info.ai_addr = (struct sockaddr *)&answer->address;
        *link = &answer->info;
        link = &answer->info.ai_next;
    }
    *res = first;
    return 0;
}
