package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotInfo;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.IntStream;

import static dev.optsidecar.server.CrashRecoveryIT.SIZES;
import static dev.optsidecar.server.CrashRecoveryIT.awaitServing;
import static dev.optsidecar.server.CrashRecoveryIT.describeOnceBack;
import static dev.optsidecar.server.CrashRecoveryIT.initial;
import static dev.optsidecar.server.CrashRecoveryIT.restart;
import static dev.optsidecar.server.CrashRecoveryIT.spec;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * One trial of a Restore(replace=true) of an earlier snapshot raced against a trainer's steps and
 * a SIGKILL at a random moment around it. Step k's gradient depends only on k, so the weights tell
 * which steps a model took, in which order. After the restart with --restore latest the model must
 * be one of two things: the run without the restore (every acknowledged step in it, and the
 * Restore never acknowledged), or the restored snapshot plus exactly the steps acknowledged on
 * the restored model; the versions the trainer was told show which.
 */
final class RestoreRace {
    static final int STEPS = 30;
    /** The snapshot restored is taken after this step. */
    static final int SNAPSHOT_AFTER = 5;
    /** The Restore is sent once this step is acknowledged; the trainer goes on stepping. */
    static final int RESTORE_AFTER = 10;
    /** The kill comes this long at most after the Restore is sent: before, during or after it. */
    static final int KILL_WITHIN_MS = 600;

    private RestoreRace() {}

    static List<float[]> gradient(int k) {
        List<float[]> g = new ArrayList<>();
        for (int i = 0; i < SIZES.length; i++) {
            g.add(TestData.random((int) SIZES[i], 7919L * k + i));
        }
        return g;
    }

    /** Weights after the steps {@code ks}, in order, from the initial weights, on a server of its own. */
    static List<float[]> reference(List<Integer> ks) throws Exception {
        try (SocketServer server = SocketServer.start("127.0.0.1", 0, 2, 1L << 28);
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            client.register(spec("m"), TestData.data(initial().toArray(new float[0][])));
            List<float[]> weights = initial();
            try (Trainer t = client.trainer("m", "reference")) {
                for (int k : ks) {
                    t.computedAt(0).step(TestData.data(gradient(k).toArray(new float[0][])),
                            TestData.data(weights.toArray(new float[0][])));
                }
            }
            return weights;
        }
    }

    /** Runs one trial in {@code stateDir}; returns a line describing how it went. */
    static String trial(Path stateDir, Random random) throws Exception {
        int port = ServerJar.freePort();
        String[] flags = {"--port", Integer.toString(port), "--threads", "2", "--memory-limit", "512m",
                "--state-dir", stateDir.toString(), "--journal", "fsync", "--restore", "latest"};
        AtomicReference<ServerJar> server = new AtomicReference<>(restart(flags));
        ManagedChannel channel = ManagedChannelBuilder.forTarget("127.0.0.1:" + port).usePlaintext().build();
        AtomicBoolean restoreAcknowledged = new AtomicBoolean();
        AtomicLong restoreMs = new AtomicLong(-1);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        try (OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + port)) {
            awaitServing(channel, server.get());
            client.register(spec("m"), TestData.data(initial().toArray(new float[0][])));
            Steps steps = new Steps(client);
            steps.upTo(SNAPSHOT_AFTER);
            SnapshotInfo restored = client.snapshot("m");
            assertEquals(SNAPSHOT_AFTER, restored.getVersion());
            steps.upTo(RESTORE_AFTER);

            Thread restorer = new Thread(() -> {
                long start = System.nanoTime();
                try {
                    client.restore(RestoreRequest.newBuilder().setModel("m").setId(restored.getId()).setReplace(true).build());
                    restoreAcknowledged.set(true);
                    restoreMs.set((System.nanoTime() - start) / 1_000_000);
                } catch (StatusRuntimeException e) {
                    // Killed while it ran (UNAVAILABLE, or UNKNOWN when the connection closes as the call starts).
                    Status.Code code = e.getStatus().getCode();
                    if (code != Status.Code.UNAVAILABLE && code != Status.Code.UNKNOWN) {
                        failure.compareAndSet(null, e);
                    }
                }
            }, "restorer");
            int killAfterMs = random.nextInt(KILL_WITHIN_MS);
            Thread killer = new Thread(() -> {
                try {
                    Thread.sleep(killAfterMs);
                    server.get().kill();
                    server.set(restart(flags));
                    awaitServing(channel, server.get());
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            }, "killer");
            restorer.start();
            killer.start();
            try {
                steps.upTo(STEPS);
            } finally {
                restorer.join();
                killer.join();
                steps.close();
            }
            if (failure.get() != null) {
                throw new AssertionError("the Restore or the restart failed", failure.get());
            }
            // Once more, to read what is durable, not what was in memory.
            server.get().kill();
            server.set(restart(flags));
            awaitServing(channel, server.get());
            ModelInfo info = describeOnceBack(client);
            List<float[]> got = new ArrayList<>();
            for (long n : SIZES) {
                got.add(new float[(int) n]);
            }
            client.pull("m", TestData.data(got.toArray(new float[0][])));

            List<Integer> applied = appliedSteps(steps.versions, info.getVersion(), restoreAcknowledged.get());
            assertEquals(applied.size(), info.getVersion(), "version after the restart; steps acknowledged at "
                    + steps.versions);
            List<float[]> expected = reference(applied);
            for (int i = 0; i < SIZES.length; i++) {
                assertArrayEquals(expected.get(i), got.get(i), "tensor " + i + "; steps acknowledged at versions "
                        + steps.versions + ", restore acknowledged: " + restoreAcknowledged.get());
            }
            return String.format("restore race: killed %d ms after the Restore was sent (%s), steps acknowledged at"
                    + " versions %s", killAfterMs, restoreMs.get() < 0 ? "not acknowledged"
                    : "acknowledged after " + restoreMs.get() + " ms", steps.versions);
        } finally {
            channel.shutdownNow();
            server.get().close();
        }
    }

    /**
     * The steps the model must hold, in order, given the version each step was acknowledged at:
     * 1, 2, ... on the run without the restore; the snapshot's version + 1, + 2, ... from the first
     * step acknowledged on the restored model. Anything else is a lost, doubled or mixed step.
     */
    static List<Integer> appliedSteps(List<Long> versions, long finalVersion, boolean restoreAcknowledged) {
        int firstRestored = -1;
        for (int k = 1; k <= versions.size(); k++) {
            long v = versions.get(k - 1);
            if (firstRestored < 0 && v == k) {
                continue;
            }
            if (firstRestored < 0) {
                firstRestored = k;
            }
            assertEquals(SNAPSHOT_AFTER + 1 + (k - firstRestored), v,
                    "step " + k + " neither continues the run nor the restored snapshot: " + versions);
        }
        if (firstRestored < 0 && finalVersion == SNAPSHOT_AFTER) {
            return IntStream.rangeClosed(1, SNAPSHOT_AFTER).boxed().toList(); // restored after the last step
        }
        if (firstRestored < 0) {
            assertFalse(restoreAcknowledged, "the Restore was acknowledged but the model is the run without it");
            return IntStream.rangeClosed(1, versions.size()).boxed().toList();
        }
        assertTrue(firstRestored > RESTORE_AFTER, "a step before the Restore was sent went to the restored model");
        List<Integer> out = new ArrayList<>(IntStream.rangeClosed(1, SNAPSHOT_AFTER).boxed().toList());
        out.addAll(IntStream.rangeClosed(firstRestored, versions.size()).boxed().toList());
        return out;
    }

    /**
     * The trainer: step k until acknowledged, through kills (the Trainer retries those) and the
     * model being replaced under it (a new Trainer sends the step again).
     */
    private static final class Steps implements AutoCloseable {
        final List<Long> versions = new ArrayList<>();
        private final OptSidecarClient client;
        private Trainer trainer;

        Steps(OptSidecarClient client) {
            this.client = client;
        }

        void upTo(int last) throws InterruptedException {
            List<float[]> weights = initial();
            long deadline = System.nanoTime() + 60_000_000_000L;
            while (versions.size() < last) {
                int k = versions.size() + 1;
                try {
                    if (trainer == null) {
                        trainer = client.trainer("m", "t");
                    }
                    long v = trainer.computedAt(0).step(TestData.data(gradient(k).toArray(new float[0][])),
                            TestData.data(weights.toArray(new float[0][]))).getVersion();
                    versions.add(v);
                } catch (StatusRuntimeException e) {
                    // The model was replaced under the stream (or is not back yet): not applied; again.
                    if (System.nanoTime() > deadline) {
                        fail("step " + k + " was not acknowledged within 60 s: " + e);
                    }
                    close();
                    Thread.sleep(5);
                }
            }
        }

        @Override
        public void close() {
            if (trainer != null) {
                trainer.close();
                trainer = null;
            }
        }
    }
}
