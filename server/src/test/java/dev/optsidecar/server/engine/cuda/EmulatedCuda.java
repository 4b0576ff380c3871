package dev.optsidecar.server.engine.cuda;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The CUDA engine on this CPU: its Java side as it is, over an emulation of its native library
 * ({@code src/test/cuda/emulated_runtime.cpp}) that runs the real per-element functions and
 * reductions of {@code kernels.h}, compiled with g++. Loaded instead of the jar's library, once per
 * test JVM. Its CUDA IPC handles name this process's memory, or a file whose shared mapping
 * stands for another process's device memory (a trainer process's, in the Python client's tests).
 */
public final class EmulatedCuda {
    private EmulatedCuda() {}

    private static boolean built;

    /** Opens the CUDA engine on the emulated device, with {@code freeBytes} of "device" memory free to it. */
    public static CudaEngine open(long freeBytes) throws Exception {
        load();
        setFreeBytes(freeBytes);
        return CudaEngine.open(0);
    }

    /** Builds the emulation (once per JVM) and makes it the library the engine loads. */
    public static synchronized void load() throws IOException, InterruptedException {
        if (built) {
            return;
        }
        Path server = Path.of(System.getProperty("user.dir"));
        Path out = server.resolve("target/emulated-cuda");
        Files.createDirectories(out);
        Path library = out.resolve("liboptsidecar_cuda_emulated.so");
        String javaHome = System.getProperty("java.home");
        List<String> command = List.of("g++", "-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math",
                "-shared", "-fPIC", "-I" + javaHome + "/include", "-I" + javaHome + "/include/linux",
                "-I" + server.resolve("src/main/cuda"), server.resolve("src/test/cuda/emulated_runtime.cpp").toString(),
                "-o", library.toString());
        Process gxx = new ProcessBuilder(command).redirectErrorStream(true).start();
        String output = new String(gxx.getInputStream().readAllBytes());
        if (!gxx.waitFor(120, TimeUnit.SECONDS) || gxx.exitValue() != 0) {
            throw new IllegalStateException("g++ failed: " + String.join(" ", command) + "\n" + output);
        }
        System.setProperty(CudaNative.LIBRARY_PROPERTY, library.toString());
        String failure = CudaNative.load();
        if (failure != null) {
            throw new IllegalStateException(failure);
        }
        built = true;
    }

    static native void setFreeBytes(long bytes);

    /**
     * A CUDA IPC handle to {@code memory} (a direct buffer: host memory is the emulated device's),
     * as a trainer's process would export one for its allocation; only the emulation opens it.
     */
    public static byte[] ipcHandle(java.nio.ByteBuffer memory) {
        return ipcHandle(address(memory), memory.capacity());
    }

    private static native byte[] ipcHandle(long address, long bytes);

    private static native long address(java.nio.ByteBuffer direct);

    /** IPC mappings open now (each stream that mapped a handle closes its own when it ends). */
    public static native int openIpcMappings();
}
