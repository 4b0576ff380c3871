package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.snapshot.SnapshotStore;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Crash safety of the packaged server: killed with SIGKILL at random moments of a training run
 * and restarted with --restore latest, it lets the client finish with weights bit for bit equal to
 * an uninterrupted run. Each step's gradient depends on the weights the previous step returned, so
 * a lost or doubled step would show.
 */
class CrashRecoveryIT {
    static final long[] SIZES = {200_000, 17};
    static final int STEPS = 40;

    @TempDir
    Path tmp;

    static ModelSpec spec(String name) {
        ModelSpec.Builder b = TestData.spec(name, "RAdamScheduleFree", TestData.hp("lr", 0.01, "weight_decay", 0.01), SIZES);
        b.getOptimizerBuilder().addEma(EmaShadow.newBuilder().setDecay(0.9));
        return b.build();
    }

    /** Trains {@code STEPS} steps; each gradient is a function of the weights and the step number. */
    static List<float[]> train(Trainer t, List<float[]> weights) {
        for (int step = 1; step <= STEPS; step++) {
                List<float[]> grads = new ArrayList<>();
                for (int i = 0; i < SIZES.length; i++) {
                    float[] w = weights.get(i);
                    float[] noise = TestData.random(w.length, 31L * step + i);
                    float[] g = new float[w.length];
                    for (int k = 0; k < g.length; k++) {
                        g[k] = 0.5f * w[k] + noise[k];
                    }
                    grads.add(g);
                }
                StepResult r = t.step(grads.stream().map(TensorData::of).toList(),
                        weights.stream().map(TensorData::of).toList());
                assertEquals(step, r.getVersion(), "version after step " + step);
        }
        return weights;
    }

    static List<float[]> initial() {
        List<float[]> w = new ArrayList<>();
        for (int i = 0; i < SIZES.length; i++) {
            w.add(TestData.random((int) SIZES[i], 100 + i));
        }
        return w;
    }

    static List<float[]> uninterrupted() throws Exception {
        try (SocketServer server = SocketServer.start("127.0.0.1", 0, 2, 1L << 28);
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            client.register(spec("m"), dev.optsidecar.server.durability.SnapshotResumeTest.data(initial()));
            try (Trainer t = client.trainer("m", "crash-test-trainer")) {
                return train(t, initial());
            }
        }
    }

    @RepeatedTest(10)
    void sigkillAtRandomMomentsLosesAndDoublesNoStep() throws Exception {
        List<float[]> expected = uninterrupted();
        int port = ServerJar.freePort();
        String[] flags = {"--port", Integer.toString(port), "--threads", "2", "--memory-limit", "512m",
                "--state-dir", tmp.toString(), "--journal", "fsync", "--restore", "latest"};
        AtomicReference<ServerJar> server = new AtomicReference<>(ServerJar.startRetrying(flags));
        AtomicBoolean done = new AtomicBoolean();
        AtomicInteger kills = new AtomicInteger();
        AtomicReference<Throwable> killerFailure = new AtomicReference<>();
        Random random = new Random();
        try (OptSidecarClient client = OptSidecarClient.connect(server.get().target())) {
            client.register(spec("m"), dev.optsidecar.server.durability.SnapshotResumeTest.data(initial()));
            Trainer trainer = client.trainer("m", "crash-test-trainer");
            Thread killer = new Thread(() -> {
                try {
                    while (!done.get() && kills.get() < 3) {
                        Thread.sleep(random.nextInt(400));
                        if (done.get()) {
                            break;
                        }
                        server.get().kill();
                        kills.incrementAndGet();
                        server.set(ServerJar.startRetrying(flags));
                    }
                } catch (Throwable e) {
                    killerFailure.set(e);
                }
            }, "killer");
            killer.start();
            List<float[]> got;
            try {
                got = train(trainer, initial());
            } finally {
                trainer.close();
                done.set(true);
                killer.join();
            }
            assertNull(killerFailure.get(), "restarting the server failed");
            assertTrue(kills.get() >= 1, "the server was never killed");
            for (int i = 0; i < SIZES.length; i++) {
                assertArrayEquals(expected.get(i), got.get(i), "tensor " + i + " after " + kills.get() + " kills");
            }
            assertEquals(STEPS, describeOnceBack(client).getVersion(), "steps applied after " + kills.get() + " kills");
        } finally {
            server.get().close();
        }
    }

    /** Describe, waiting for a server that was just restarted. */
    static dev.optsidecar.proto.v1.ModelInfo describeOnceBack(OptSidecarClient client) throws InterruptedException {
        long deadline = System.nanoTime() + 20_000_000_000L;
        while (true) {
            try {
                return client.describe("m");
            } catch (StatusRuntimeException e) {
                if (e.getStatus().getCode() != Status.Code.UNAVAILABLE || System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    @Test
    void sigtermSnapshotsAndEndsIdleStreamsWithUnavailable() throws Exception {
        String dir = tmp.toString();
        ServerJar first = ServerJar.start("--port", "0", "--state-dir", dir, "--journal", "off");
        float[][] weights = initial().toArray(new float[0][]);
        float[][] zeros = {new float[(int) SIZES[0]], new float[(int) SIZES[1]]};
        try (OptSidecarClient client = OptSidecarClient.connect(first.target())) {
            client.register(spec("m"), dev.optsidecar.server.durability.SnapshotResumeTest.data(List.of(weights)));
            Trainer idle = client.trainer("m", "idle").retryFor(java.time.Duration.ZERO);
            try (Trainer t = client.trainer("m", "t")) {
                for (int step = 1; step <= 5; step++) {
                    t.step(zeros, weights);
                }
            }
            idle.step(zeros, weights); // its stream stays open, idle, until the shutdown
            assertEquals(143, first.terminate()); // the JVM's exit code for SIGTERM after its shutdown hooks
            StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> idle.step(zeros, weights));
            assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode(), e.toString());
        }
        List<SnapshotInfo> saved = new SnapshotStore(tmp, 3).list("m");
        SnapshotInfo last = saved.get(saved.size() - 1);
        assertEquals("shutdown", last.getTrigger());
        assertEquals(6, last.getVersion()); // with no journal, only the shutdown snapshot holds the 6 steps
        try (ServerJar second = ServerJar.start("--port", "0", "--state-dir", dir, "--restore", "latest");
             OptSidecarClient client = OptSidecarClient.connect(second.target())) {
            assertEquals(6, client.describe("m").getVersion());
            float[][] restored = {new float[(int) SIZES[0]], new float[(int) SIZES[1]]};
            client.pull("m", dev.optsidecar.server.durability.SnapshotResumeTest.data(List.of(restored)));
            for (int i = 0; i < SIZES.length; i++) {
                assertArrayEquals(weights[i], restored[i], "tensor " + i);
            }
        }
    }
}
