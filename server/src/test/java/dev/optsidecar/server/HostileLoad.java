package dev.optsidecar.server;

import com.google.protobuf.ByteString;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.ListSnapshotsRequest;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotRequest;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.WeightsChunk;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Threads that send a server, while it trains model "m" of {@link CrashRecoveryIT} and is killed
 * and restarted, requests no well-behaved client sends: bad chunks, unsigned-extreme step ids and
 * base versions, invalid names, unknown enum values, cancels mid-stream, abandoned registrations,
 * Restore of ids that are no snapshot of the model; and Snapshot RPCs of "m". None of them may
 * change "m": every hostile step on it leaves tensor 0 uncovered, so it is refused whatever else
 * is wrong with it. Answers are expected to be errors of every kind (UNAVAILABLE while the server
 * is down) except INTERNAL, which is collected.
 */
final class HostileLoad {
    /** Names no model may have, or that name no model: empty, a path, a NUL, too long, a wildcard. */
    static final List<String> BAD_NAMES = List.of("", "../m", "m/../m", "a\0b", "x".repeat(10_000), "*", " m",
            "\uD800", "nosuch");
    /** Ids that are no snapshot of "m": malformed, a path, a NUL, unsigned-extreme, absent. */
    static final List<String> BAD_IDS = List.of("999999", "../000001", "000001\0", "-1", "18446744073709551615",
            "x".repeat(10_000), "000001/../000002", "0000001a");
    static final long[] EXTREME = {-1L, Long.MIN_VALUE, Long.MAX_VALUE, 1L << 53, 0xFFFF_FFFF_0000_0000L, 1_000_000_000L};

    private final ManagedChannel channel;
    private final long seed;
    private final AtomicBoolean stopping = new AtomicBoolean();
    private final AtomicLong sent = new AtomicLong();
    private final AtomicLong clients = new AtomicLong();
    private final List<String> internalErrors = new CopyOnWriteArrayList<>();
    private final List<Thread> threads = new ArrayList<>();

    HostileLoad(ManagedChannel channel, long seed) {
        this.channel = channel;
        this.seed = seed;
    }

    void start(int threadCount) {
        for (int i = 0; i < threadCount; i++) {
            Random random = new Random(seed + i);
            Thread t = new Thread(() -> {
                while (!stopping.get()) {
                    try {
                        oneRequest(random);
                    } catch (InterruptedException e) {
                        return;
                    } catch (RuntimeException e) {
                        record("client side: " + e);
                    }
                }
            }, "hostile-" + i);
            t.setDaemon(true);
            threads.add(t);
            t.start();
        }
    }

    void stop() throws InterruptedException {
        stopping.set(true);
        for (Thread t : threads) {
            t.join(30_000);
        }
    }

    long sent() {
        return sent.get();
    }

    /** The INTERNAL answers hostile requests got, with what each request was. */
    List<String> internalErrors() {
        return List.copyOf(internalErrors);
    }

    private OptimizerGrpc.OptimizerBlockingStub blocking() {
        return OptimizerGrpc.newBlockingStub(channel).withDeadlineAfter(3, TimeUnit.SECONDS);
    }

    private void oneRequest(Random random) throws InterruptedException {
        sent.incrementAndGet();
        switch (random.nextInt(8)) {
            case 0, 1 -> badStep(random, "m");
            case 2 -> badStep(random, pick(random, BAD_NAMES));
            case 3 -> abandonedRegistration(random);
            case 4 -> unary("Snapshot m", () -> blocking().snapshot(SnapshotRequest.newBuilder().setModel("m").build()));
            case 5 -> {
                String name = pick(random, BAD_NAMES);
                unary("Snapshot of a bad name", () -> blocking().snapshot(SnapshotRequest.newBuilder().setModel(name).build()));
            }
            case 6 -> badRestore(random);
            default -> reads(random);
        }
        Thread.sleep(random.nextInt(20));
    }

    /**
     * A Step stream whose commit is refused: tensor 0 is never covered. On top of that, some of:
     * a tensor index out of range, an unsigned-extreme offset, a length that is no float, extreme
     * step ids and base versions, an unknown view kind, a cancel midway.
     */
    private void badStep(Random random, String model) throws InterruptedException {
        RawCall<StepRequest, StepResponse> call = new RawCall<>();
        OptimizerGrpc.newStub(channel).withDeadlineAfter(5, TimeUnit.SECONDS).step(call);
        String clientId = random.nextBoolean() ? "hostile-" + clients.incrementAndGet() : "";
        call.send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model).setClientId(clientId)).build());
        long stepId = random.nextBoolean() ? pick(random, EXTREME) : random.nextInt(5);
        int chunks = random.nextInt(4);
        for (int i = 0; i < chunks; i++) {
            GradientChunk.Builder c = GradientChunk.newBuilder().setStepId(random.nextBoolean() ? stepId : pick(random, EXTREME));
            switch (random.nextInt(5)) {
                case 0 -> c.setTensor(1).setOffset(0).setData(floats(17));
                case 1 -> c.setTensor(random.nextBoolean() ? 2 : -1).setOffset(0).setData(floats(4));
                case 2 -> c.setTensor(1).setOffset(pick(random, EXTREME)).setData(floats(1));
                case 3 -> c.setTensor(1).setOffset(0).setData(ByteString.copyFrom(new byte[3]));
                default -> c.setTensor(1).setOffset(10).setData(floats(17)); // past the end
            }
            call.send(StepRequest.newBuilder().setChunk(c).build());
        }
        if (random.nextInt(4) == 0) {
            call.cancel();
            return;
        }
        StepCommit.Builder commit = StepCommit.newBuilder().setStepId(stepId);
        if (random.nextBoolean()) {
            commit.setBaseVersion(pick(random, EXTREME));
        }
        if (random.nextBoolean()) {
            commit.setView(View.newBuilder().setKindValue(100 + random.nextInt(1000)));
        }
        if (random.nextInt(3) == 0) {
            commit.putGroupLr(pick(random, BAD_NAMES), Double.NaN);
        }
        call.send(StepRequest.newBuilder().setCommit(commit).build());
        if (random.nextBoolean()) {
            call.halfClose();
        }
        call.awaitOrCancel("Step on '" + shorten(model) + "'", 5_000);
    }

    /** A registration that sends part of its weights and goes away, or a spec the server must refuse. */
    private void abandonedRegistration(Random random) throws InterruptedException {
        RawCall<RegisterRequest, ModelInfo> call = new RawCall<>();
        OptimizerGrpc.newStub(channel).withDeadlineAfter(5, TimeUnit.SECONDS).register(call);
        boolean badName = random.nextInt(3) == 0;
        String name = badName ? pick(random, BAD_NAMES) : "hostile-abandoned-" + clients.incrementAndGet();
        long size = random.nextInt(4) == 0 ? Long.MAX_VALUE / 4 : 1000;
        call.send(RegisterRequest.newBuilder().setSpec(TestData.spec(name, random.nextBoolean() ? "Adam" : "NoSuchAlgorithm",
                TestData.hp("lr", 0.01), size)).build());
        call.send(RegisterRequest.newBuilder().setWeights(WeightsChunk.newBuilder().setTensor(0)
                .setOffset(random.nextBoolean() ? 0 : pick(random, EXTREME)).setData(floats(100))).build());
        if (badName || size != 1000 || random.nextBoolean()) {
            // Abandoned, or refused: never completed, so no model is ever registered.
            Thread.sleep(random.nextInt(50));
            call.cancel();
        }
        call.awaitOrCancel("abandoned Register", 200);
    }

    private void badRestore(Random random) {
        RestoreRequest.Builder r = RestoreRequest.newBuilder();
        switch (random.nextInt(3)) {
            case 0 -> r.setModel("m").setId(pick(random, BAD_IDS)).setAsModel("hostile-restored");
            case 1 -> r.setModel(pick(random, BAD_NAMES)).setId(random.nextBoolean() ? "" : pick(random, BAD_IDS));
            default -> r.setModel("m"); // already loaded, not replaced: ALREADY_EXISTS
        }
        unary("Restore " + shorten(r.getModel()) + "@" + shorten(r.getId()), () -> blocking().restore(r.build()));
    }

    private void reads(Random random) {
        String model = random.nextBoolean() ? "m" : pick(random, BAD_NAMES);
        unary("ListSnapshots", () -> blocking().listSnapshots(ListSnapshotsRequest.newBuilder().setModel(model).build()));
        unary("Describe", () -> blocking().describe(DescribeRequest.newBuilder().setModel(model).build()));
        unary("Pull of an unknown view", () -> blocking().pull(PullRequest.newBuilder().setModel(model)
                .setView(View.newBuilder().setKindValue(100 + random.nextInt(1000))).addTensors(random.nextInt(5))
                .build()).forEachRemaining(c -> { }));
    }

    private void unary(String what, Runnable call) {
        try {
            call.run();
        } catch (StatusRuntimeException e) {
            check(what, e.getStatus());
        }
    }

    private void check(String what, Status status) {
        if (status.getCause() != null) {
            return; // made by the client's own transport (the connection died under a SIGKILL), not an answer
        }
        if (status.getCode() == Status.Code.INTERNAL || status.getCode() == Status.Code.UNKNOWN) {
            record(what + ": " + status);
        }
    }

    private void record(String problem) {
        if (!stopping.get() && internalErrors.size() < 20) {
            internalErrors.add(problem);
        }
    }

    private static ByteString floats(int n) {
        return ByteString.copyFrom(new byte[4 * n]);
    }

    private static <T> T pick(Random random, List<T> from) {
        return from.get(random.nextInt(from.size()));
    }

    private static long pick(Random random, long[] from) {
        return from[random.nextInt(from.length)];
    }

    private static String shorten(String s) {
        return s.length() > 20 ? s.substring(0, 20) + "..." : s;
    }

    /** A client stream driven message by message, which may be cancelled or left to the server to end. */
    private final class RawCall<Req, Resp> implements ClientResponseObserver<Req, Resp> {
        private final CompletableFuture<Status> closed = new CompletableFuture<>();
        private ClientCallStreamObserver<Req> requests;

        @Override
        public void beforeStart(ClientCallStreamObserver<Req> stream) {
            requests = stream;
        }

        void send(Req r) {
            if (!closed.isDone()) {
                requests.onNext(r);
            }
        }

        void halfClose() {
            if (!closed.isDone()) {
                requests.onCompleted();
            }
        }

        void cancel() {
            requests.cancel("hostile client goes away", null);
        }

        void awaitOrCancel(String what, long ms) throws InterruptedException {
            try {
                check(what, closed.get(ms, TimeUnit.MILLISECONDS));
            } catch (java.util.concurrent.TimeoutException e) {
                cancel();
            } catch (java.util.concurrent.ExecutionException e) {
                record(what + ": " + e.getCause());
            }
        }

        @Override
        public void onNext(Resp value) {
        }

        @Override
        public void onError(Throwable t) {
            closed.complete(Status.fromThrowable(t));
        }

        @Override
        public void onCompleted() {
            closed.complete(Status.OK);
        }
    }
}
