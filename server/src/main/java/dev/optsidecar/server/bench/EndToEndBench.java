package dev.optsidecar.server.bench;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.engine.cpu.CpuEngine;

import java.util.List;
import java.util.Locale;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The end-to-end table: an in-process server on loopback and the Java client, timing
 * {@link Trainer#step} (gradients out as 1 MiB chunks, RAdam applied, weights streamed back into a
 * float[]). Beside it, alternately, the engine-only RAdam step for the same size on a separate
 * engine with the same threads, so the difference is what transport and copying cost.
 */
final class EndToEndBench {
    /** The engine-only step timed beside each round trip. */
    private static final BenchKernel RADAM = BenchKernel.radam();
    /** Client heap per parameter: the gradient and the weights it receives. */
    private static final int CLIENT_HEAP_PER_ELEMENT = 2 * Float.BYTES;
    /**
     * Steps of a 4 MB model run before the table, so that the gRPC, protobuf and copy paths are
     * compiled before the first measured size; otherwise that size mostly times the JIT.
     */
    private static final int TRANSPORT_WARMUP_PARAMS = 1_000_000;
    private static final int TRANSPORT_WARMUP_STEPS = 60;
    /** Held so that the level set on it lasts: the logging framework keeps loggers only weakly. */
    private static final Logger SERVER_LOG = Logger.getLogger(SocketServer.class.getName());

    private final int threads;
    private final int warmup;
    private final int iterations;

    EndToEndBench(int threads, int warmup, int iterations) {
        this.threads = threads;
        // The server counts steps from 1; RAdam is rectified from step 6 on, so measure from there.
        this.warmup = Math.max(warmup, 5);
        this.iterations = iterations;
    }

    void run(List<Integer> megabytes) throws Exception {
        SERVER_LOG.setLevel(Level.WARNING); // its "serving on" line would land in the middle of the tables
        try (SocketServer server = SocketServer.start("127.0.0.1", 0, threads, Runtime.getRuntime().maxMemory());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port());
             CpuEngine engine = new CpuEngine(threads)) {
            RADAM.warmUpJit(engine);
            measure(client, engine, "bench-transport-warmup", TRANSPORT_WARMUP_PARAMS, TRANSPORT_WARMUP_STEPS, 1);
            System.out.printf(Locale.ROOT, "%nEnd to end: Trainer.step over loopback gRPC, RAdam, one float32 tensor,"
                    + " %d engine threads, after %d warm-up steps of a %d MB model; MB = 10^6 bytes of model%n",
                    threads, TRANSPORT_WARMUP_STEPS, TRANSPORT_WARMUP_PARAMS * Float.BYTES / 1_000_000);
            System.out.println("  round trip MB/s = 2 x model bytes / step time (gradient in + weights out);"
                    + " one way MB/s = model bytes / step time; transport ms = step ms - engine ms");
            String format = "%9s  %8s  %10s  %15s  %12s  %10s  %13s%n";
            System.out.printf(Locale.ROOT, format, "model MB", "params", "step ms", "round trip MB/s", "one way MB/s",
                    "engine ms", "transport ms");
            for (int mb : megabytes) {
                long n = mb * 1_000_000L / Float.BYTES;
                long heap = n * (2L * RADAM.heapPerElement() + CLIENT_HEAP_PER_ELEMENT);
                String shortfall = n > Integer.MAX_VALUE - 8
                        ? "skipped: the client side holds each tensor in one float[]"
                        : Measure.heapShortfall(heap);
                if (shortfall != null) {
                    System.out.printf(Locale.ROOT, "%9d  %s%n", mb, shortfall);
                    continue;
                }
                double[] ms = measure(client, engine, "bench-" + mb + "mb", (int) n, warmup, iterations);
                double bytes = n * (double) Float.BYTES;
                System.out.printf(Locale.ROOT, "%9d  %8s  %10.1f  %15.1f  %12.1f  %10.1f  %13.1f%n", mb,
                        Measure.count(n), ms[0], 2 * bytes / 1e6 / (ms[0] / 1e3), bytes / 1e6 / (ms[0] / 1e3),
                        ms[1], ms[0] - ms[1]);
            }
        }
    }

    /**
     * Registers a model of {@code n} parameters, steps it and the engine-only tensor alternately, and
     * returns their median milliseconds; the model is deleted afterwards.
     */
    private static double[] measure(OptSidecarClient client, CpuEngine engine, String name, int n, int warmup,
                                    int iterations) {
        float[][] grads = {new float[n]};
        float[][] weights = {new float[n]};
        BenchTensor.fillRandom(grads[0], 3);
        BenchTensor.fillRandom(weights[0], 4);
        client.register(ModelSpec.newBuilder()
                .setName(name)
                .addTensors(TensorSpec.newBuilder().setName("w").addShape(n))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("RAdam"))
                .build(), List.of(TensorData.of(weights[0])));
        try (Trainer trainer = client.trainer(name, "bench");
             BenchTensor engineOnly = RADAM.kernelTensor(engine, n)) {
            return Measure.interleaved(warmup, iterations, () -> {
                long start = System.nanoTime();
                trainer.step(grads, weights);
                return (System.nanoTime() - start) / 1e6;
            }, engineOnly::timeStep);
        } finally {
            client.delete(name);
        }
    }
}
