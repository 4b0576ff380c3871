package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.NativeLibrary;

import java.nio.ByteBuffer;

/**
 * The CUDA engine's native library ({@code src/main/cuda/cuda_engine.cu}), shipped in the jar as
 * {@value #LIBRARY_FILE} ({@link NativeLibrary}). Device pointers, streams and events are
 * passed as longs. A failed CUDA call throws {@link CudaException}, or {@link OutOfMemoryError}
 * when memory ran out.
 */
final class CudaNative {
    static final String LIBRARY_FILE = "liboptsidecar_cuda.so";
    /** A library file to load instead of the jar's: the tests' CPU emulation of the CUDA runtime. */
    static final String LIBRARY_PROPERTY = "optsidecar.cuda.library";
    /** {@code cudaErrorInsufficientDriver}: no driver, or one too old for the runtime. */
    static final int ERROR_INSUFFICIENT_DRIVER = 35;
    /** {@code cudaErrorNoDevice}. */
    static final int ERROR_NO_DEVICE = 100;
    /** {@code osc::REDUCE_BLOCKS}: doubles of scratch a measured program or a sum of squares needs. */
    static final int REDUCE_BLOCKS = 1024;

    private CudaNative() {}

    private static String loadFailure;
    private static boolean loaded;

    /**
     * Loads the library once; returns null when it is loaded, else why it cannot be (not in this
     * build, not loadable here).
     */
    static synchronized String load() {
        if (loaded || loadFailure != null) {
            return loadFailure;
        }
        String override = System.getProperty(LIBRARY_PROPERTY);
        if (override != null) {
            System.load(override);
            loaded = true;
            return null;
        }
        loadFailure = NativeLibrary.load(LIBRARY_FILE, "CUDA", "it was built without the CUDA toolkit");
        loaded = loadFailure == null;
        return loadFailure;
    }

    /** Devices visible, or the negated CUDA error code. */
    static native int deviceCount();

    /** "cudaErrorX (description)" of a CUDA error code. */
    static native String errorName(int code);

    /** The native kernel catalogue, "id|slots|scalars|flags" a line. */
    static native String catalogue();

    /** Selects the device for the calling thread and returns "name|major|minor|totalBytes|uuid". */
    static native String useDevice(int device);

    /** Makes {@code device} the calling thread's device. */
    static native void setDevice(int device);

    static native long freeBytes();

    static native long streamCreate();

    static native void streamSynchronize(long stream);

    static native void streamDestroy(long stream);

    static native long malloc(long bytes);

    static native void free(long pointer);

    /** Zeroes {@code bytes} at {@code pointer} in stream order and waits. */
    static native void zero(long pointer, long bytes, long stream);

    /** Page-locked host memory as a direct buffer. */
    static native ByteBuffer hostAlloc(long bytes);

    static native void hostFree(ByteBuffer buffer);

    static native long eventCreate();

    static native void eventSynchronize(long event);

    /** Starts copying the first {@code bytes} of a pinned buffer to the device; {@code event} fires when done. */
    static native void copyIn(long device, ByteBuffer pinned, long bytes, long stream, long event);

    /** Copies {@code bytes} from the device into a pinned buffer after the stream's work, and waits. */
    static native void copyOut(ByteBuffer pinned, long device, long bytes, long stream);

    static native void copyDevice(long dst, long src, long bytes, long stream);

    /** Writes a table of device pointers into device memory and waits. */
    static native void writePointers(long table, long[] pointers, long stream);

    /** Launches a program (see {@link NativeProgram}); with {@code updateTotal}, adds its update's squares there. */
    static native void runProgram(long theta, long grad, long slotTable, long n, int[] codes, int[] flags, int[] slots,
                                  float[] scalars, int count, long partials, long updateTotal, long stream);

    static native void runView(long out, long theta, long slotTable, long offset, long n, int code, int[] slots,
                               float[] scalars, long stream);

    static native void combine(long out, long[] buffers, float divisor, long n, long stream);

    /**
     * Maps another process's device allocation from its {@code cudaIpcMemHandle_t} and returns
     * {device pointer, bytes of the allocation from there}.
     */
    static native long[] ipcOpen(byte[] handle);

    /** Unmaps what {@link #ipcOpen} mapped. */
    static native void ipcClose(long pointer);

    /**
     * Copies {@code n} floats from {@code src} to {@code dst} on the device and leaves, per piece
     * of {@code piece} elements and per each of its {@value #INGEST_LANES} lanes, Σ v² (doubles at
     * {@code sums}) and the first non-finite element's index or -1 (longs at {@code firsts}).
     */
    static native void ingest(long dst, long src, long n, long piece, long sums, long firsts, long stream);

    /**
     * Copies {@code n} floats from {@code src} to {@code dst} ({@code src} 0: none) and adds the
     * 64-bit wrapping sums of {@code dst}'s bit patterns (signed 32-bit) at even and at odd positions
     * to the two longs at {@code sums}.
     */
    static native void copySums(long dst, long src, long n, long sums, long stream);

    /** {@code osc::INGEST_LANES}: the host ingest's lanes (position mod 8 in a chunk). */
    static final int INGEST_LANES = 8;

    /** Σ g² of {@code n} floats in the fixed reduction order, into the device double at {@code result}. */
    static native void sumOfSquares(long g, long n, long partials, long result, long stream);
}
