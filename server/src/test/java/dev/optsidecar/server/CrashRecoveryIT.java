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
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
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
 * a lost or doubled step would show. Hostile requests and snapshots in flight at each kill must
 * neither change the result nor keep the server from starting again.
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

    /** Trials of the SIGKILL test; more with -Doptsidecar.crash.trials=N when hunting a rare failure locally. */
    static final int TRIALS = Integer.getInteger("optsidecar.crash.trials", 4);
    static final int KILLS_PER_TRIAL = 3;

    /**
     * Each trial trains while a killer thread SIGKILLs the server at random moments, several times,
     * and restarts it with --restore latest on the same state directory and port; meanwhile other
     * threads send hostile requests and Snapshot RPCs (see {@link HostileLoad}). The server must
     * come back every time and the trainer must end bit for bit where an uninterrupted run ends.
     */
    @Test
    void sigkillAtRandomMomentsUnderHostileLoadLosesAndDoublesNoStep() throws Exception {
        List<float[]> expected = uninterrupted();
        for (int trial = 0; trial < TRIALS; trial++) {
            long seed = System.nanoTime();
            try {
                trial(expected, tmp.resolve("trial-" + trial), new Random(seed));
            } catch (Throwable e) {
                throw new AssertionError("trial " + trial + " (seed " + seed + ") failed: " + e, e);
            }
        }
    }

    private void trial(List<float[]> expected, Path stateDir, Random random) throws Exception {
        int port = ServerJar.freePort();
        String[] flags = {"--port", Integer.toString(port), "--threads", "2", "--memory-limit", "512m",
                "--state-dir", stateDir.toString(), "--journal", "fsync", "--restore", "latest"};
        AtomicReference<ServerJar> server = new AtomicReference<>(restart(flags));
        AtomicBoolean done = new AtomicBoolean();
        AtomicInteger kills = new AtomicInteger();
        AtomicReference<Throwable> killerFailure = new AtomicReference<>();
        io.grpc.ManagedChannel channel = io.grpc.ManagedChannelBuilder.forTarget("127.0.0.1:" + port).usePlaintext()
                .maxInboundMessageSize(64 << 20).build();
        HostileLoad hostile = new HostileLoad(channel, random.nextLong());
        try (OptSidecarClient client = OptSidecarClient.connect(server.get().target())) {
            awaitServing(channel, server.get());
            client.register(spec("m"), dev.optsidecar.server.durability.SnapshotResumeTest.data(initial()));
            Trainer trainer = client.trainer("m", "crash-test-trainer");
            Thread killer = new Thread(() -> {
                try {
                    while (!done.get() && kills.get() < KILLS_PER_TRIAL) {
                        Thread.sleep(random.nextInt(400));
                        if (done.get()) {
                            break;
                        }
                        server.get().kill();
                        kills.incrementAndGet();
                        server.set(restart(flags));
                        awaitServing(channel, server.get());
                    }
                } catch (Throwable e) {
                    killerFailure.set(e);
                }
            }, "killer");
            hostile.start(3);
            killer.start();
            List<float[]> got;
            try {
                got = train(trainer, initial());
            } finally {
                trainer.close();
                done.set(true);
                killer.join();
                hostile.stop();
            }
            if (killerFailure.get() != null) {
                throw new AssertionError("restarting the server failed", killerFailure.get());
            }
            assertTrue(kills.get() >= 1, "the server was never killed");
            for (int i = 0; i < SIZES.length; i++) {
                assertArrayEquals(expected.get(i), got.get(i), "tensor " + i + " after " + kills.get() + " kills");
            }
            assertEquals(STEPS, describeOnceBack(client).getVersion(), "steps applied after " + kills.get() + " kills");
            assertTrue(hostile.sent() > 0, "no hostile request was sent");
            assertEquals(List.of(), hostile.internalErrors(), "hostile requests answered INTERNAL");

            // Once more, with the hostile requests' leftovers on disk: it still starts, with every step.
            server.get().kill();
            server.set(restart(flags));
            awaitServing(channel, server.get());
            assertEquals(STEPS, describeOnceBack(client).getVersion(), "steps applied after the last restart");
            System.out.printf("crash trial: %d kills, %d hostile requests%n", kills.get() + 1, hostile.sent());
        } finally {
            channel.shutdownNow();
            server.get().close();
        }
    }

    /**
     * A Restore(replace=true) of an earlier snapshot while the trainer steps, with a SIGKILL at a
     * random moment around it: after the restart the model is either the run without the restore or
     * the restored snapshot plus every step acknowledged on it, never a mix (see {@link RestoreRace}).
     */
    @Test
    void sigkillAroundARestoreThatReplacesTheModelKeepsOneTimeline() throws Exception {
        for (int trial = 0; trial < TRIALS; trial++) {
            long seed = System.nanoTime();
            try {
                System.out.println(RestoreRace.trial(tmp.resolve("restore-" + trial), new Random(seed)));
            } catch (Throwable e) {
                throw new AssertionError("trial " + trial + " (seed " + seed + ") failed: " + e, e);
            }
        }
    }

    /**
     * Starts the server, retrying only while the port is still held by the one just killed: any
     * other failure to start (a restore that exits) fails the test with what the server printed.
     */
    static ServerJar restart(String... flags) throws IOException, InterruptedException {
        for (int attempt = 0; ; attempt++) {
            try {
                return ServerJar.start(flags);
            } catch (IllegalStateException e) {
                if (attempt == 50 || !String.valueOf(e.getMessage()).contains("Address already in use")) {
                    throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    /** Waits until the restarted server reports SERVING (its restore done); fails if it exits meanwhile. */
    static void awaitServing(io.grpc.ManagedChannel channel, ServerJar server) throws InterruptedException {
        long deadline = System.nanoTime() + 60_000_000_000L;
        HealthGrpc.HealthBlockingStub health = HealthGrpc.newBlockingStub(channel);
        while (true) {
            if (!server.process().isAlive()) {
                throw new AssertionError("the server exited with " + server.process().exitValue() + " after a restart:\n"
                        + String.join("\n", server.log()));
            }
            try {
                ServingStatus status = health.withDeadlineAfter(2, TimeUnit.SECONDS)
                        .check(HealthCheckRequest.getDefaultInstance()).getStatus();
                if (status == ServingStatus.SERVING) {
                    return;
                }
            } catch (StatusRuntimeException e) {
                // not listening yet
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("the server did not report SERVING within 60 s:\n" + String.join("\n", server.log()));
            }
            Thread.sleep(50);
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
