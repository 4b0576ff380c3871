// A float32's bits and back, without the undefined behaviour of a pointer cast.
#ifndef OPTSIDECAR_FLOAT_BITS_H
#define OPTSIDECAR_FLOAT_BITS_H

#include <stdint.h>
#include <string.h>

namespace optsidecar {

inline uint32_t bits_of(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

inline float float_of(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

}  // namespace optsidecar

#endif
