package dev.optsidecar.server.api;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.Twins;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.OptionalLong;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.SidecarFixture.awaitTrue;
import static dev.optsidecar.server.StandardModel.CHUNK_FLOATS;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.le;
import static dev.optsidecar.server.StandardModel.spec;
import static dev.optsidecar.server.StandardModel.zeros;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Steps (and registrations) that never finish: the client cancels midway, fails its side of the
 * call, ends the stream without a commit, or its connection drops. Nothing changes (weights,
 * version, optimizer state: checked against a twin model), and the server lets go of the
 * half-assembled step, so the model takes the next step from another stream. On a real socket:
 * connections are reset under the server through a TCP relay.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class AbortedStepTest {
    private static final long STEP = 3;
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.onSocket();
    private static final AtomicInteger SEQ = new AtomicInteger();

    /** Adam with amsgrad: three state buffers per tensor that a leaked half-step would disturb. */
    private static Twins twins() {
        String name = "aborted-" + SEQ.incrementAndGet();
        return Twins.register(f, spec(name, "Adam",
                struct("lr", 0.01, "betas", List.of(0.8, 0.9), "amsgrad", true, "weight_decay", 0.001),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED), 31);
    }

    /** Sends half of a step's chunks (w's first chunk and all of b; not w's second, not scale). */
    private static RawStep sendHalf(OptimizerGrpc.OptimizerStub stub, String model) {
        float[][] g = grads(88);
        return RawStep.open(stub, model)
                .chunk(STEP, 0, 0, le(g[0], 0, CHUNK_FLOATS))
                .tensor(STEP, g, 1);
    }

    /** Waits until the server holds the half-assembled step, so the abort really comes midway. */
    private static void awaitAssembling(String model, long stepId) {
        awaitTrue("the server to assemble step " + stepId + " of " + model,
                () -> f.model(model).assemblingStep().equals(OptionalLong.of(stepId)));
    }

    enum Abort {
        /** ClientCallStreamObserver.cancel: RST_STREAM CANCEL on a live connection. */
        CLIENT_CANCELS,
        /** The client's request observer fails with an error (what application code does on failure). */
        CLIENT_ON_ERROR,
        /** The client's channel is shut down now: its connection goes away. */
        CHANNEL_SHUTDOWN_NOW,
        /** The TCP connection is reset under both ends, with no HTTP/2 goodbye. */
        TCP_RESET
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(Abort.class)
    void abortedStepChangesNothingAndReleasesTheModel(Abort how) throws Exception {
        Twins t = twins().validSteps(2);
        Twins.Snapshot before = t.snapshot();

        ManagedChannel channel = null;
        DroppableProxy proxy = null;
        OptimizerGrpc.OptimizerStub stub = f.async();
        if (how == Abort.CHANNEL_SHUTDOWN_NOW) {
            channel = f.channel();
            stub = OptimizerGrpc.newStub(channel);
        } else if (how == Abort.TCP_RESET) {
            proxy = new DroppableProxy(f.port());
            channel = SidecarFixture.channelTo(proxy.port());
            stub = OptimizerGrpc.newStub(channel);
        }
        try {
            RawStep s = sendHalf(stub, t.model);
            awaitAssembling(t.model, STEP);
            assertFalse(s.isClosed(), "the server ended a stream that was still sending");
            switch (how) {
                case CLIENT_CANCELS -> s.cancel();
                case CLIENT_ON_ERROR -> s.clientError(Status.CANCELLED.withDescription("trainer crashed").asRuntimeException());
                case CHANNEL_SHUTDOWN_NOW -> channel.shutdownNow();
                case TCP_RESET -> proxy.drop();
            }
            assertTrue(s.awaitClose().getCode() != Status.Code.OK, "an aborted stream ended OK");
            assertTrue(s.responses.isEmpty());

            t.assertUnchanged(before);
            // The server notices the abort and releases the step: another stream's step goes
            // through (attempts refused with ABORTED before it notices are retried, bounded).
            t.assertStateMatchesTwin(true);
            assertEquals(OptionalLong.empty(), f.model(t.model).assemblingStep());
        } finally {
            if (channel != null) {
                channel.shutdownNow();
                channel.awaitTermination(5, TimeUnit.SECONDS);
            }
            if (proxy != null) {
                proxy.close();
            }
        }
        t.delete();
    }

    @Test
    void javaClientAbandoningAStepMidwayChangesNothing() {
        Twins t = twins().validSteps(2);
        Twins.Snapshot before = t.snapshot();

        // The gradient of b fails to produce its values, after w's chunks have reached the server.
        float[][] g = grads(89);
        IllegalStateException boom = new IllegalStateException("gradient source failed");
        TensorData failingB = new TensorData() {
            @Override
            public long numel() {
                return g[1].length;
            }

            @Override
            public void read(long offset, int count, ByteBuffer dst) {
                awaitAssembling(t.model, 1);
                throw boom;
            }

            @Override
            public void write(long offset, ByteBuffer src) {
                throw new UnsupportedOperationException();
            }
        };
        List<TensorData> grads = List.of(TensorData.of(g[0]), failingB, TensorData.of(g[2]));
        try (Trainer trainer = f.client().trainer(t.model, "abandoner")) {
            IllegalStateException thrown = assertThrows(IllegalStateException.class,
                    () -> trainer.step(grads, StandardModel.tensors(zeros())));
            assertEquals(boom, thrown);
        }

        t.assertUnchanged(before);
        t.assertStateMatchesTwin(true);
        t.delete();
    }

    @Test
    void streamEndedWithoutCommitDropsTheStep() {
        Twins t = twins().validSteps(2);
        Twins.Snapshot before = t.snapshot();

        RawStep s = sendHalf(f.async(), t.model);
        awaitAssembling(t.model, STEP);
        s.halfClose();
        assertEquals(Status.Code.OK, s.awaitClose().getCode(), "a stream ended between steps closes normally");
        assertTrue(s.responses.isEmpty());

        t.assertUnchanged(before);
        assertEquals(OptionalLong.empty(), f.model(t.model).assemblingStep());
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    void anotherTrainersStepIsAppliedWhileOneIsHalfSentWithoutTouchingIt() {
        Twins t = twins().validSteps(2);
        Twins.Snapshot before = t.snapshot();

        // Stream A is midway through step 3.
        float[][] gA = grads(3);
        RawStep a = RawStep.open(f.async(), t.model).chunk(STEP, 0, 0, le(gA[0], 0, CHUNK_FLOATS));
        awaitAssembling(t.model, STEP);

        // Another trainer's step arrives in its own buffers and is applied at once.
        float[][] gB = grads(90);
        float[][] afterB = zeros();
        assertEquals(3, f.step(t.model, gB, afterB).getVersion());
        assertEquals(OptionalLong.of(STEP), f.model(t.model).assemblingStep());

        // A finishes its step, on top of B's, exactly as the twin given B's then A's gradients.
        a.chunk(STEP, 0, CHUNK_FLOATS, le(gA[0], CHUNK_FLOATS, gA[0].length - CHUNK_FLOATS))
                .tensor(STEP, gA, 1).tensor(STEP, gA, 2).commit(STEP, ViewKind.VIEW_NONE).halfClose();
        assertEquals(Status.Code.OK, a.awaitClose().getCode());
        assertEquals(1, a.responses.size());
        assertEquals(4, a.responses.get(0).getResult().getVersion());
        float[][] twin = zeros();
        f.step(t.twin, gB, twin);
        assertBitsEqual(twin, afterB, "B's step on the model vs on the twin");
        f.step(t.twin, gA, twin);
        assertBitsEqual(twin, f.pull(t.model), "model after B's and A's steps vs twin");
        t.validStepsDoneOutsideHelper(2);
        t.assertStateMatchesTwin();
        t.delete();
    }

    /**
     * The model is deleted while a trainer is midway through a step: the trainer's next chunk,
     * or the commit of a step whose chunks had all arrived, ends the stream with NOT_FOUND naming
     * the model, not an internal error.
     */
    @ParameterizedTest(name = "then {0}")
    @EnumSource(names = {"CHUNK", "COMMIT"})
    void modelDeletedMidStepEndsTheStepWithNotFound(NextMessage next) {
        String name = "aborted-deleted-" + SEQ.incrementAndGet();
        f.client().register(StandardModel.adamSpec(name), StandardModel.tensors(initialWeights(6)));
        long reserved = f.server().registry().reservedBytes();
        long size = f.client().describe(name).getMemoryBytes();
        float[][] g = grads(1);
        RawStep s = RawStep.open(f.async(), name).chunk(1, 0, 0, le(g[0], 0, CHUNK_FLOATS));
        if (next == NextMessage.COMMIT) {
            s.chunk(1, 0, CHUNK_FLOATS, le(g[0], CHUNK_FLOATS, g[0].length - CHUNK_FLOATS))
                    .tensor(1, g, 1).tensor(1, g, 2);
        }
        awaitAssembling(name, 1);

        f.client().delete(name);
        f.assertNotFound(name);
        assertEquals(reserved - size, f.server().registry().reservedBytes());

        if (next == NextMessage.CHUNK) {
            s.chunk(1, 0, CHUNK_FLOATS, le(g[0], CHUNK_FLOATS, g[0].length - CHUNK_FLOATS))
                    .tensor(1, g, 1).tensor(1, g, 2);
        } else {
            s.commit(1, ViewKind.VIEW_TRAIN);
        }
        assertStatus(Status.Code.NOT_FOUND, s.awaitClose(), "'" + name + "'");
        assertTrue(s.responses.isEmpty());
    }

    enum NextMessage { CHUNK, COMMIT }

    /**
     * The commit arrived, so the step counts; the client then cancels while the weights are
     * still streaming back. The model's view is 20 MB and the client takes only the first
     * chunk, so flow control (a stream window of at most 8 MiB plus the server's 4 MiB send
     * threshold) holds the server midway through the view, under the model's read lock. The
     * server must let go of that view on cancel, or every later step of the model would wait
     * forever.
     */
    @Test
    void cancelWhileWeightsStreamBackReleasesTheModel() {
        int n = 5_000_000;
        String name = "aborted-big-" + SEQ.incrementAndGet();
        String twin = name + "-twin";
        ModelSpec spec = ModelSpec.newBuilder().setName(name)
                .addTensors(StandardModel.tensor("big", n))
                .setOptimizer(dev.optsidecar.proto.v1.OptimizerConfig.newBuilder().setAlgorithm("Adam")
                        .setHyperparameters(struct("lr", 0.01, "betas", List.of(0.8, 0.9))))
                .build();
        float[] init = StandardModel.values(41, n);
        f.client().register(spec, List.of(TensorData.of(init)));
        f.client().register(spec.toBuilder().setName(twin).build(), List.of(TensorData.of(init)));
        float[][] mine = {new float[n]};
        float[][] theirs = {new float[n]};
        for (int k = 1; k <= 2; k++) {
            float[][] g = {StandardModel.values(500 + k, n)};
            try (Trainer a = f.client().trainer(name, "a"); Trainer b = f.client().trainer(twin, "b")) {
                a.step(g, mine);
                b.step(g, theirs);
            }
        }
        float[][] g3 = {StandardModel.values(503, n)};
        RawStep s = RawStep.openWithManualFlow(f.async(), name, 1).all(STEP, g3).commit(STEP, ViewKind.VIEW_TRAIN);
        awaitTrue("the first weights chunk", () -> !s.responses.isEmpty() || s.isClosed());
        StepResponse first = s.responses.get(0);
        assertTrue(first.hasWeights());
        assertEquals(3, first.getWeights().getVersion());
        s.cancel();
        assertEquals(Status.Code.CANCELLED, s.awaitClose().getCode());

        try (Trainer b = f.client().trainer(twin, "b")) {
            b.step(g3, theirs);
        }
        assertTimeoutPreemptively(Duration.ofMillis(SidecarFixture.WAIT_MS), () -> {
            assertEquals(3, f.client().describe(name).getVersion());
            float[][] pulled = {new float[n]};
            f.client().pull(name, List.of(TensorData.of(pulled[0])));
            assertBitsEqual1(theirs[0], pulled[0], "model after the committed step vs twin");
            // The next step from another stream needs the write lock the cancelled view held.
            float[][] g4 = {StandardModel.values(504, n)};
            try (Trainer a = f.client().trainer(name, "a"); Trainer b = f.client().trainer(twin, "b")) {
                assertEquals(4, a.step(g4, mine).getVersion());
                b.step(g4, theirs);
            }
            assertBitsEqual1(theirs[0], mine[0], "next step after the cancelled transfer, model vs twin");
        }, "the model is still held by the cancelled weights transfer");
        f.client().delete(name);
        f.client().delete(twin);
    }

    private static void assertBitsEqual1(float[] expected, float[] actual, String what) {
        assertBitsEqual(new float[][] {expected}, new float[][] {actual}, what);
    }

    // ------------------------------------------------------------------------------------------
    // Registration aborted midway

    enum RegisterAbort { CLIENT_CANCELS, CHANNEL_SHUTDOWN_NOW }

    @ParameterizedTest(name = "{0}")
    @EnumSource(RegisterAbort.class)
    void abortedRegistrationLeavesNoModelAndFreesItsMemory(RegisterAbort how) throws Exception {
        String name = "aborted-register-" + SEQ.incrementAndGet();
        ModelSpec spec = StandardModel.adamSpec(name);
        long baseline = f.server().registry().reservedBytes();
        ManagedChannel channel = how == RegisterAbort.CHANNEL_SHUTDOWN_NOW ? f.channel() : null;
        OptimizerGrpc.OptimizerStub stub = channel == null ? f.async() : OptimizerGrpc.newStub(channel);
        try {
            CompletableFuture<Status> done = new CompletableFuture<>();
            List<ClientCallStreamObserver<RegisterRequest>> call = new ArrayList<>();
            stub.register(new ClientResponseObserver<RegisterRequest, ModelInfo>() {
                @Override
                public void beforeStart(ClientCallStreamObserver<RegisterRequest> requestStream) {
                    call.add(requestStream);
                }

                @Override
                public void onNext(ModelInfo value) {}

                @Override
                public void onError(Throwable t) {
                    done.complete(Status.fromThrowable(t));
                }

                @Override
                public void onCompleted() {
                    done.complete(Status.OK);
                }
            });
            ClientCallStreamObserver<RegisterRequest> req = call.get(0);
            float[] w = initialWeights(4)[0];
            req.onNext(RegisterRequest.newBuilder().setSpec(spec).build());
            req.onNext(RegisterRequest.newBuilder().setWeights(WeightsChunk.newBuilder()
                    .setTensor(0).setOffset(0).setData(le(w, 0, CHUNK_FLOATS))).build());
            // The server has taken the spec: the model's memory is reserved.
            awaitTrue("the server to reserve the model's memory",
                    () -> f.server().registry().reservedBytes() > baseline);
            if (how == RegisterAbort.CLIENT_CANCELS) {
                req.cancel("test cancels the registration", null);
            } else {
                channel.shutdownNow();
            }
            assertTrue(done.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS).getCode() != Status.Code.OK);

            awaitTrue("the server to free the aborted model's memory",
                    () -> f.server().registry().reservedBytes() == baseline);
            f.assertNotFound(name);
        } finally {
            if (channel != null) {
                channel.shutdownNow();
                channel.awaitTermination(5, TimeUnit.SECONDS);
            }
        }
        // The name is free again.
        f.client().register(spec, StandardModel.tensors(initialWeights(4)));
        assertBitsEqual(initialWeights(4), f.pull(name), "weights of the model registered after the abort");
        f.client().delete(name);
    }

    @Test
    @Order(Integer.MAX_VALUE)
    void serverSurvivesAllOfTheAbove() {
        f.assertServerHealthy("aborted-health");
        // A brand-new client connection is served too.
        try (OptSidecarClient other = f.connect()) {
            assertEquals(f.client().list(), other.list());
        }
    }

    // ------------------------------------------------------------------------------------------

    /**
     * A TCP relay between a client and the server whose connections can be reset at once (SO_LINGER
     * 0, so both ends get an RST), as when a trainer's host dies or the network breaks.
     */
    static final class DroppableProxy implements AutoCloseable {
        private final ServerSocket listener;
        private final int target;
        private final List<Socket> sockets = new CopyOnWriteArrayList<>();

        DroppableProxy(int targetPort) throws IOException {
            this.target = targetPort;
            this.listener = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
            daemon("proxy-accept", this::acceptLoop);
        }

        int port() {
            return listener.getLocalPort();
        }

        private void acceptLoop() {
            while (!listener.isClosed()) {
                try {
                    Socket in = listener.accept();
                    Socket out = new Socket(InetAddress.getByName("127.0.0.1"), target);
                    in.setTcpNoDelay(true);
                    out.setTcpNoDelay(true);
                    sockets.add(in);
                    sockets.add(out);
                    daemon("proxy-up", () -> pump(in, out));
                    daemon("proxy-down", () -> pump(out, in));
                } catch (IOException e) {
                    return;
                }
            }
        }

        private static void pump(Socket from, Socket to) {
            byte[] buf = new byte[1 << 16];
            try (InputStream in = from.getInputStream(); OutputStream out = to.getOutputStream()) {
                for (int n = in.read(buf); n >= 0; n = in.read(buf)) {
                    out.write(buf, 0, n);
                    out.flush();
                }
            } catch (IOException e) {
                // the connection was dropped
            }
        }

        private static void daemon(String name, Runnable body) {
            Thread t = new Thread(body, name);
            t.setDaemon(true);
            t.start();
        }

        /** Resets every relayed connection, both sides, with no goodbye. */
        void drop() {
            for (Socket s : sockets) {
                try {
                    s.setSoLinger(true, 0);
                    s.close();
                } catch (IOException ignored) {
                    // already gone
                }
            }
        }

        @Override
        public void close() throws IOException {
            listener.close();
            drop();
        }
    }
}
