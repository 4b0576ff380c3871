package dev.optsidecar.server.engine.cuda;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The CUDA engine's per-element functions ({@code src/main/cuda/kernels.h}) compiled for this CPU
 * with g++ ({@code src/test/cuda/host_kernels.cpp}), as the device build compiles them: no
 * contraction of a multiply and an add, no fast math.
 */
final class HostKernels {
    private HostKernels() {}

    private static boolean loaded;

    /** Compiles the harness into {@code target/host-kernels} (once per JVM) and loads it. */
    static synchronized void load() throws IOException, InterruptedException {
        if (loaded) {
            return;
        }
        Path server = Path.of(System.getProperty("user.dir"));
        Path out = server.resolve("target/host-kernels");
        Files.createDirectories(out);
        Path library = out.resolve("libosc_host_kernels.so");
        String javaHome = System.getProperty("java.home");
        List<String> command = List.of("g++", "-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math",
                "-shared", "-fPIC", "-I" + javaHome + "/include", "-I" + javaHome + "/include/linux",
                "-I" + server.resolve("src/main/cuda"), server.resolve("src/test/cuda/host_kernels.cpp").toString(),
                "-o", library.toString());
        Process gxx = new ProcessBuilder(command).redirectErrorStream(true).start();
        String output = new String(gxx.getInputStream().readAllBytes());
        if (!gxx.waitFor(120, TimeUnit.SECONDS) || gxx.exitValue() != 0) {
            throw new IllegalStateException("g++ failed: " + String.join(" ", command) + "\n" + output);
        }
        System.load(library.toString());
        loaded = true;
    }

    static native String catalogue();

    /** Runs the encoded calls, every call on element i before any on i + 1. */
    static native void runProgram(int[] codes, int[] flags, int[] slots, float[] scalars, int count, float[] theta,
                                  float[] grad, float[][] state);

    static native void runView(int code, int[] slots, float[] scalars, float[] theta, float[][] state, float[] out);

    static native float[] combine(float[][] buffers, float divisor);

    /** Σ g² in the order the device's reduction adds (osc::sum_squares_in_order). */
    static native double sumOfSquaresInOrder(float[] g);
}
