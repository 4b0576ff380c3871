// The CUDA engine's per-element arithmetic (src/main/cuda/kernels.h) compiled for the CPU, behind
// JNI, so that a unit test compares it with the Java reference loops on any machine. Programs run
// as the device runs them: every call of the program on element i, then on element i + 1.
#include <jni.h>

#include <string>
#include <vector>

#include "kernels.h"

#define JNI_NAME(name) Java_dev_optsidecar_server_engine_cuda_HostKernels_##name

namespace {

/** The arrays of a float[][] pinned for the call, released (written back) by the destructor. */
struct Slots {
    JNIEnv* env;
    jobjectArray arrays;
    std::vector<jfloatArray> handles;
    std::vector<float*> pointers;

    Slots(JNIEnv* e, jobjectArray a) : env(e), arrays(a) {
        jsize n = env->GetArrayLength(arrays);
        for (jsize k = 0; k < n; k++) {
            jfloatArray h = (jfloatArray)env->GetObjectArrayElement(arrays, k);
            handles.push_back(h);
            pointers.push_back(env->GetFloatArrayElements(h, nullptr));
        }
    }

    ~Slots() {
        for (size_t k = 0; k < handles.size(); k++) env->ReleaseFloatArrayElements(handles[k], pointers[k], 0);
    }
};

osc::Call read_call(JNIEnv* env, jintArray codes, jintArray flags, jintArray slots, jfloatArray scalars, int k) {
    osc::Call c{};
    jint code;
    jint bits;
    env->GetIntArrayRegion(codes, k, 1, &code);
    env->GetIntArrayRegion(flags, k, 1, &bits);
    env->GetIntArrayRegion(slots, k * osc::MAX_CALL_SLOTS, osc::MAX_CALL_SLOTS, c.slots);
    env->GetFloatArrayRegion(scalars, k * osc::MAX_SCALARS, osc::MAX_SCALARS, c.s);
    c.kernel = code;
    c.flags = (uint32_t)bits;
    return c;
}

}  // namespace

extern "C" {

JNIEXPORT jstring JNICALL JNI_NAME(catalogue)(JNIEnv* env, jclass) {
    std::string out;
    for (const osc::KernelInfo& k : osc::CATALOGUE) {
        out += std::string(k.id) + "|" + k.slots + "|" + k.scalars + "|" + k.flags + "\n";
    }
    return env->NewStringUTF(out.c_str());
}

JNIEXPORT void JNICALL JNI_NAME(runProgram)(JNIEnv* env, jclass, jintArray codes, jintArray flags, jintArray slots,
                                            jfloatArray scalars, jint count, jfloatArray theta, jfloatArray grad,
                                            jobjectArray state) {
    std::vector<osc::Call> calls;
    for (int k = 0; k < count; k++) calls.push_back(read_call(env, codes, flags, slots, scalars, k));
    jsize n = env->GetArrayLength(theta);
    float* th = env->GetFloatArrayElements(theta, nullptr);
    float* gr = env->GetFloatArrayElements(grad, nullptr);
    {
        Slots st(env, state);
        for (jsize i = 0; i < n; i++) {
            for (const osc::Call& c : calls) osc::apply_step(c, th, gr, st.pointers.data(), i);
        }
    }
    env->ReleaseFloatArrayElements(grad, gr, JNI_ABORT);
    env->ReleaseFloatArrayElements(theta, th, 0);
}

JNIEXPORT void JNICALL JNI_NAME(runView)(JNIEnv* env, jclass, jint code, jintArray slots, jfloatArray scalars,
                                         jfloatArray theta, jobjectArray state, jfloatArray out) {
    osc::Call c{};
    c.kernel = code;
    env->GetIntArrayRegion(slots, 0, osc::MAX_CALL_SLOTS, c.slots);
    env->GetFloatArrayRegion(scalars, 0, osc::MAX_SCALARS, c.s);
    jsize n = env->GetArrayLength(theta);
    float* th = env->GetFloatArrayElements(theta, nullptr);
    float* o = env->GetFloatArrayElements(out, nullptr);
    {
        Slots st(env, state);
        for (jsize i = 0; i < n; i++) o[i] = osc::eval_view(c, th, st.pointers.data(), i);
    }
    env->ReleaseFloatArrayElements(out, o, 0);
    env->ReleaseFloatArrayElements(theta, th, JNI_ABORT);
}

JNIEXPORT jfloatArray JNICALL JNI_NAME(combine)(JNIEnv* env, jclass, jobjectArray buffers, jfloat divisor) {
    Slots in(env, buffers);
    jsize n = env->GetArrayLength(in.handles[0]);
    std::vector<float> out(n);
    for (jsize i = 0; i < n; i++) out[i] = osc::combine(in.pointers.data(), (int)in.pointers.size(), divisor, i);
    jfloatArray result = env->NewFloatArray(n);
    env->SetFloatArrayRegion(result, 0, n, out.data());
    return result;
}

JNIEXPORT jdouble JNICALL JNI_NAME(sumOfSquaresInOrder)(JNIEnv* env, jclass, jfloatArray g) {
    jsize n = env->GetArrayLength(g);
    float* values = env->GetFloatArrayElements(g, nullptr);
    double sum = osc::sum_squares_in_order(values, n);
    env->ReleaseFloatArrayElements(g, values, JNI_ABORT);
    return sum;
}

}  // extern "C"
