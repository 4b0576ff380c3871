package dev.optsidecar.server.model;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.AsyncOptions;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationStatus;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.StalePolicy;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.VersionContributions;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.SidecarServer;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.TestData.sync;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Several trainers on one model, with deterministic checks: sync steps equal one trainer feeding
 * the mean gradient; async steps equal one trainer replaying the recorded order; every (client,
 * step) is applied exactly once; stragglers, late and stale gradients, departures.
 */
class ParameterServerTest {
    static final long[] SIZES = {2_000, 7};
    static final int CLIENTS = 8;
    static final int STEPS = 200;
    private static SidecarFixture f;
    private static SidecarServer server;
    private static OptSidecarClient client;

    @BeforeAll
    static void start() throws Exception {
        f = SidecarFixture.inProcess().start();
        server = f.server();
        client = f.client();
    }

    @AfterAll
    static void stop() {
        f.close();
    }

    static ModelSpec spec(String name, Coordination coordination) {
        return TestData.spec(name, "Adam", TestData.hp("lr", 0.01), SIZES).setCoordination(coordination).build();
    }

    static float[][] grad(int clientIndex, int step) {
        return new float[][] {TestData.random((int) SIZES[0], 7919L * clientIndex + step),
                TestData.random((int) SIZES[1], 104729L * clientIndex + step)};
    }

    static float[][] initial() {
        return new float[][] {TestData.random((int) SIZES[0], 1), TestData.random((int) SIZES[1], 2)};
    }

    static float[][] blank() {
        return new float[][] {new float[(int) SIZES[0]], new float[(int) SIZES[1]]};
    }

    static float[][] pull(String model) {
        float[][] out = blank();
        client.pull(model, List.of(TensorData.of(out[0]), TensorData.of(out[1])));
        return out;
    }

    static void register(ModelSpec spec) {
        float[][] w = initial();
        client.register(spec, List.of(TensorData.of(w[0]), TensorData.of(w[1])));
    }

    static List<VersionContributions> history(String model) {
        return client.history(model, 0);
    }

    private static ManagedChannel channel;

    static synchronized ManagedChannel channel() {
        if (channel == null) {
            channel = f.channel();
        }
        return channel;
    }

    /** Runs {@code CLIENTS} trainers, client i stepping {@code steps} times; returns each one's final weights. */
    static List<float[][]> train(String model, int steps) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
        try {
            List<Trainer> trainers = new ArrayList<>();
            for (int i = 0; i < CLIENTS; i++) {
                trainers.add(client.trainer(model, "c" + i));
            }
            List<Future<float[][]>> done = new ArrayList<>();
            for (int i = 0; i < CLIENTS; i++) {
                int me = i;
                done.add(pool.submit(() -> {
                    float[][] w = blank();
                    try (Trainer t = trainers.get(me)) {
                        for (int s = 1; s <= steps; s++) {
                            StepResult r = t.step(grad(me, s), w);
                            assertFalse(r.getLate() || r.getReplayed(), r.toString());
                        }
                    }
                    return w;
                }));
            }
            List<float[][]> out = new ArrayList<>();
            for (Future<float[][]> f : done) {
                out.add(f.get(120, TimeUnit.SECONDS));
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void syncStepsOfEightTrainersEqualOneTrainerFeedingTheMeanGradient() throws Exception {
        register(spec("sync8", sync(CLIENTS, 0, 0)));
        List<float[][]> finals = assertTimeoutPreemptively(Duration.ofSeconds(120), () -> train("sync8", STEPS));
        for (float[][] w : finals) { // every contributor received the same weights
            StandardModel.assertBitsEqual(finals.get(0), w, "final weights of two trainers");
        }

        register(spec("sync8-reference", Coordination.getDefaultInstance()));
        float[][] expected = blank();
        try (Trainer one = client.trainer("sync8-reference", "single")) {
            for (int s = 1; s <= STEPS; s++) {
                float[][] mean = blank();
                for (int i = 0; i < CLIENTS; i++) { // client-id order, then one division: as the server combines
                    float[][] g = grad(i, s);
                    for (int t = 0; t < mean.length; t++) {
                        for (int k = 0; k < mean[t].length; k++) {
                            mean[t][k] = i == 0 ? g[t][k] : mean[t][k] + g[t][k];
                        }
                    }
                }
                for (float[] m : mean) {
                    for (int k = 0; k < m.length; k++) {
                        m[k] /= CLIENTS;
                    }
                }
                one.step(mean, expected);
            }
        }
        StandardModel.assertBitsEqual(expected, pull("sync8"), "sync model vs one trainer with the mean gradient");

        List<VersionContributions> history = history("sync8");
        assertEquals(STEPS, history.size());
        for (VersionContributions v : history) {
            assertEquals(CLIENTS, v.getContributionsCount(), "version " + v.getVersion());
            for (int i = 0; i < CLIENTS; i++) {
                assertEquals(Contribution.newBuilder().setClientId("c" + i).setStepId(v.getVersion()).build(),
                        v.getContributions(i), "version " + v.getVersion());
            }
        }
        CoordinationStatus status = client.describe("sync8").getCoordination();
        assertEquals((long) CLIENTS * STEPS, status.getContributionsApplied());
        assertEquals(0, status.getContributionsLate());
    }

    @Test
    void asyncStepsOfEightTrainersAreEachAppliedOnceAndReplayInTheirRecordedOrder() throws Exception {
        register(spec("async8", Coordination.getDefaultInstance()));
        assertTimeoutPreemptively(Duration.ofSeconds(120), () -> train("async8", STEPS));
        assertEquals((long) CLIENTS * STEPS, client.describe("async8").getVersion());

        List<VersionContributions> history = history("async8");
        assertEquals(CLIENTS * STEPS, history.size());
        Set<Contribution> seen = new HashSet<>();
        for (VersionContributions v : history) {
            assertEquals(1, v.getContributionsCount());
            assertTrue(seen.add(v.getContributions(0)), "applied twice: " + v);
        }
        for (int i = 0; i < CLIENTS; i++) {
            for (int s = 1; s <= STEPS; s++) {
                assertTrue(seen.contains(Contribution.newBuilder().setClientId("c" + i).setStepId(s).build()),
                        "lost: client " + i + " step " + s);
            }
        }

        // One trainer feeding the same gradients in the recorded order reaches the same weights.
        register(spec("async8-replay", Coordination.getDefaultInstance()));
        float[][] replayed = blank();
        try (Trainer one = client.trainer("async8-replay", "single")) {
            for (VersionContributions v : history) {
                Contribution c = v.getContributions(0);
                one.step(grad(Integer.parseInt(c.getClientId().substring(1)), (int) c.getStepId()), replayed);
            }
        }
        StandardModel.assertBitsEqual(replayed, pull("async8"), "async model vs its history replayed by one trainer");
        CoordinationStatus status = client.describe("async8").getCoordination();
        assertEquals((long) CLIENTS * STEPS, status.getStalenessHistogramList().stream().mapToLong(Long::longValue).sum());
    }

    @Test
    void aStaleGradientIsRejectedWithTheCurrentVersionOrDownWeighted() {
        Coordination reject = Coordination.newBuilder().setAsync(AsyncOptions.newBuilder().setMaxStaleness(1)).build();
        register(spec("stale-reject", reject));
        try (Trainer a = client.trainer("stale-reject", "a"); Trainer b = client.trainer("stale-reject", "b")) {
            float[][] w = blank();
            for (int s = 1; s <= 3; s++) {
                b.step(grad(1, s), w);
            }
            a.computedAt(1); // a's weights are from version 1: 2 versions stale
            StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> a.step(grad(0, 1), blank()));
            assertEquals(Status.Code.FAILED_PRECONDITION, e.getStatus().getCode());
            assertTrue(e.getStatus().getDescription().contains("current version 3"), e.getStatus().getDescription());
            a.computedAt(2); // one version stale: within the bound
            StepResult ok = a.step(grad(0, 2), w);
            assertEquals(1, ok.getStaleness());
            assertEquals(1.0, ok.getLrScale());
        }
        assertEquals(1, client.describe("stale-reject").getCoordination().getContributionsRejected());

        Coordination down = Coordination.newBuilder().setAsync(AsyncOptions.newBuilder().setMaxStaleness(1)
                .setStale(StalePolicy.STALE_DOWNWEIGHT)).build();
        register(spec("stale-down", down));
        try (Trainer a = client.trainer("stale-down", "a"); Trainer b = client.trainer("stale-down", "b")) {
            for (int s = 1; s <= 3; s++) {
                b.step(grad(1, s), blank());
            }
            StepResult r = a.computedAt(0).step(grad(0, 1), blank());
            assertEquals(3, r.getStaleness());
            assertEquals(0.25, r.getLrScale());
            assertEquals(0.01 * 0.25, r.getGroups(0).getLr(), 1e-18);
        }
        List<Long> histogram = client.describe("stale-down").getCoordination().getStalenessHistogramList();
        assertEquals(List.of(3L, 0L, 0L, 1L), histogram);
    }

    @Test
    void aStragglerIsLeftOutAfterTheTimeoutAndToldItCameTooLate() throws Exception {
        register(spec("straggler", sync(3, 300, 2)));
        try (Trainer a = client.trainer("straggler", "a"); Trainer b = client.trainer("straggler", "b");
             Trainer c = client.trainer("straggler", "c")) {
            CompletableFuture<StepResult> ra = CompletableFuture.supplyAsync(() -> a.step(grad(0, 1), blank()));
            CompletableFuture<StepResult> rb = CompletableFuture.supplyAsync(() -> b.step(grad(1, 1), blank()));
            assertEquals(1, ra.get(10, TimeUnit.SECONDS).getVersion());
            assertEquals(2, rb.get(10, TimeUnit.SECONDS).getContributionsCount());
            float[][] w = blank();
            StepResult late = c.step(grad(2, 1), w);
            assertTrue(late.getLate());
            assertEquals(1, late.getVersion());
            StandardModel.assertBitsEqual(pull("straggler"), w, "a late contributor receives the current weights");
        }
        CoordinationStatus status = client.describe("straggler").getCoordination();
        assertEquals(1, status.getStepsTimedOut());
        assertEquals(1, status.getContributionsLate());
        assertEquals(2, status.getContributionsApplied());
    }

    @Test
    void aTrainerLeavingMidStepDoesNotDeadlockTheOthers() throws Exception {
        register(spec("leaving", sync(0, 0, 0))); // k = the trainers attached
        Trainer a = client.trainer("leaving", "a").attach();
        Trainer b = client.trainer("leaving", "b").attach();
        Trainer c = client.trainer("leaving", "c").attach();
        SidecarFixture.awaitTrue("three trainers attached",
                () -> client.describe("leaving").getCoordination().getTrainersCount() == 3);
        assertTimeoutPreemptively(Duration.ofSeconds(20), () -> {
            CompletableFuture<StepResult> ra = CompletableFuture.supplyAsync(() -> a.step(grad(0, 1), blank()));
            CompletableFuture<StepResult> rb = CompletableFuture.supplyAsync(() -> b.step(grad(1, 1), blank()));
            Thread.sleep(200);
            assertFalse(ra.isDone() || rb.isDone(), "applied before the third trainer contributed or left");
            c.close(); // the third trainer leaves: two are attached, and two have contributed
            assertEquals(2, ra.get().getContributionsCount());
            assertEquals(ra.get().getVersion(), rb.get().getVersion());
        });
        a.close();
        b.close();
    }

    @Test
    void aRetryOfAStepWaitingInASyncRoundWaitsForItAndIsNotCountedTwice() throws Exception {
        register(spec("sync-retry", sync(2, 0, 0)));
        OptimizerGrpc.OptimizerStub stub = OptimizerGrpc.newStub(channel());
        float[][] ga = grad(0, 1);
        RawStep first = RawStep.openAs(stub, "sync-retry", "a").all(1, ga).commit(1, dev.optsidecar.proto.v1.ViewKind.VIEW_TRAIN);
        SidecarFixture.awaitTrue("a's step waiting", () -> server.registry().get("sync-retry", "m")
                .waitingContribution(attachedSession("a"), 1) != null);
        RawStep retry = RawStep.openAs(stub, "sync-retry", "a").all(1, ga).commit(1, dev.optsidecar.proto.v1.ViewKind.VIEW_TRAIN);
        Thread.sleep(100);
        assertTrue(retry.responses.isEmpty(), "the retry waits for the round");
        try (Trainer b = client.trainer("sync-retry", "b")) {
            StepResult rb = b.step(grad(1, 1), blank());
            assertEquals(1, rb.getVersion());
            assertEquals(2, rb.getContributionsCount());
        }
        first.halfClose();
        retry.halfClose();
        assertEquals(Status.Code.OK, first.awaitClose().getCode());
        assertEquals(Status.Code.OK, retry.awaitClose().getCode());
        StepResult original = first.responses.get(first.responses.size() - 1).getResult();
        StepResult again = retry.responses.get(retry.responses.size() - 1).getResult();
        assertFalse(original.getReplayed());
        assertTrue(again.getReplayed());
        assertEquals(1, again.getVersion());
        assertEquals(2, client.describe("sync-retry").getCoordination().getContributionsApplied());
        assertEquals(1, history("sync-retry").size());
    }

    /** The session of client {@code id} on model sync-retry (attaching to look it up, then leaving). */
    private static dev.optsidecar.server.model.ClientSession attachedSession(String id) {
        var m = server.registry().get("sync-retry", "m");
        var s = m.attach(id);
        m.detach(s);
        return s;
    }

    @Test
    void aReaderThatStopsReadingDoesNotHoldUpTrainers() throws Exception {
        register(spec("reader", Coordination.getDefaultInstance()));
        ClientCallStreamObserver<?>[] call = new ClientCallStreamObserver<?>[1];
        CompletableFuture<Void> firstChunk = new CompletableFuture<>();
        OptimizerGrpc.newStub(channel()).pull(PullRequest.newBuilder().setModel("reader").build(),
                new ClientResponseObserver<PullRequest, WeightsChunk>() {
                    @Override
                    public void beforeStart(ClientCallStreamObserver<PullRequest> stream) {
                        call[0] = stream;
                        stream.disableAutoRequestWithInitial(1); // takes one chunk, then reads no more
                    }

                    @Override
                    public void onNext(WeightsChunk value) {
                        firstChunk.complete(null);
                    }

                    @Override
                    public void onError(Throwable t) {}

                    @Override
                    public void onCompleted() {}
                });
        firstChunk.get(10, TimeUnit.SECONDS);
        assertTimeoutPreemptively(Duration.ofSeconds(10), () -> {
            try (Trainer t = client.trainer("reader", "t")) {
                for (int s = 1; s <= 5; s++) {
                    t.step(grad(0, s), blank());
                }
            }
        });
        call[0].cancel("done", null);
    }
}
