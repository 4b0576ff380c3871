// The CUDA engine's kernels and their JNI entry points (engine/cuda/CudaNative.java). Every
// launch and copy goes on the stream the caller names, so work is ordered as the engine issues it.
// Failures become Java exceptions: OutOfMemoryError for an allocation, CudaException otherwise.
#include <jni.h>
#include <cuda_runtime.h>

#include <stdio.h>
#include <string>

#include "kernels.h"

#define OSC_EXPORT extern "C" __attribute__((visibility("default"))) JNIEXPORT

namespace {

constexpr int THREADS = 256;
// Grid-stride launches cap their grid here; more blocks only add scheduling overhead.
constexpr int64_t MAX_BLOCKS = 8192;
// Buffers a combine launch adds; more run as further launches that continue the same sums.
constexpr int COMBINE_FAN_IN = 32;

struct BufferList {
    const float* p[COMBINE_FAN_IN];
};

__device__ void fold_block(double* shared, int t) {
    for (int half = osc::REDUCE_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) shared[t] = shared[t] + shared[t + half];
    }
}

// One tensor's program over [0, n). With partials, the grid is the fixed reduction grid and each
// block leaves Σ(θ_after − θ_before)² of its elements, in double, in partials[block].
__global__ void program_kernel(osc::Program program, float* theta, const float* grad, float* const* slots,
                               int64_t n, double* partials) {
    __shared__ double shared[osc::REDUCE_THREADS];
    const int64_t start = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    double squares = 0;
    for (int64_t i = start; i < n; i += stride) {
        float before = theta[i];
        for (int k = 0; k < program.count; k++) osc::apply_step(program.calls[k], theta, grad, slots, i);
        if (partials != nullptr) {
            double d = (double)theta[i] - (double)before;
            squares += d * d;
        }
    }
    if (partials != nullptr) {
        shared[threadIdx.x] = squares;
        fold_block(shared, threadIdx.x);
        if (threadIdx.x == 0) partials[blockIdx.x] = shared[0];
    }
}

__global__ void view_kernel(osc::Call call, float* out, const float* theta, float* const* slots, int64_t offset,
                            int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = osc::eval_view(call, theta, slots, offset + i);
    }
}

// out = (first ? buffers[0] : out) + the rest, in order; divided by divisor when last.
__global__ void combine_kernel(BufferList buffers, int count, bool first, bool last, float divisor, float* out,
                               int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float sum = first ? buffers.p[0][i] : out[i];
        for (int h = first ? 1 : 0; h < count; h++) sum = sum + buffers.p[h][i];
        if (last && divisor != 1.0f) sum = sum / divisor;
        out[i] = sum;
    }
}

// Launched on the fixed reduction grid: partials[block] = the block's Σ g², in osc's order.
__global__ void squares_kernel(const float* g, int64_t n, double* partials) {
    __shared__ double shared[osc::REDUCE_THREADS];
    shared[threadIdx.x] = osc::strided_squares(g, n, (int64_t)blockIdx.x * blockDim.x + threadIdx.x);
    fold_block(shared, threadIdx.x);
    if (threadIdx.x == 0) partials[blockIdx.x] = shared[0];
}

// One block of REDUCE_BLOCKS threads folds the partials; total = total + the fold (or = it, when reset).
__global__ void fold_kernel(const double* partials, double* total, bool reset) {
    __shared__ double shared[osc::REDUCE_BLOCKS];
    const int t = threadIdx.x;
    shared[t] = partials[t];
    for (int half = osc::REDUCE_BLOCKS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) shared[t] = shared[t] + shared[t + half];
    }
    if (t == 0) *total = reset ? shared[0] : *total + shared[0];
}

constexpr int INGEST_THREADS = 256;
constexpr int THREADS_FOR_SUMS = 256;
constexpr int INGEST_TILE = 4096;

// One block per piece of `piece` elements (the host ingest's chunks): copies src into dst and
// leaves, for each of the 8 lanes (position mod 8 from the piece's start), Σ v² in element order
// (as the host ingest sums them) and the first non-finite element's index, or -1. The block stages
// a tile in shared memory with coalesced loads; 8 threads then fold it in order.
__global__ void ingest_kernel(float* dst, const float* src, int64_t n, int64_t piece, double* sums,
                              long long* firsts) {
    __shared__ float tile[INGEST_TILE];
    const int64_t start = (int64_t)blockIdx.x * piece;
    const int64_t count = n - start < piece ? n - start : piece;
    const int lane = threadIdx.x;
    double sum = 0;
    long long first = -1;
    for (int64_t at = 0; at < count; at += INGEST_TILE) {
        const int here = count - at < INGEST_TILE ? (int)(count - at) : INGEST_TILE;
        __syncthreads();  // the lanes are done with the previous tile
        for (int k = threadIdx.x; k < here; k += blockDim.x) {
            float v = src[start + at + k];
            dst[start + at + k] = v;
            tile[k] = v;
        }
        __syncthreads();
        if (lane < osc::INGEST_LANES) {
            for (int k = lane; k < here; k += osc::INGEST_LANES) {
                double v = tile[k];
                sum += v * v;
                if (first < 0 && !isfinite(v)) first = start + at + k;
            }
        }
    }
    if (lane < osc::INGEST_LANES) {
        sums[blockIdx.x * osc::INGEST_LANES + lane] = sum;
        firsts[blockIdx.x * osc::INGEST_LANES + lane] = first;
    }
}

// dst = src (unless src is null: dst is only read), and sums[0], sums[1] += the 64-bit wrapping sums
// of dst's values' bit patterns, as signed 32-bit integers, at even and at odd positions. Integer
// sums do not depend on the order they are taken in.
__global__ void copy_sums_kernel(float* dst, const float* src, int64_t n, unsigned long long* sums) {
    __shared__ unsigned long long shared[2][THREADS_FOR_SUMS];
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    unsigned long long even = 0, odd = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = src != nullptr ? src[i] : dst[i];
        if (src != nullptr) dst[i] = v;
        unsigned long long bits = (unsigned long long)(long long)__float_as_int(v);
        if (i & 1) odd += bits; else even += bits;
    }
    shared[0][threadIdx.x] = even;
    shared[1][threadIdx.x] = odd;
    for (int half = THREADS_FOR_SUMS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (threadIdx.x < half) {
            shared[0][threadIdx.x] += shared[0][threadIdx.x + half];
            shared[1][threadIdx.x] += shared[1][threadIdx.x + half];
        }
    }
    if (threadIdx.x == 0) {
        atomicAdd(&sums[0], shared[0][0]);
        atomicAdd(&sums[1], shared[1][0]);
    }
}

int blocks_for(int64_t n) {
    int64_t b = (n + THREADS - 1) / THREADS;
    return (int)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

/** Throws CudaException (or OutOfMemoryError) when err is not success; returns whether it was. */
bool check(JNIEnv* env, cudaError_t err, const char* what) {
    if (err == cudaSuccess) return true;
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    std::string message = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
    const char* type = err == cudaErrorMemoryAllocation ? "java/lang/OutOfMemoryError"
                                                        : "dev/optsidecar/server/engine/cuda/CudaException";
    jclass cls = env->FindClass(type);
    if (cls != nullptr) env->ThrowNew(cls, message.c_str());
    return false;
}

template <typename T>
T* ptr(jlong address) { return reinterpret_cast<T*>(static_cast<intptr_t>(address)); }

cudaStream_t stream(jlong s) { return reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(s)); }

/** Reads a program from the Java arrays: per call a code, flag bits, 3 slot indexes and 12 scalars. */
bool read_program(JNIEnv* env, jintArray codes, jintArray flags, jintArray slots, jfloatArray scalars, int from,
                  int count, osc::Program* program) {
    program->count = count;
    for (int k = 0; k < count; k++) {
        osc::Call& c = program->calls[k];
        jint code;
        jint bits;
        env->GetIntArrayRegion(codes, from + k, 1, &code);
        env->GetIntArrayRegion(flags, from + k, 1, &bits);
        env->GetIntArrayRegion(slots, (from + k) * osc::MAX_CALL_SLOTS, osc::MAX_CALL_SLOTS, c.slots);
        env->GetFloatArrayRegion(scalars, (from + k) * osc::MAX_SCALARS, osc::MAX_SCALARS, c.s);
        c.kernel = code;
        c.flags = (uint32_t)bits;
    }
    return !env->ExceptionCheck();
}

}  // namespace

#define JNI_NAME(name) Java_dev_optsidecar_server_engine_cuda_CudaNative_##name

/** Devices visible, or the negated CUDA error (35: no driver, 100: no device). */
OSC_EXPORT jint JNICALL JNI_NAME(deviceCount)(JNIEnv*, jclass) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        cudaGetLastError();
        return -(jint)err;
    }
    return count;
}

OSC_EXPORT jstring JNICALL JNI_NAME(errorName)(JNIEnv* env, jclass, jint code) {
    cudaError_t err = (cudaError_t)code;
    std::string text = std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
    return env->NewStringUTF(text.c_str());
}

/** The native catalogue: one line per kernel, "id|slots|scalars|flags". */
OSC_EXPORT jstring JNICALL JNI_NAME(catalogue)(JNIEnv* env, jclass) {
    std::string out;
    for (const osc::KernelInfo& k : osc::CATALOGUE) {
        out += std::string(k.id) + "|" + k.slots + "|" + k.scalars + "|" + k.flags + "\n";
    }
    return env->NewStringUTF(out.c_str());
}

/** Makes device the calling thread's device and describes it: "name|major|minor|totalBytes|uuid". */
OSC_EXPORT jstring JNICALL JNI_NAME(useDevice)(JNIEnv* env, jclass, jint device) {
    if (!check(env, cudaSetDevice(device), "cudaSetDevice")) return nullptr;
    cudaDeviceProp prop;
    if (!check(env, cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties")) return nullptr;
    // The UUID as nvidia-smi and torch write it: 8-4-4-4-12 lowercase hex digits.
    std::string uuid;
    const char* hex = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) uuid += '-';
        unsigned char b = (unsigned char)prop.uuid.bytes[i];
        uuid += hex[b >> 4];
        uuid += hex[b & 15];
    }
    std::string text = std::string(prop.name) + "|" + std::to_string(prop.major) + "|" + std::to_string(prop.minor)
                       + "|" + std::to_string((unsigned long long)prop.totalGlobalMem) + "|" + uuid;
    return env->NewStringUTF(text.c_str());
}

/**
 * Maps another process's allocation from its cudaIpcMemHandle_t (CUDA_IPC_HANDLE_SIZE bytes) into
 * this one: {device pointer, bytes of the allocation from that pointer on}. The size comes from the
 * driver (cuMemGetAddressRange), so that offsets a client sends are checked against the memory
 * really mapped, never trusted.
 */
OSC_EXPORT jlongArray JNICALL JNI_NAME(ipcOpen)(JNIEnv* env, jclass, jbyteArray handle) {
    cudaIpcMemHandle_t h;
    if (env->GetArrayLength(handle) != (jsize)sizeof(h)) {
        check(env, cudaErrorInvalidValue, "cudaIpcOpenMemHandle: a handle is 64 bytes");
        return nullptr;
    }
    env->GetByteArrayRegion(handle, 0, sizeof(h), reinterpret_cast<jbyte*>(h.reserved));
    void* p = nullptr;
    if (!check(env, cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle")) {
        return nullptr;
    }
    typedef int (*AddressRange)(unsigned long long* base, size_t* size, unsigned long long pointer);
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found;
    unsigned long long base = 0;
    size_t size = 0;
    if (!check(env, cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &entry, 12000, cudaEnableDefault, &found),
               "cudaGetDriverEntryPointByVersion(cuMemGetAddressRange)")
        || found != cudaDriverEntryPointSuccess || entry == nullptr
        || reinterpret_cast<AddressRange>(entry)(&base, &size, (unsigned long long)(uintptr_t)p) != 0) {
        cudaIpcCloseMemHandle(p);
        if (!env->ExceptionCheck()) check(env, cudaErrorInvalidValue, "cuMemGetAddressRange of a mapped handle");
        return nullptr;
    }
    jlong out[2] = {(jlong)(intptr_t)p, (jlong)(base + size - (unsigned long long)(uintptr_t)p)};
    jlongArray result = env->NewLongArray(2);
    if (result != nullptr) env->SetLongArrayRegion(result, 0, 2, out);
    return result;
}

OSC_EXPORT void JNICALL JNI_NAME(ipcClose)(JNIEnv* env, jclass, jlong p) {
    check(env, cudaIpcCloseMemHandle(ptr<void>(p)), "cudaIpcCloseMemHandle");
}

/**
 * Copies n floats from src to dst (src 0: copies nothing) and adds the sums of dst's bit patterns
 * at even and at odd positions to the two 64-bit integers at sums (copy_sums_kernel).
 */
OSC_EXPORT void JNICALL JNI_NAME(copySums)(JNIEnv* env, jclass, jlong dst, jlong src, jlong n, jlong sums, jlong s) {
    if (n == 0) return;
    copy_sums_kernel<<<blocks_for(n), THREADS_FOR_SUMS, 0, stream(s)>>>(ptr<float>(dst), ptr<const float>(src), n,
                                                                        ptr<unsigned long long>(sums));
    check(env, cudaGetLastError(), "copy and sums launch");
}

/**
 * Copies n floats from src to dst on the device and leaves per piece of `piece` elements, per lane,
 * Σ v² (doubles at sums) and the first non-finite index (longs at firsts): INGEST_LANES each.
 */
OSC_EXPORT void JNICALL JNI_NAME(ingest)(JNIEnv* env, jclass, jlong dst, jlong src, jlong n, jlong piece, jlong sums,
                                         jlong firsts, jlong s) {
    if (n == 0) return;
    int64_t pieces = (n + piece - 1) / piece;
    ingest_kernel<<<(unsigned)pieces, INGEST_THREADS, 0, stream(s)>>>(ptr<float>(dst), ptr<const float>(src), n,
                                                                      piece, ptr<double>(sums),
                                                                      ptr<long long>(firsts));
    check(env, cudaGetLastError(), "ingest launch");
}

/** Makes device the calling thread's device (each thread that calls in must, once). */
OSC_EXPORT void JNICALL JNI_NAME(setDevice)(JNIEnv* env, jclass, jint device) {
    check(env, cudaSetDevice(device), "cudaSetDevice");
}

/** Bytes free on the current device. */
OSC_EXPORT jlong JNICALL JNI_NAME(freeBytes)(JNIEnv* env, jclass) {
    size_t free = 0, total = 0;
    if (!check(env, cudaMemGetInfo(&free, &total), "cudaMemGetInfo")) return 0;
    return (jlong)free;
}

OSC_EXPORT jlong JNICALL JNI_NAME(streamCreate)(JNIEnv* env, jclass) {
    cudaStream_t s = nullptr;
    if (!check(env, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate")) return 0;
    return (jlong)(intptr_t)s;
}

OSC_EXPORT void JNICALL JNI_NAME(streamSynchronize)(JNIEnv* env, jclass, jlong s) {
    check(env, cudaStreamSynchronize(stream(s)), "cudaStreamSynchronize");
}

OSC_EXPORT void JNICALL JNI_NAME(streamDestroy)(JNIEnv* env, jclass, jlong s) {
    check(env, cudaStreamDestroy(stream(s)), "cudaStreamDestroy");
}

OSC_EXPORT jlong JNICALL JNI_NAME(malloc)(JNIEnv* env, jclass, jlong bytes) {
    void* p = nullptr;
    if (!check(env, cudaMalloc(&p, bytes < 1 ? 1 : (size_t)bytes), "cudaMalloc")) return 0;
    return (jlong)(intptr_t)p;
}

OSC_EXPORT void JNICALL JNI_NAME(free)(JNIEnv* env, jclass, jlong p) {
    check(env, cudaFree(ptr<void>(p)), "cudaFree");
}

/** Zeroes bytes on the device, in stream order, and waits for it. */
OSC_EXPORT void JNICALL JNI_NAME(zero)(JNIEnv* env, jclass, jlong p, jlong bytes, jlong s) {
    if (check(env, cudaMemsetAsync(ptr<void>(p), 0, (size_t)bytes, stream(s)), "cudaMemsetAsync")) {
        check(env, cudaStreamSynchronize(stream(s)), "cudaStreamSynchronize");
    }
}

/** Page-locked host memory as a direct buffer, so copies to and from the device are DMA. */
OSC_EXPORT jobject JNICALL JNI_NAME(hostAlloc)(JNIEnv* env, jclass, jlong bytes) {
    void* p = nullptr;
    if (!check(env, cudaHostAlloc(&p, (size_t)bytes, cudaHostAllocDefault), "cudaHostAlloc")) return nullptr;
    return env->NewDirectByteBuffer(p, bytes);
}

OSC_EXPORT void JNICALL JNI_NAME(hostFree)(JNIEnv* env, jclass, jobject buffer) {
    check(env, cudaFreeHost(env->GetDirectBufferAddress(buffer)), "cudaFreeHost");
}

OSC_EXPORT jlong JNICALL JNI_NAME(eventCreate)(JNIEnv* env, jclass) {
    cudaEvent_t e = nullptr;
    if (!check(env, cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate")) return 0;
    return (jlong)(intptr_t)e;
}

OSC_EXPORT void JNICALL JNI_NAME(eventSynchronize)(JNIEnv* env, jclass, jlong e) {
    check(env, cudaEventSynchronize(reinterpret_cast<cudaEvent_t>(static_cast<intptr_t>(e))), "cudaEventSynchronize");
}

/** Starts copying bytes from pinned host memory to the device and records event once it is done. */
OSC_EXPORT void JNICALL JNI_NAME(copyIn)(JNIEnv* env, jclass, jlong device, jobject pinned, jlong bytes, jlong s,
                                         jlong event) {
    void* host = env->GetDirectBufferAddress(pinned);
    if (!check(env, cudaMemcpyAsync(ptr<void>(device), host, (size_t)bytes, cudaMemcpyHostToDevice, stream(s)),
               "cudaMemcpyAsync to device")) {
        return;
    }
    check(env, cudaEventRecord(reinterpret_cast<cudaEvent_t>(static_cast<intptr_t>(event)), stream(s)),
          "cudaEventRecord");
}

/** Copies bytes from the device into pinned host memory, after the stream's earlier work, and waits. */
OSC_EXPORT void JNICALL JNI_NAME(copyOut)(JNIEnv* env, jclass, jobject pinned, jlong device, jlong bytes, jlong s) {
    void* host = env->GetDirectBufferAddress(pinned);
    if (check(env, cudaMemcpyAsync(host, ptr<void>(device), (size_t)bytes, cudaMemcpyDeviceToHost, stream(s)),
              "cudaMemcpyAsync to host")) {
        check(env, cudaStreamSynchronize(stream(s)), "cudaStreamSynchronize");
    }
}

OSC_EXPORT void JNICALL JNI_NAME(copyDevice)(JNIEnv* env, jclass, jlong dst, jlong src, jlong bytes, jlong s) {
    check(env, cudaMemcpyAsync(ptr<void>(dst), ptr<void>(src), (size_t)bytes, cudaMemcpyDeviceToDevice, stream(s)),
          "cudaMemcpyAsync on device");
}

/** Writes a table of device pointers (a tensor's slots) into device memory at table, and waits. */
OSC_EXPORT void JNICALL JNI_NAME(writePointers)(JNIEnv* env, jclass, jlong table, jlongArray pointers, jlong s) {
    jsize n = env->GetArrayLength(pointers);
    if (n == 0) return;
    jlong* values = env->GetLongArrayElements(pointers, nullptr);
    cudaError_t err = cudaMemcpyAsync(ptr<void>(table), values, sizeof(jlong) * n, cudaMemcpyHostToDevice, stream(s));
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream(s));
    env->ReleaseLongArrayElements(pointers, values, JNI_ABORT);
    check(env, err, "writing a pointer table");
}

/**
 * Runs a tensor's program: calls [0, count) described by codes, flags, slots (3 a call) and
 * scalars (12 a call), MAX_CALLS to a launch. With updateTotal, adds Σ(θ_after − θ_before)² of
 * the tensor to the device double at updateTotal (partials: REDUCE_BLOCKS doubles of scratch).
 */
OSC_EXPORT void JNICALL JNI_NAME(runProgram)(JNIEnv* env, jclass, jlong theta, jlong grad, jlong slotTable, jlong n,
                                             jintArray codes, jintArray flags, jintArray slots, jfloatArray scalars,
                                             jint count, jlong partials, jlong updateTotal, jlong s) {
    if (n == 0) return;
    for (int from = 0; from < count; from += osc::MAX_CALLS) {
        osc::Program program;
        int here = count - from < osc::MAX_CALLS ? count - from : osc::MAX_CALLS;
        if (!read_program(env, codes, flags, slots, scalars, from, here, &program)) return;
        // The update is measured across the whole program: only a single launch sees θ before and after.
        bool measure = updateTotal != 0 && count <= osc::MAX_CALLS;
        int blocks = measure ? osc::REDUCE_BLOCKS : blocks_for(n);
        program_kernel<<<blocks, THREADS, 0, stream(s)>>>(program, ptr<float>(theta), ptr<const float>(grad),
                                                         ptr<float* const>(slotTable), n,
                                                         measure ? ptr<double>(partials) : nullptr);
        if (!check(env, cudaGetLastError(), "program launch")) return;
        if (measure) {
            fold_kernel<<<1, osc::REDUCE_BLOCKS, 0, stream(s)>>>(ptr<const double>(partials), ptr<double>(updateTotal),
                                                                 false);
            if (!check(env, cudaGetLastError(), "fold launch")) return;
        }
    }
}

/** Computes view call (code, scalars, slots) of elements [offset, offset + n) into out. */
OSC_EXPORT void JNICALL JNI_NAME(runView)(JNIEnv* env, jclass, jlong out, jlong theta, jlong slotTable, jlong offset,
                                          jlong n, jint code, jintArray slots, jfloatArray scalars, jlong s) {
    if (n == 0) return;
    osc::Call call{};
    call.kernel = code;
    env->GetIntArrayRegion(slots, 0, osc::MAX_CALL_SLOTS, call.slots);
    env->GetFloatArrayRegion(scalars, 0, osc::MAX_SCALARS, call.s);
    if (env->ExceptionCheck()) return;
    view_kernel<<<blocks_for(n), THREADS, 0, stream(s)>>>(call, ptr<float>(out), ptr<const float>(theta),
                                                          ptr<float* const>(slotTable), offset, n);
    check(env, cudaGetLastError(), "view launch");
}

/** out = the buffers summed in order, divided by divisor (combine_gradients). */
OSC_EXPORT void JNICALL JNI_NAME(combine)(JNIEnv* env, jclass, jlong out, jlongArray buffers, jfloat divisor, jlong n,
                                          jlong s) {
    jsize count = env->GetArrayLength(buffers);
    for (jsize from = 0; from < count; from += COMBINE_FAN_IN) {
        BufferList list{};
        int here = count - from < COMBINE_FAN_IN ? count - from : COMBINE_FAN_IN;
        jlong addresses[COMBINE_FAN_IN];
        env->GetLongArrayRegion(buffers, from, here, addresses);
        for (int h = 0; h < here; h++) list.p[h] = ptr<const float>(addresses[h]);
        combine_kernel<<<blocks_for(n), THREADS, 0, stream(s)>>>(list, here, from == 0, from + here == count, divisor,
                                                                 ptr<float>(out), n);
        if (!check(env, cudaGetLastError(), "combine launch")) return;
    }
}

/** Σ g² of g[0, n) in the fixed reduction order into the device double at result (not waited for). */
OSC_EXPORT void JNICALL JNI_NAME(sumOfSquares)(JNIEnv* env, jclass, jlong g, jlong n, jlong partials, jlong result,
                                               jlong s) {
    squares_kernel<<<osc::REDUCE_BLOCKS, osc::REDUCE_THREADS, 0, stream(s)>>>(ptr<const float>(g), n,
                                                                             ptr<double>(partials));
    if (!check(env, cudaGetLastError(), "squares launch")) return;
    fold_kernel<<<1, osc::REDUCE_BLOCKS, 0, stream(s)>>>(ptr<const double>(partials), ptr<double>(result), true);
    check(env, cudaGetLastError(), "fold launch");
}
