package dev.optsidecar.server.bench;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;

import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.function.DoubleSupplier;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * What durability costs a step: Trainer.step against a server that journals each step (to the
 * operating system, or fsynced to disk) beside the same step against an in-memory server, timed
 * alternately. Snapshots on journal growth are off, so the table shows the journal alone.
 */
final class JournalBench {
    private static final Logger PERSISTENCE_LOG = Logger.getLogger("dev.optsidecar.server");

    private final int threads;
    private final int warmup;
    private final int iterations;

    JournalBench(int threads, int warmup, int iterations) {
        this.threads = threads;
        this.warmup = warmup;
        this.iterations = iterations;
    }

    void run(Path dir, int megabytes) throws Exception {
        PERSISTENCE_LOG.setLevel(Level.WARNING);
        int n = megabytes * 1_000_000 / Float.BYTES;
        System.out.printf(Locale.ROOT, "%nDurability: Trainer.step with the step journal vs in memory, RAdam, %d MB"
                + " model, timed alternately; journal files in %s%n", megabytes, dir);
        String format = "%-16s  %12s  %12s  %10s  %17s%n";
        System.out.printf(Locale.ROOT, format, "journal", "step ms", "memory ms", "ratio", "journal MB/s");
        try (SocketServer memory = SocketServer.start("127.0.0.1", 0, threads, Runtime.getRuntime().maxMemory() / 3);
             OptSidecarClient memoryClient = OptSidecarClient.connect("127.0.0.1:" + memory.port())) {
            DoubleSupplier inMemory = stepper(memoryClient, n);
            for (StepJournal.Sync sync : StepJournal.Sync.values()) {
                Persistence.Options options = new Persistence.Options(dir.resolve(sync.name().toLowerCase(Locale.ROOT)),
                        1, sync, 0, null, false);
                try (SocketServer durable = SocketServer.start("127.0.0.1", 0, threads,
                        Runtime.getRuntime().maxMemory() / 3, options, List.of());
                     OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + durable.port())) {
                    double[] ms = Measure.interleaved(warmup, iterations, stepper(client, n), inMemory);
                    System.out.printf(Locale.ROOT, format, sync.name().toLowerCase(Locale.ROOT),
                            String.format(Locale.ROOT, "%.1f", ms[0]), String.format(Locale.ROOT, "%.1f", ms[1]),
                            String.format(Locale.ROOT, "%.2f", ms[0] / ms[1]),
                            String.format(Locale.ROOT, "%.0f", n * 4.0 / 1e6 / ((ms[0] - ms[1]) / 1e3)));
                }
            }
        }
    }

    /** Registers a model and returns a timed step on it. */
    private static DoubleSupplier stepper(OptSidecarClient client, int n) {
        float[][] grads = {new float[n]};
        float[][] weights = {new float[n]};
        BenchTensor.fillRandom(grads[0], 3);
        BenchTensor.fillRandom(weights[0], 4);
        String name = "journal-bench-" + System.nanoTime();
        client.register(ModelSpec.newBuilder().setName(name)
                .addTensors(TensorSpec.newBuilder().setName("w").addShape(n))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("RAdam")).build(), List.of(TensorData.of(weights[0])));
        Trainer trainer = client.trainer(name, "bench");
        return () -> {
            long start = System.nanoTime();
            trainer.step(grads, weights);
            return (System.nanoTime() - start) / 1e6;
        };
    }
}
