// Java arrays as the native loops hold them: without copying, for the short duration of one call.
#ifndef OPTSIDECAR_JNI_ARRAYS_H
#define OPTSIDECAR_JNI_ARRAYS_H

#include <jni.h>

namespace optsidecar {

// GetPrimitiveArrayCritical for one array, released when it goes out of scope: written back
// (mode 0) if the call writes it, else discarded (JNI_ABORT). data is null when the JVM could not
// pin it; an OutOfMemoryError is then pending and no other JNI call may come first.
struct Critical {
    JNIEnv* env;
    jarray array;
    void* data;
    jint release_mode;

    Critical(JNIEnv* e, jarray a, bool writes) : env(e), array(a), release_mode(writes ? 0 : JNI_ABORT) {
        data = env->GetPrimitiveArrayCritical(array, nullptr);
    }
    ~Critical() {
        if (data != nullptr) env->ReleasePrimitiveArrayCritical(array, data, release_mode);
    }
    Critical(const Critical&) = delete;
    Critical& operator=(const Critical&) = delete;
};

}  // namespace optsidecar

#endif
