/*
 * fuzz_nat_addr.c - libFuzzer target for the address and prefix parsers:
 * whatever the bytes, no crash; an accepted address formats and parses back
 * to itself; an accepted prefix contains its own network and has no host bit.
 */
#include "nat/nat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char s[128], buf[NAT_ADDR_STRLEN];
    struct nat_addr a, b, net;
    uint8_t plen;

    if (size >= sizeof(s))
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (nat_addr_parse(&a, s) == 0) {
        nat_addr_format(&a, buf);
        if (strlen(buf) >= NAT_ADDR_STRLEN || nat_addr_parse(&b, buf) != 0 ||
            memcmp(&a, &b, sizeof(a)) != 0)
            abort();
        if (!nat_addr_in_prefix(&a, &a, 128))
            abort();
    }
    if (nat_prefix_parse(&net, &plen, s) == 0) {
        if (plen > 128 || !nat_addr_in_prefix(&net, &net, plen))
            abort();
        for (unsigned bit = plen; bit < 128; bit++)
            if (net.b[bit / 8] & (0x80 >> (bit % 8)))
                abort();
    }
    return 0;
}
