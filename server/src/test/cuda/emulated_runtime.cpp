// The CUDA engine's native library emulated on the CPU, for tests on machines without a GPU: the
// same JNI entry points as src/main/cuda/cuda_engine.cu, with host memory for device memory,
// synchronous copies, and the kernels run as loops over the same per-element functions
// (kernels.h) in the same order, reductions included (the fixed grid's strided sums and tree
// folds). It lets CudaEngine's Java side (staging, chunking, buffer swaps, reductions, views) run
// against the real arithmetic; only the device build itself awaits a GPU.
//
// EmulatedCuda.setFreeBytes bounds the "device" memory, so that running out can be tested.
#include <jni.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmath>
#include <string.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.h"

#define JNI_NAME(name) Java_dev_optsidecar_server_engine_cuda_CudaNative_##name

namespace {

constexpr int COMBINE_FAN_IN = 32;
constexpr const char* EMULATED_UUID = "0e0e0e0e-0000-4000-8000-000000000001";

// CUDA IPC within this process: a handle is the exporting memory's address and size behind a
// marker, so that a handle not made by ipc_handle below does not open.
constexpr char IPC_MARKER[16] = "osc-emulated-ip";
struct IpcHandle {
    char marker[16];
    int64_t address;
    int64_t bytes;
    char unused[32];
};
static_assert(sizeof(IpcHandle) == 64, "a cudaIpcMemHandle_t is 64 bytes");
std::map<void*, int> opened_handles;

// A handle from another process: a file (in /dev/shm) whose shared mapping stands for the other
// process's device memory, so that a trainer process's buffers can be mapped by a server process.
constexpr char IPC_FILE_MARKER[16] = "osc-emulated-fi";
struct IpcFileHandle {
    char marker[16];
    char path[48];
};
static_assert(sizeof(IpcFileHandle) == 64, "a cudaIpcMemHandle_t is 64 bytes");
std::map<void*, size_t> file_mappings;

/** Maps the file a file handle names; returns its address and size, or nullptr. */
void* map_file(const IpcFileHandle& h, size_t* bytes) {
    char path[sizeof(h.path) + 1] = {0};
    memcpy(path, h.path, sizeof(h.path));
    int fd = open(path, O_RDWR);
    if (fd < 0) return nullptr;
    struct stat st;
    void* p = nullptr;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        p = mmap(nullptr, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) p = nullptr;
        *bytes = (size_t)st.st_size;
    }
    close(fd);
    return p;
}

std::mutex allocations_lock;
std::map<void*, size_t> allocations;
size_t allocated = 0;
size_t device_limit = (size_t)1 << 34;

size_t device_bytes() { return device_limit; }

void throw_java(JNIEnv* env, const char* type, const std::string& message) {
    jclass cls = env->FindClass(type);
    if (cls != nullptr) env->ThrowNew(cls, message.c_str());
}

template <typename T>
T* ptr(jlong address) { return reinterpret_cast<T*>(static_cast<intptr_t>(address)); }

/** Runs calls [from, from + count) on every element; with partials, as the fixed reduction grid would. */
void run_launch(const std::vector<osc::Call>& calls, float* theta, const float* grad, float* const* slots,
                int64_t n, double* total) {
    if (total == nullptr) {
        for (int64_t i = 0; i < n; i++) {
            for (const osc::Call& c : calls) osc::apply_step(c, theta, grad, slots, i);
        }
        return;
    }
    static thread_local double threads[osc::REDUCE_THREADS];
    static thread_local double blocks[osc::REDUCE_BLOCKS];
    for (int b = 0; b < osc::REDUCE_BLOCKS; b++) {
        for (int t = 0; t < osc::REDUCE_THREADS; t++) {
            double squares = 0;
            for (int64_t i = (int64_t)b * osc::REDUCE_THREADS + t; i < n; i += osc::REDUCE_STRIDE) {
                float before = theta[i];
                for (const osc::Call& c : calls) osc::apply_step(c, theta, grad, slots, i);
                double d = (double)theta[i] - (double)before;
                squares += d * d;
            }
            threads[t] = squares;
        }
        blocks[b] = osc::tree_fold_host(threads, osc::REDUCE_THREADS);
    }
    *total = *total + osc::tree_fold_host(blocks, osc::REDUCE_BLOCKS);
}

}  // namespace

extern "C" {

JNIEXPORT jint JNICALL JNI_NAME(deviceCount)(JNIEnv*, jclass) { return 1; }

JNIEXPORT jstring JNICALL JNI_NAME(errorName)(JNIEnv* env, jclass, jint code) {
    return env->NewStringUTF(("emulated error " + std::to_string(code)).c_str());
}

JNIEXPORT jstring JNICALL JNI_NAME(catalogue)(JNIEnv* env, jclass) {
    std::string out;
    for (const osc::KernelInfo& k : osc::CATALOGUE) {
        out += std::string(k.id) + "|" + k.slots + "|" + k.scalars + "|" + k.flags + "\n";
    }
    return env->NewStringUTF(out.c_str());
}

JNIEXPORT jstring JNICALL JNI_NAME(useDevice)(JNIEnv* env, jclass, jint device) {
    if (device != 0) {
        throw_java(env, "dev/optsidecar/server/engine/cuda/CudaException", "cudaSetDevice: no emulated device");
        return nullptr;
    }
    std::string text = "CPU emulation|0|0|" + std::to_string((unsigned long long)device_bytes()) + "|" + EMULATED_UUID;
    return env->NewStringUTF(text.c_str());
}

JNIEXPORT void JNICALL JNI_NAME(setDevice)(JNIEnv*, jclass, jint) {}

JNIEXPORT jlong JNICALL JNI_NAME(freeBytes)(JNIEnv*, jclass) {
    std::lock_guard<std::mutex> guard(allocations_lock);
    return allocated > device_bytes() ? 0 : (jlong)(device_bytes() - allocated);
}

JNIEXPORT jlong JNICALL JNI_NAME(streamCreate)(JNIEnv*, jclass) { return 1; }
JNIEXPORT void JNICALL JNI_NAME(streamSynchronize)(JNIEnv*, jclass, jlong) {}
JNIEXPORT void JNICALL JNI_NAME(streamDestroy)(JNIEnv*, jclass, jlong) {}

JNIEXPORT jlong JNICALL JNI_NAME(malloc)(JNIEnv* env, jclass, jlong bytes) {
    size_t size = bytes < 1 ? 1 : (size_t)bytes;
    std::lock_guard<std::mutex> guard(allocations_lock);
    void* p = allocated + size <= device_bytes() ? malloc(size) : nullptr;
    if (p == nullptr) {
        throw_java(env, "java/lang/OutOfMemoryError", "cudaMalloc: cudaErrorMemoryAllocation (out of memory)");
        return 0;
    }
    allocations[p] = size;
    allocated += size;
    return (jlong)(intptr_t)p;
}

JNIEXPORT void JNICALL JNI_NAME(free)(JNIEnv*, jclass, jlong p) {
    std::lock_guard<std::mutex> guard(allocations_lock);
    auto it = allocations.find(ptr<void>(p));
    if (it == allocations.end()) return;
    allocated -= it->second;
    allocations.erase(it);
    free(ptr<void>(p));
}

JNIEXPORT void JNICALL JNI_NAME(zero)(JNIEnv*, jclass, jlong p, jlong bytes, jlong) {
    memset(ptr<void>(p), 0, (size_t)bytes);
}

JNIEXPORT jobject JNICALL JNI_NAME(hostAlloc)(JNIEnv* env, jclass, jlong bytes) {
    return env->NewDirectByteBuffer(malloc((size_t)bytes), bytes);
}

JNIEXPORT void JNICALL JNI_NAME(hostFree)(JNIEnv* env, jclass, jobject buffer) {
    free(env->GetDirectBufferAddress(buffer));
}

JNIEXPORT jlong JNICALL JNI_NAME(eventCreate)(JNIEnv*, jclass) { return 1; }
JNIEXPORT void JNICALL JNI_NAME(eventSynchronize)(JNIEnv*, jclass, jlong) {}

JNIEXPORT void JNICALL JNI_NAME(copyIn)(JNIEnv* env, jclass, jlong device, jobject pinned, jlong bytes, jlong, jlong) {
    memcpy(ptr<void>(device), env->GetDirectBufferAddress(pinned), (size_t)bytes);
}

JNIEXPORT void JNICALL JNI_NAME(copyOut)(JNIEnv* env, jclass, jobject pinned, jlong device, jlong bytes, jlong) {
    memcpy(env->GetDirectBufferAddress(pinned), ptr<void>(device), (size_t)bytes);
}

JNIEXPORT void JNICALL JNI_NAME(copyDevice)(JNIEnv*, jclass, jlong dst, jlong src, jlong bytes, jlong) {
    memcpy(ptr<void>(dst), ptr<void>(src), (size_t)bytes);
}

JNIEXPORT void JNICALL JNI_NAME(writePointers)(JNIEnv* env, jclass, jlong table, jlongArray pointers, jlong) {
    jsize n = env->GetArrayLength(pointers);
    env->GetLongArrayRegion(pointers, 0, n, ptr<jlong>(table));
}

JNIEXPORT void JNICALL JNI_NAME(runProgram)(JNIEnv* env, jclass, jlong theta, jlong grad, jlong slotTable, jlong n,
                                            jintArray codes, jintArray flags, jintArray slots, jfloatArray scalars,
                                            jint count, jlong, jlong updateTotal, jlong) {
    if (n == 0) return;
    for (int from = 0; from < count; from += osc::MAX_CALLS) {
        std::vector<osc::Call> calls;
        for (int k = from; k < count && k < from + osc::MAX_CALLS; k++) {
            osc::Call c{};
            jint code;
            jint bits;
            env->GetIntArrayRegion(codes, k, 1, &code);
            env->GetIntArrayRegion(flags, k, 1, &bits);
            env->GetIntArrayRegion(slots, k * osc::MAX_CALL_SLOTS, osc::MAX_CALL_SLOTS, c.slots);
            env->GetFloatArrayRegion(scalars, k * osc::MAX_SCALARS, osc::MAX_SCALARS, c.s);
            c.kernel = code;
            c.flags = (uint32_t)bits;
            calls.push_back(c);
        }
        bool measure = updateTotal != 0 && count <= osc::MAX_CALLS;
        run_launch(calls, ptr<float>(theta), ptr<const float>(grad), ptr<float* const>(slotTable), n,
                   measure ? ptr<double>(updateTotal) : nullptr);
    }
}

JNIEXPORT void JNICALL JNI_NAME(runView)(JNIEnv* env, jclass, jlong out, jlong theta, jlong slotTable, jlong offset,
                                         jlong n, jint code, jintArray slots, jfloatArray scalars, jlong) {
    osc::Call c{};
    c.kernel = code;
    env->GetIntArrayRegion(slots, 0, osc::MAX_CALL_SLOTS, c.slots);
    env->GetFloatArrayRegion(scalars, 0, osc::MAX_SCALARS, c.s);
    for (int64_t i = 0; i < n; i++) {
        ptr<float>(out)[i] = osc::eval_view(c, ptr<const float>(theta), ptr<float* const>(slotTable), offset + i);
    }
}

JNIEXPORT void JNICALL JNI_NAME(combine)(JNIEnv* env, jclass, jlong out, jlongArray buffers, jfloat divisor, jlong n,
                                         jlong) {
    jsize count = env->GetArrayLength(buffers);
    std::vector<jlong> addresses(count);
    env->GetLongArrayRegion(buffers, 0, count, addresses.data());
    float* o = ptr<float>(out);
    // As the device: launches of COMBINE_FAN_IN buffers, each continuing the sums the last left.
    for (jsize from = 0; from < count; from += COMBINE_FAN_IN) {
        jsize to = count - from < COMBINE_FAN_IN ? count : from + COMBINE_FAN_IN;
        for (int64_t i = 0; i < n; i++) {
            float sum = from == 0 ? ptr<const float>(addresses[0])[i] : o[i];
            for (jsize h = from == 0 ? 1 : from; h < to; h++) sum = sum + ptr<const float>(addresses[h])[i];
            if (to == count && divisor != 1.0f) sum = sum / divisor;
            o[i] = sum;
        }
    }
}

JNIEXPORT jlongArray JNICALL JNI_NAME(ipcOpen)(JNIEnv* env, jclass, jbyteArray handle) {
    IpcHandle h{};
    if (env->GetArrayLength(handle) != (jsize)sizeof(h)) {
        throw_java(env, "dev/optsidecar/server/engine/cuda/CudaException",
                   "cudaIpcOpenMemHandle: cudaErrorInvalidValue (a handle is 64 bytes)");
        return nullptr;
    }
    env->GetByteArrayRegion(handle, 0, sizeof(h), reinterpret_cast<jbyte*>(&h));
    if (memcmp(h.marker, IPC_FILE_MARKER, sizeof(IPC_FILE_MARKER)) == 0) {
        IpcFileHandle f;
        memcpy(&f, &h, sizeof(f));
        size_t bytes = 0;
        void* p = map_file(f, &bytes);
        if (p == nullptr) {
            throw_java(env, "dev/optsidecar/server/engine/cuda/CudaException",
                       "cudaIpcOpenMemHandle: cudaErrorMapBufferObjectFailed (the emulated handle's file does not map)");
            return nullptr;
        }
        std::lock_guard<std::mutex> guard(allocations_lock);
        opened_handles[p]++;
        file_mappings[p] = bytes;
        jlong out[2] = {(jlong)(intptr_t)p, (jlong)bytes};
        jlongArray result = env->NewLongArray(2);
        env->SetLongArrayRegion(result, 0, 2, out);
        return result;
    }
    if (memcmp(h.marker, IPC_MARKER, sizeof(IPC_MARKER)) != 0) {
        throw_java(env, "dev/optsidecar/server/engine/cuda/CudaException",
                   "cudaIpcOpenMemHandle: cudaErrorInvalidResourceHandle (invalid resource handle)");
        return nullptr;
    }
    std::lock_guard<std::mutex> guard(allocations_lock);
    opened_handles[ptr<void>(h.address)]++;
    jlong out[2] = {h.address, h.bytes};
    jlongArray result = env->NewLongArray(2);
    env->SetLongArrayRegion(result, 0, 2, out);
    return result;
}

JNIEXPORT void JNICALL JNI_NAME(ipcClose)(JNIEnv* env, jclass, jlong p) {
    std::lock_guard<std::mutex> guard(allocations_lock);
    auto it = opened_handles.find(ptr<void>(p));
    if (it == opened_handles.end()) {
        throw_java(env, "dev/optsidecar/server/engine/cuda/CudaException", "cudaIpcCloseMemHandle: not open");
        return;
    }
    if (--it->second == 0) {
        opened_handles.erase(it);
        auto file = file_mappings.find(ptr<void>(p));
        if (file != file_mappings.end()) {
            munmap(file->first, file->second);
            file_mappings.erase(file);
        }
    }
}

JNIEXPORT void JNICALL JNI_NAME(copySums)(JNIEnv*, jclass, jlong dst, jlong src, jlong n, jlong sums, jlong) {
    if (src != 0) memcpy(ptr<void>(dst), ptr<void>(src), (size_t)n * sizeof(float));
    unsigned long long* out = ptr<unsigned long long>(sums);
    const int32_t* bits = ptr<const int32_t>(dst);
    for (int64_t i = 0; i < n; i++) out[i & 1] += (unsigned long long)(long long)bits[i];
}

JNIEXPORT void JNICALL JNI_NAME(ingest)(JNIEnv*, jclass, jlong dst, jlong src, jlong n, jlong piece, jlong sums,
                                        jlong firsts, jlong) {
    memcpy(ptr<void>(dst), ptr<void>(src), (size_t)n * sizeof(float));
    const float* g = ptr<const float>(dst);
    for (int64_t start = 0, block = 0; start < n; start += piece, block++) {
        int64_t count = n - start < piece ? n - start : piece;
        for (int lane = 0; lane < osc::INGEST_LANES; lane++) {
            double sum = 0;
            long long first = -1;
            for (int64_t k = lane; k < count; k += osc::INGEST_LANES) {
                double v = g[start + k];
                sum += v * v;
                if (first < 0 && !std::isfinite(v)) first = start + k;
            }
            ptr<double>(sums)[block * osc::INGEST_LANES + lane] = sum;
            ptr<long long>(firsts)[block * osc::INGEST_LANES + lane] = first;
        }
    }
}

JNIEXPORT void JNICALL JNI_NAME(sumOfSquares)(JNIEnv*, jclass, jlong g, jlong n, jlong, jlong result, jlong) {
    *ptr<double>(result) = osc::sum_squares_in_order(ptr<const float>(g), n);
}

}  // extern "C"

/**
 * Tests' knob: the emulated device has {@code bytes} free from now on, besides what is already
 * allocated (engines of earlier tests in the same JVM may still hold some), so that running out
 * can be tested.
 */
extern "C" JNIEXPORT void JNICALL Java_dev_optsidecar_server_engine_cuda_EmulatedCuda_setFreeBytes(
    JNIEnv*, jclass, jlong bytes) {
    std::lock_guard<std::mutex> guard(allocations_lock);
    device_limit = allocated + (size_t)bytes;
}

/** Tests' knob: a handle to {@code bytes} of host memory at {@code address}, as another process would export one. */
extern "C" JNIEXPORT jbyteArray JNICALL Java_dev_optsidecar_server_engine_cuda_EmulatedCuda_ipcHandle(
    JNIEnv* env, jclass, jlong address, jlong bytes) {
    IpcHandle h{};
    memcpy(h.marker, IPC_MARKER, sizeof(IPC_MARKER));
    h.address = address;
    h.bytes = bytes;
    jbyteArray out = env->NewByteArray(sizeof(h));
    env->SetByteArrayRegion(out, 0, sizeof(h), reinterpret_cast<const jbyte*>(&h));
    return out;
}

/** Tests' knob: how many IPC mappings are open now. */
extern "C" JNIEXPORT jint JNICALL Java_dev_optsidecar_server_engine_cuda_EmulatedCuda_openIpcMappings(JNIEnv*, jclass) {
    std::lock_guard<std::mutex> guard(allocations_lock);
    int open = 0;
    for (auto& entry : opened_handles) open += entry.second;
    return open;
}

extern "C" JNIEXPORT jlong JNICALL Java_dev_optsidecar_server_engine_cuda_EmulatedCuda_address(JNIEnv* env, jclass,
                                                                                            jobject direct) {
    return (jlong)(intptr_t)env->GetDirectBufferAddress(direct);
}
