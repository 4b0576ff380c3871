package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.RegisterEnd;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.SidecarFixture.awaitTrue;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Every byte a client can make the server hold is counted against the memory limit, and bounded. */
class LimitsTest {
    /** A model of {@code n} one-element tensors: almost nothing but metadata. */
    private static ModelSpec manyTinyTensors(String name, int n) {
        ModelSpec.Builder b = ModelSpec.newBuilder().setName(name)
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("Adam").setHyperparameters(struct("lr", 0.01)));
        for (int i = 0; i < n; i++) {
            b.addTensors(TensorSpec.newBuilder().setName("t" + i).addShape(1));
        }
        return b.build();
    }

    /** A Register stream that has sent its spec and nothing else; {@code done} completes when the server ends it. */
    private static StreamObserver<RegisterRequest> openRegistration(SidecarFixture f, ModelSpec spec,
                                                                    CompletableFuture<Status> done) {
        StreamObserver<RegisterRequest> req = f.async().register(new RegisterEnd(done));
        req.onNext(RegisterRequest.newBuilder().setSpec(spec).build());
        return req;
    }

    private static Status await(CompletableFuture<Status> done) throws Exception {
        return done.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS);
    }

    /** One step of a fresh stream as {@code clientId}, half-closed; its result. */
    private static StepResponse step(SidecarFixture f, String model, String clientId, long stepId, int k) {
        RawStep s = RawStep.openAs(f.async(), model, clientId).all(stepId, grads(k)).commit(stepId, ViewKind.VIEW_NONE)
                .halfClose();
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        return s.responses.get(s.responses.size() - 1);
    }

    private static long held(SidecarFixture f) {
        return f.server().registry().reservedBytes();
    }

    @Test
    void tensorMetadataCountsAgainstTheMemoryLimit() throws Exception {
        // 60 000 one-element Adam tensors hold under 1 MB of floats, but far more than 32 MB of heap.
        try (SidecarFixture f = SidecarFixture.inProcess(32L << 20).start()) {
            CompletableFuture<Status> done = new CompletableFuture<>();
            StreamObserver<RegisterRequest> req = openRegistration(f, manyTinyTensors("tiny", 60_000), done);
            assertStatus(Status.Code.RESOURCE_EXHAUSTED, await(done), "'tiny'", "--memory-limit");
            req.onCompleted();
            assertEquals(0, held(f));
            assertEquals(0, f.server().registry().pendingRegistrations());
        }
    }

    @Test
    void aPendingRegistrationHoldsItsBytesUntilCancelled() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            CompletableFuture<Status> done = new CompletableFuture<>();
            StreamObserver<RegisterRequest> req = openRegistration(f, manyTinyTensors("pending", 1000), done);
            awaitTrue("the spec's bytes to be reserved", () -> held(f) >= 1000 * MemoryEstimates.TENSOR_BYTES);
            assertEquals(1, f.server().registry().pendingRegistrations());
            req.onError(new RuntimeException("client gives up"));
            awaitTrue("the pending registration's bytes to be released",
                    () -> held(f) == 0 && f.server().registry().pendingRegistrations() == 0);
        }
    }

    /** A registration whose client goes silent is dropped after the idle timeout, and its bytes and place come back. */
    @Test
    void anIdleRegistrationIsDroppedAndItsBytesReleased() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess()
                .limits(Limits.DEFAULTS.withIdleStreamTimeout(Duration.ofMillis(300))).start()) {
            CompletableFuture<Status> done = new CompletableFuture<>();
            openRegistration(f, manyTinyTensors("silent", 1000), done);
            awaitTrue("the spec's bytes to be reserved", () -> held(f) >= 1000 * MemoryEstimates.TENSOR_BYTES);
            Status closed = done.get(10, TimeUnit.SECONDS);
            assertEquals(Status.Code.DEADLINE_EXCEEDED, closed.getCode(), closed::toString);
            assertTrue(closed.getDescription().contains("--idle-stream-timeout"), closed::toString);
            awaitTrue("the registration's bytes and place to come back",
                    () -> held(f) == 0 && f.server().registry().pendingRegistrations() == 0);
            // One that keeps sending is not idle.
            f.client().register(StandardModel.adamSpec("prompt"), tensors(initialWeights(1)));
            assertEquals(0, f.describe("prompt").getVersion());
        }
    }

    @Test
    void concurrentPendingRegistrationsAreBounded() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess()
                .limits(Limits.DEFAULTS.withMaxPendingRegistrations(2)).start()) {
            List<StreamObserver<RegisterRequest>> open = new ArrayList<>();
            for (int i = 0; i < 2; i++) {
                open.add(openRegistration(f, StandardModel.adamSpec("p" + i), new CompletableFuture<>()));
            }
            awaitTrue("two registrations under way", () -> f.server().registry().pendingRegistrations() == 2);
            assertStatus(Status.Code.RESOURCE_EXHAUSTED,
                    () -> f.client().register(StandardModel.adamSpec("third"), tensors(initialWeights(1))),
                    "--max-pending-registrations");
            open.forEach(r -> r.onError(new RuntimeException("client gives up")));
            awaitTrue("the registrations to end", () -> f.server().registry().pendingRegistrations() == 0);
            f.client().register(StandardModel.adamSpec("third"), tensors(initialWeights(1)));
            assertEquals(0, f.server().registry().pendingRegistrations());
        }
    }

    @Test
    void tensorsPerModelAreBounded() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withMaxTensorsPerModel(2)).start()) {
            assertStatus(Status.Code.RESOURCE_EXHAUSTED,
                    () -> f.client().register(StandardModel.adamSpec("three"), tensors(initialWeights(1))),
                    "spec.tensors", "'three'", "3 tensors", "--max-tensors-per-model");
            assertEquals(0, held(f));
        }
    }

    @Test
    void clientIdsAreBounded() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(StandardModel.adamSpec("ids"), tensors(initialWeights(1)));
            RawStep tooLong = RawStep.openAs(f.async(), "ids", "x".repeat(257));
            assertStatus(Status.Code.INVALID_ARGUMENT, tooLong.awaitClose(), "open.client_id", "257 bytes",
                    "--max-client-id-bytes");
            StepResponse ok = step(f, "ids", "x".repeat(256), 1, 1);
            assertEquals(1, ok.getResult().getVersion());
        }
    }

    @Test
    void trainersPerModelAreBounded() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withMaxTrainersPerModel(2)).start()) {
            f.client().register(StandardModel.adamSpec("crowded"), tensors(initialWeights(1)));
            RawStep a = RawStep.open(f.async(), "crowded");
            RawStep b = RawStep.open(f.async(), "crowded");
            awaitTrue("two trainers attached",
                    () -> f.client().describe("crowded").getCoordination().getTrainersCount() == 2);
            RawStep c = RawStep.open(f.async(), "crowded");
            assertStatus(Status.Code.RESOURCE_EXHAUSTED, c.awaitClose(), "open.model", "'crowded'",
                    "--max-trainers-per-model");
            a.halfClose();
            a.awaitClose();
            awaitTrue("one trainer attached",
                    () -> f.client().describe("crowded").getCoordination().getTrainersCount() == 1);
            assertEquals(1, step(f, "crowded", "late", 1, 1).getResult().getVersion());
            b.halfClose();
        }
    }

    @Test
    void theLedgerForgetsTheLongestInactiveClientsAndCountsItsBytes() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withMaxLedgerEntries(3)).start()) {
            f.client().register(StandardModel.adamSpec("ledger"), tensors(initialWeights(1)));
            long modelOnly = held(f);
            for (int i = 0; i < 5; i++) {
                step(f, "ledger", "client-" + i, 1, i);
            }
            Model m = f.model("ledger");
            List<String> remembered = new ArrayList<>();
            f.describe("ledger").getState().getClientsList().forEach(p -> remembered.add(p.getClientId()));
            assertEquals(List.of("client-2", "client-3", "client-4"), remembered);
            awaitTrue("the trainers to leave", () -> held(f) == modelOnly + m.underReadLock(m::recordBytes));
            assertTrue(m.underReadLock(() -> m.ledger().bytes()) > 0);

            // A forgotten client's retry is a new client's step: applied again.
            StepResponse again = step(f, "ledger", "client-0", 1, 0);
            assertFalse(again.getResult().getReplayed());
            assertEquals(6, again.getResult().getVersion());
            // A remembered one's is answered from the ledger.
            assertTrue(step(f, "ledger", "client-4", 1, 4).getResult().getReplayed());

            f.client().delete("ledger");
            assertEquals(0, held(f));
        }
    }

    @Test
    void historyIsBoundedInVersionsAndBytes() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withHistory(4, 1 << 20)).start()) {
            f.client().register(StandardModel.adamSpec("h"), tensors(initialWeights(1)));
            for (int i = 1; i <= 6; i++) {
                step(f, "h", "h", i, i);
            }
            var versions = f.blocking().history(HistoryRequest.newBuilder().setModel("h").build()).getVersionsList();
            assertEquals(List.of(3L, 4L, 5L, 6L), versions.stream().map(v -> v.getVersion()).toList());
        }
        long limit = 3 * (2 * MemoryEstimates.ENTRY_BYTES + 64);
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withHistory(1000, limit)).start()) {
            f.client().register(StandardModel.adamSpec("hb"), tensors(initialWeights(1)));
            for (int i = 1; i <= 6; i++) {
                step(f, "hb", "hb", i, i);
            }
            Model m = f.model("hb");
            int kept = f.blocking().history(HistoryRequest.newBuilder().setModel("hb").build()).getVersionsCount();
            assertTrue(kept >= 1 && kept <= 3, kept + " versions kept");
            long bytes = m.underReadLock(() -> m.history().bytes());
            assertTrue(bytes > 0 && bytes <= limit, bytes + " bytes of history");
            assertEquals(f.describe("hb").getMemoryBytes(), held(f));
            f.client().delete("hb");
            assertEquals(0, held(f));
        }
    }

    /** A Trainer paused past the idle timeout between steps (an evaluation pass) goes on with a new stream. */
    @Test
    void aTrainerPausedPastTheIdleTimeoutGoesOn() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess()
                .limits(Limits.DEFAULTS.withIdleStreamTimeout(Duration.ofMillis(300))).start()) {
            f.client().register(StandardModel.adamSpec("paused"), tensors(initialWeights(1)));
            try (dev.optsidecar.client.Trainer t = f.client().trainer("paused", "pausing")) {
                dev.optsidecar.client.Trainer.StepOptions noWeights =
                        new dev.optsidecar.client.Trainer.StepOptions().view(ViewKind.VIEW_NONE);
                t.step(tensors(grads(1)), null, noWeights);
                Thread.sleep(900); // the server closes the idle stream meanwhile
                assertEquals(2, t.step(tensors(grads(2)), null, noWeights).getVersion());
            }
        }
    }

    @Test
    void anIdleStepStreamIsClosedAndItsBuffersFreed() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess()
                .limits(Limits.DEFAULTS.withIdleStreamTimeout(Duration.ofMillis(300))).start()) {
            f.client().register(StandardModel.adamSpec("idle"), tensors(initialWeights(1)));
            long modelOnly = held(f);
            // Half a step: the trainer's gradient buffers are allocated, then it goes silent.
            RawStep s = RawStep.open(f.async(), "idle").tensor(1, grads(1), 2);
            awaitTrue("the trainer's buffers to be reserved", () -> held(f) > modelOnly);
            assertStatus(Status.Code.DEADLINE_EXCEEDED, s.awaitClose(), "--idle-stream-timeout");
            awaitTrue("the buffers to be released", () -> held(f) == modelOnly);

            // A stream that keeps sending is not idle, however long it lives.
            RawStep busy = RawStep.open(f.async(), "idle");
            for (int i = 1; i <= 4; i++) {
                busy.all(i, grads(i)).commit(i, ViewKind.VIEW_NONE);
                Thread.sleep(150);
            }
            busy.halfClose();
            assertEquals(Status.Code.OK, busy.awaitClose().getCode());
            assertEquals(4, f.describe("idle").getVersion());

            // Waiting for a sync step's other contributions is the server's turn, not idleness.
            f.client().register(StandardModel.adamSpec("idle-sync").toBuilder()
                    .setCoordination(TestData.sync(2, 0, 0)).build(), tensors(initialWeights(1)));
            RawStep first = RawStep.openAs(f.async(), "idle-sync", "first").all(1, grads(1))
                    .commit(1, ViewKind.VIEW_NONE);
            Thread.sleep(700);
            assertFalse(first.isClosed(), "a trainer waiting for a sync step was closed as idle");
            assertEquals(1, step(f, "idle-sync", "second", 1, 2).getResult().getVersion());
            first.halfClose();
            assertEquals(Status.Code.OK, first.awaitClose().getCode());
        }
    }
}
