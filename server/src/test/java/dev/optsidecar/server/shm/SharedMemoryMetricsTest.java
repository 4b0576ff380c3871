package dev.optsidecar.server.shm;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import io.prometheus.metrics.model.snapshots.CounterSnapshot;
import io.prometheus.metrics.model.snapshots.MetricSnapshot;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Steps through a shared segment count their bytes under transport "shm", none under "grpc". */
class SharedMemoryMetricsTest {
    private static final int A = 1000;
    private static final int B = 24;

    @Test
    void segmentStepsAreCountedAsShm(@TempDir Path dir) throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().sharedMemory(dir).start()) {
            f.client().register(TestData.spec("s", "Adam", TestData.hp("lr", 0.01), A, B).build(),
                    TestData.data(TestData.random(A, 1), TestData.random(B, 2)));
            try (Trainer trainer = f.client().trainer("s", "t").useSharedMemory(dir)) {
                for (int t = 1; t <= 3; t++) {
                    trainer.step(new float[][] {TestData.random(A, 10 + t), TestData.random(B, 20 + t)},
                            new float[][] {new float[A], new float[B]});
                }
            }
            var registry = f.server().registry().metrics().registry();
            long stepBytes = (A + B) * 4L;
            assertEquals(3.0 * stepBytes, counter(registry, "optsidecar_step_received_bytes", "shm"));
            assertEquals(3.0 * stepBytes, counter(registry, "optsidecar_step_sent_bytes", "shm"));
            assertEquals(0.0, counter(registry, "optsidecar_step_received_bytes", "grpc"));
        }
    }

    /** The counter's value for model "s" over {@code transport} (0 when it has no such series). */
    private static double counter(io.prometheus.metrics.model.registry.PrometheusRegistry registry, String name,
                                  String transport) {
        double total = 0;
        for (MetricSnapshot snapshot : registry.scrape()) {
            if (!snapshot.getMetadata().getName().equals(name)) {
                continue;
            }
            assertTrue(snapshot instanceof CounterSnapshot, name + " is a counter");
            for (CounterSnapshot.CounterDataPointSnapshot point : ((CounterSnapshot) snapshot).getDataPoints()) {
                if ("s".equals(point.getLabels().get("model")) && transport.equals(point.getLabels().get("transport"))) {
                    total += point.getValue();
                }
            }
        }
        return total;
    }
}
