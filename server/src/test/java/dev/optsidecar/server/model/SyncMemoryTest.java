package dev.optsidecar.server.model;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.Combine;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationMode;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.SidecarFixture;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import static dev.optsidecar.server.SidecarFixture.awaitTrue;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Sync steps share one copy of the new weights among their contributors. However fast the first
 * contributor's weights go out, the copy's memory is given back once, when the last contributor
 * is done with it: after the trainers leave, the server holds exactly what the model itself needs.
 */
class SyncMemoryTest {
    private static final int TRAINERS = 4;
    private static final int STEPS = 150;
    /** One chunk: a contributor's weights go out in a single message, as fast as they can. */
    private static final int PARAMS = 2_000;

    @Test
    @Timeout(60)
    void sharedWeightCopiesAreReleasedOnce() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            long empty = f.server().registry().reservedBytes();
            f.client().register(ModelSpec.newBuilder()
                    .setName("sync-memory")
                    .addTensors(TensorSpec.newBuilder().setName("w").addShape(PARAMS))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("RAdam"))
                    .setCoordination(Coordination.newBuilder().setMode(CoordinationMode.COORDINATION_SYNC)
                            .setSync(SyncOptions.newBuilder().setK(TRAINERS).setCombine(Combine.COMBINE_MEAN)))
                    .build(), List.of(TensorData.of(new float[PARAMS])));
            long modelOnly = f.server().registry().reservedBytes();

            ExecutorService pool = Executors.newFixedThreadPool(TRAINERS);
            CountDownLatch start = new CountDownLatch(TRAINERS);
            List<Future<Long>> applied = new ArrayList<>();
            try {
                for (int i = 0; i < TRAINERS; i++) {
                    String id = "trainer-" + i;
                    float value = 0.01f * (i + 1);
                    applied.add(pool.submit(() -> {
                        float[][] grads = {new float[PARAMS]};
                        float[][] weights = {new float[PARAMS]};
                        java.util.Arrays.fill(grads[0], value);
                        long count = 0;
                        try (OptSidecarClient client = f.connect();
                             Trainer trainer = client.trainer("sync-memory", id)) {
                            start.countDown();
                            start.await();
                            for (int s = 0; s < STEPS; s++) {
                                StepResult r = trainer.step(grads, weights);
                                count += r.getLate() ? 0 : 1;
                            }
                        }
                        return count;
                    }));
                }
                long total = 0;
                for (Future<Long> a : applied) {
                    total += a.get();
                }
                assertEquals((long) TRAINERS * STEPS, total);
            } finally {
                pool.shutdownNow();
            }

            ModelInfo info = f.client().describe("sync-memory");
            assertEquals(STEPS, info.getVersion());
            assertEquals((long) TRAINERS * STEPS, info.getCoordination().getContributionsApplied());
            // The trainers' streams end asynchronously; then their gradient buffers are freed too.
            awaitTrue("the trainers to detach", () -> f.client().describe("sync-memory").getCoordination()
                    .getTrainersCount() == 0);
            // The ledger and History the steps left are counted too.
            long held = modelOnly + f.model("sync-memory").underReadLock(f.model("sync-memory")::recordBytes);
            long deadline = System.nanoTime() + java.util.concurrent.TimeUnit.SECONDS.toNanos(10);
            while (f.server().registry().reservedBytes() != held && System.nanoTime() < deadline) {
                Thread.sleep(2);
            }
            assertEquals(held, f.server().registry().reservedBytes(), "bytes held once the trainers left");
            f.client().delete("sync-memory");
            assertEquals(empty, f.server().registry().reservedBytes());
        }
    }
}
