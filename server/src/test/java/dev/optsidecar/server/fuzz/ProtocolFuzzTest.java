package dev.optsidecar.server.fuzz;

import com.google.protobuf.ByteString;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.DeleteRequest;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.ExportRequest;
import dev.optsidecar.proto.v1.ForkRequest;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.ListSnapshotsRequest;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.SnapshotRequest;
import dev.optsidecar.proto.v1.StateChunk;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.TensorInfo;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Generated messages and sequences against every RPC of a real server, from a few concurrent
 * clients. Bounded by a count of operations, not by time, so a seed replays the same messages
 * (the interleaving of the clients may differ):
 * {@code -Dfuzz.seed=N} replays a run, {@code -Dfuzz.iterations=N} sets its length.
 *
 * <p>After every batch: the server is SERVING and no call ended INTERNAL or UNKNOWN (nor timed
 * out); the victim model, which only ever receives invalid steps besides the valid trainer's, is
 * bit for bit its twin, which receives only the valid steps (every view, every state slot,
 * Describe's counters and scalars, version); and once the batch's models are deleted and its
 * streams closed, the server holds exactly the memory it held before the batch.
 */
class ProtocolFuzzTest {
    private static final long SEED = Long.getLong("fuzz.seed", System.nanoTime());
    /** Operations in all, over all clients; the default run takes about 15 s. */
    private static final int ITERATIONS = Integer.getInteger("fuzz.iterations", 5_000);
    private static final int CLIENTS = 3;
    private static final int OPS_PER_CLIENT_PER_BATCH = 20;
    private static final long CALL_DEADLINE_S = 10;
    private static final long MEMORY_LIMIT = 64L << 20;

    private static final String VICTIM = "victim";
    private static final String TWIN = "victim-twin";
    /** The victim's tensors: w [16, 8], b [8] and the scalar s; b and s in the group no_decay. */
    private static final int[] SIZES = {128, 8, 1};

    @TempDir
    Path stateDir;

    private SidecarFixture f;
    private final List<String> problems = Collections.synchronizedList(new ArrayList<>());
    private final Map<String, AtomicInteger> statusCounts = new ConcurrentHashMap<>();

    @Test
    void protocolSurvivesGeneratedInput() throws Exception {
        System.out.println("ProtocolFuzzTest: -Dfuzz.seed=" + SEED + " -Dfuzz.iterations=" + ITERATIONS);
        long started = System.nanoTime();
        try {
            run();
        } catch (Throwable t) {
            throw new AssertionError("fuzz run failed; reproduce with -Dfuzz.seed=" + SEED
                    + " -Dfuzz.iterations=" + ITERATIONS + ": " + t.getMessage(), t);
        }
        System.out.println("ProtocolFuzzTest: " + ITERATIONS + " operations in "
                + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started) + " ms");
        System.out.println("ProtocolFuzzTest: statuses " + new TreeMap<>(Map.copyOf(statusCounts)));
    }

    private void run() throws Exception {
        Persistence.Options durable = new Persistence.Options(stateDir, 3, StepJournal.Sync.WRITE, 0, null, true);
        f = SidecarFixture.inProcess(MEMORY_LIMIT, durable).start();
        ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
        try {
            SplittableRandom root = new SplittableRandom(SEED);
            float[][] init = new float[SIZES.length][];
            FuzzValues v = new FuzzValues(root.split());
            for (int t = 0; t < SIZES.length; t++) {
                init[t] = finite(v, SIZES[t]);
            }
            f.client().register(victimSpec(VICTIM), StandardModel.tensors(init));
            f.client().register(victimSpec(TWIN), StandardModel.tensors(init));
            List<Client> clients = new ArrayList<>();
            for (int i = 0; i < CLIENTS; i++) {
                clients.add(new Client(i, root.split()));
            }
            try (Trainer victimTrainer = f.client().trainer(VICTIM, "valid-trainer");
                 Trainer twinTrainer = f.client().trainer(TWIN, "valid-trainer")) {
                int batches = Math.max(1, ITERATIONS / (CLIENTS * OPS_PER_CLIENT_PER_BATCH));
                for (int batch = 0; batch < batches; batch++) {
                    if (batch % 3 == 0) {
                        validStep(v, victimTrainer, twinTrainer);
                    }
                    String victimBefore = digest(VICTIM);
                    long reservedBefore = f.server().registry().reservedBytes();
                    List<Future<?>> running = new ArrayList<>();
                    for (Client c : clients) {
                        running.add(pool.submit(() -> c.ops(OPS_PER_CLIENT_PER_BATCH)));
                    }
                    for (Future<?> r : running) {
                        r.get(5, TimeUnit.MINUTES);
                    }
                    String where = "batch " + batch;
                    assertNoProblems(where);
                    assertServing(where);
                    String victimAfter = digest(VICTIM);
                    assertEquals(victimBefore, victimAfter, where + ": rejected requests changed the victim");
                    assertEquals(digest(TWIN), victimAfter, where + ": the victim differs from its twin");
                    deleteFuzzModels();
                    for (Client c : clients) {
                        c.mine.clear();
                        c.sizes.clear();
                    }
                    awaitReserved(reservedBefore, where);
                }
            }
            for (Client c : clients) {
                c.channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
            }
            f.client().delete(VICTIM);
            f.client().delete(TWIN);
            awaitReserved(0, "after every model was deleted");
            f.assertServerHealthy("fuzz-health");
            assertNoProblems("the end");
        } finally {
            pool.shutdownNow();
            f.close();
        }
    }

    // ------------------------------------------------------------------------------------------
    // The victim, its twin and the valid trainer

    /** AdamW with clipping, an EMA shadow and Lookahead: several views and state slots to compare. */
    private static ModelSpec victimSpec(String name) {
        return ModelSpec.newBuilder().setName(name)
                .addTensors(TensorSpec.newBuilder().setName("w").addShape(16).addShape(8))
                .addTensors(TensorSpec.newBuilder().setName("b").addShape(8))
                .addTensors(TensorSpec.newBuilder().setName("s"))
                .addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("b").addTensors("s")
                        .setHyperparameters(struct("weight_decay", 0.0)))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("AdamW")
                        .setHyperparameters(struct("lr", 0.01))
                        .setClipGradNorm(1.0)
                        .setReportUpdateNorm(true)
                        .addEma(EmaShadow.newBuilder().setDecay(0.9))
                        .setLookahead(Lookahead.newBuilder().setK(3).setAlpha(0.5).setPullbackMomentum("none")))
                .build();
    }

    private static int[] numels(ModelSpec spec) {
        int[] n = new int[spec.getTensorsCount()];
        for (int t = 0; t < n.length; t++) {
            long e = 1;
            for (long d : spec.getTensors(t).getShapeList()) {
                e *= d;
            }
            n[t] = (int) e;
        }
        return n;
    }

    private static float[] finite(FuzzValues v, int n) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            out[i] = (float) (v.random.nextDouble() * 2 - 1);
        }
        return out;
    }

    private static void validStep(FuzzValues v, Trainer victim, Trainer twin) {
        float[][] grads = new float[SIZES.length][];
        for (int t = 0; t < SIZES.length; t++) {
            grads[t] = finite(v, SIZES[t]);
        }
        float[][] a = zeros();
        float[][] b = zeros();
        long va = victim.step(grads, a).getVersion();
        long vb = twin.step(grads, b).getVersion();
        assertEquals(vb, va, "the valid trainer's step gave the victim and its twin different versions");
    }

    private static float[][] zeros() {
        float[][] z = new float[SIZES.length][];
        for (int t = 0; t < SIZES.length; t++) {
            z[t] = new float[SIZES[t]];
        }
        return z;
    }

    /**
     * Everything observable about a model's state: Describe without what is bookkeeping rather
     * than state (its name, the attached trainers and coordination counters, the clients'
     * sequence numbers, memory held, which follows the ledger), then every view it lists and every
     * state slot of every tensor, with the version each chunk is labelled with.
     */
    private String digest(String model) throws Exception {
        OptimizerGrpc.OptimizerBlockingStub stub = f.blocking();
        ModelInfo info = stub.withDeadlineAfter(CALL_DEADLINE_S, TimeUnit.SECONDS)
                .describe(DescribeRequest.newBuilder().setModel(model).build());
        ModelInfo.Builder kept = info.toBuilder().clearName().clearCoordination().clearMemoryBytes();
        kept.setState(info.getState().toBuilder().clearClients());
        MessageDigest sha = MessageDigest.getInstance("SHA-256");
        StringBuilder pulls = new StringBuilder();
        List<View> views = new ArrayList<>(info.getViewsList());
        for (int t = 0; t < info.getTensorsCount(); t++) {
            TensorInfo ti = info.getTensors(t);
            for (String slot : ti.getSlotsList()) {
                views.add(View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build());
            }
        }
        for (View view : views) {
            if (view.getKind() == ViewKind.VIEW_NONE) {
                continue;
            }
            try {
                Iterator<WeightsChunk> it = stub.withDeadlineAfter(CALL_DEADLINE_S, TimeUnit.SECONDS)
                        .pull(PullRequest.newBuilder().setModel(model).setView(view).build());
                while (it.hasNext()) {
                    WeightsChunk c = it.next();
                    sha.update(c.toBuilder().clearData().build().toByteArray());
                    sha.update(c.getData().asReadOnlyByteBuffer());
                }
                pulls.append(view.getKind()).append(' ').append(view.getSlot()).append(" ok\n");
            } catch (StatusRuntimeException e) {
                // An EMA view before its first update is refused; that refusal is part of the state.
                pulls.append(view.getKind()).append(' ').append(view.getSlot()).append(' ')
                        .append(e.getStatus().getCode()).append('\n');
            }
        }
        return kept.build().toString() + pulls + HexFormat.of().formatHex(sha.digest());
    }

    // ------------------------------------------------------------------------------------------
    // Invariants

    private void record(String op, Status status) {
        statusCounts.computeIfAbsent(op + " " + status.getCode(), k -> new AtomicInteger()).incrementAndGet();
        Status.Code c = status.getCode();
        if (c == Status.Code.INTERNAL || c == Status.Code.UNKNOWN || c == Status.Code.DEADLINE_EXCEEDED) {
            problems.add(op + " ended " + status);
        }
    }

    private void assertNoProblems(String where) {
        for (SidecarFixture.SentError e : f.errorsSent()) {
            Status.Code c = e.status().getCode();
            if (c == Status.Code.INTERNAL || c == Status.Code.UNKNOWN) {
                problems.add("the server sent " + e.method() + " " + e.status());
            }
        }
        if (!problems.isEmpty()) {
            fail(where + ": " + problems.size() + " problem(s), first: "
                    + problems.subList(0, Math.min(5, problems.size())));
        }
    }

    private void assertServing(String where) {
        HealthCheckResponse r = HealthGrpc.newBlockingStub(f.channel())
                .withDeadlineAfter(CALL_DEADLINE_S, TimeUnit.SECONDS)
                .check(HealthCheckRequest.getDefaultInstance());
        assertEquals(HealthCheckResponse.ServingStatus.SERVING, r.getStatus(), where + ": health");
    }

    private void deleteFuzzModels() {
        for (String m : f.client().list()) {
            if (!m.equals(VICTIM) && !m.equals(TWIN)) {
                try {
                    f.blocking().delete(DeleteRequest.newBuilder().setModel(m).build());
                } catch (StatusRuntimeException e) {
                    record("Delete(cleanup)", e.getStatus());
                }
            }
        }
    }

    /** Freeing a cancelled stream's buffers happens when the server notices, so this waits for it. */
    private void awaitReserved(long expected, String where) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(SidecarFixture.WAIT_MS);
        long now;
        while ((now = f.server().registry().reservedBytes()) != expected) {
            if (System.nanoTime() > deadline) {
                fail(where + ": the server holds " + now + " bytes, " + (now - expected)
                        + " more than before (models now: " + f.client().list() + ")");
            }
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError(e);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // One fuzzing client

    private final class Client {
        final int id;
        final FuzzValues v;
        final ManagedChannel channel;
        final OptimizerGrpc.OptimizerStub async;
        final OptimizerGrpc.OptimizerBlockingStub blocking;
        /** Names of the models this client registered, forked or restored that may still exist. */
        final List<String> mine = new ArrayList<>();
        /** Element counts of the tensors of this client's models that registered. */
        final Map<String, int[]> sizes = new LinkedHashMap<>();
        /** Per client, so that a seed gives the same names whatever the interleaving. */
        long names;

        Client(int id, SplittableRandom random) {
            this.id = id;
            this.v = new FuzzValues(random);
            this.channel = f.channel();
            this.async = OptimizerGrpc.newStub(channel);
            this.blocking = OptimizerGrpc.newBlockingStub(channel).withMaxInboundMessageSize(4 << 20);
        }

        OptimizerGrpc.OptimizerBlockingStub b() {
            return blocking.withDeadlineAfter(CALL_DEADLINE_S, TimeUnit.SECONDS);
        }

        void ops(int n) {
            for (int i = 0; i < n; i++) {
                switch (v.below(15)) {
                    case 0, 1, 2, 3 -> attackVictim();
                    case 4, 5 -> register();
                    case 6, 7 -> randomStep();
                    case 8 -> pull();
                    case 9 -> unary("Describe", () -> b().describe(DescribeRequest.newBuilder().setModel(anyModel()).build()));
                    case 10 -> unary("History", () -> b().history(HistoryRequest.newBuilder()
                            .setModel(anyModel()).setFromVersion(v.anyLong()).setMaxVersions(v.anyInt()).build()));
                    case 11 -> unary("List", () -> b().list(ListRequest.getDefaultInstance()));
                    case 12 -> unary("Delete", () -> b().delete(DeleteRequest.newBuilder().setModel(deletable()).build()));
                    case 13 -> addTensors();
                    default -> snapshots();
                }
            }
        }

        void unary(String op, Runnable call) {
            try {
                call.run();
                record(op, Status.OK);
            } catch (StatusRuntimeException e) {
                record(op, e.getStatus());
            }
        }

        String freshName() {
            String n = "fz-" + id + "-" + ++names;
            mine.add(n);
            return n;
        }

        /** Any model name for a request that cannot change a model: the victim's included. */
        String anyModel() {
            return switch (v.below(4)) {
                case 0 -> VICTIM;
                case 1 -> mine.isEmpty() ? VICTIM : v.pick(mine);
                default -> v.name(mine.isEmpty() ? VICTIM : v.pick(mine));
            };
        }

        /** A name for a request that may change or remove a model: never the victim or its twin. */
        String deletable() {
            String n = !sizes.isEmpty() && v.chance(0.5) ? v.pick(List.copyOf(sizes.keySet()))
                    : mine.isEmpty() || v.chance(0.3) ? v.name("fz-" + id) : v.pick(mine);
            return n.equals(VICTIM) || n.equals(TWIN) ? "fz-" + id : n;
        }

        // ---- Step against the victim: a valid step with at least one thing wrong with it

        void attackVictim() {
            List<StepRequest> msgs = new ArrayList<>();
            boolean cancel = false;
            boolean halfCloseEarly = false;
            List<GradientChunk> chunks = new ArrayList<>();
            for (int t = 0; t < SIZES.length; t++) {
                // Split each tensor into pieces: a valid way to send it, in any order.
                int off = 0;
                while (off < SIZES[t]) {
                    int len = Math.min(SIZES[t] - off, 1 + v.below(SIZES[t]));
                    chunks.add(GradientChunk.newBuilder().setStepId(1).setTensor(t).setOffset(off)
                            .setData(v.floats(len, 0)).build());
                    off += len;
                }
            }
            Collections.shuffle(chunks, new Random(v.random.nextLong()));
            StepCommit.Builder commit = StepCommit.newBuilder().setStepId(1);
            if (v.chance(0.3)) {
                commit.setView(View.newBuilder().setKind(ViewKind.VIEW_TRAIN));
            }
            String clientId = "attacker-" + id + "-" + ++names;
            StepOpen.Builder open = StepOpen.newBuilder().setModel(VICTIM).setClientId(clientId);
            List<String> done = new ArrayList<>();
            // Chunks added by a mutation, kept apart so that no later mutation undoes another's defect.
            // Removing a chunk never combines with adding or growing one: removing the duplicate,
            // or the chunk that another grew over, would make the step valid again.
            List<GradientChunk> extra = new ArrayList<>();
            boolean removed = false;
            boolean grown = false;
            for (int m = 1 + (v.chance(0.3) ? v.below(3) : 0); m > 0; m--) {
                int which = chunks.isEmpty() ? 8 : v.below(18);
                if ((which == 5 && (!extra.isEmpty() || grown)) || ((which == 4 || which == 6) && removed)) {
                    which = 10;
                }
                done.add(Integer.toString(which));
                if (chunks.isEmpty()) {
                    commit.addNoGrad(3);
                    continue;
                }
                int c = v.below(chunks.size());
                GradientChunk chunk = chunks.get(c);
                int numel = chunk.getTensor() >= 0 && chunk.getTensor() < SIZES.length ? SIZES[chunk.getTensor()] : 1;
                switch (which) {
                    case 0 -> { // NaN or Inf under the default reject policy
                        if (chunk.getData().size() % 4 != 0) {
                            break; // already truncated: invalid as it is
                        }
                        ByteBuffer data = ByteBuffer.wrap(chunk.getData().toByteArray()).order(ByteOrder.LITTLE_ENDIAN);
                        data.putFloat(v.below(data.capacity() / 4) * 4, v.anyFloat(1));
                        chunks.set(c, chunk.toBuilder().setData(ByteString.copyFrom(data.array())).build());
                    }
                    case 1 -> chunks.set(c, chunk.toBuilder().setOffset(numel + Math.abs(v.anyLong() % 1000))
                            .build());
                    case 2 -> chunks.set(c, chunk.toBuilder().setOffset(v.chance(0.5) ? -1 : Long.MIN_VALUE | chunk.getOffset()).build());
                    case 3 -> { // a length that is not whole floats
                        if (chunk.getData().size() % 4 == 0) {
                            chunks.set(c, chunk.toBuilder().setData(chunk.getData()
                                    .substring(0, chunk.getData().size() - 1 - v.below(3))).build());
                        }
                    }
                    case 4 -> { // past the tensor's end, or over the next chunk
                        if (chunk.getData().size() % 4 == 0) {
                            chunks.set(c, chunk.toBuilder().setData(chunk.getData()
                                    .concat(v.floats(1 + v.below(4), 0))).build());
                            grown = true;
                        }
                    }
                    case 5 -> {
                        chunks.remove(c);
                        removed = true;
                    }
                    case 6 -> extra.add(chunk);
                    case 7 -> extra.add(chunk.toBuilder()
                            .setTensor(v.pick(List.of(3, 4, -1, Integer.MAX_VALUE, Integer.MIN_VALUE))).build());
                    case 8 -> commit.addNoGrad(v.pick(List.of(3, -1, Integer.MIN_VALUE)));
                    case 9 -> commit.putGroupLr(v.chance(0.5) ? v.name("nope") + "?" : "no_decay",
                            v.pick(List.of(Double.NaN, -1.0, Double.NEGATIVE_INFINITY)));
                    case 10 -> commit.setBaseVersion(v.chance(0.5) ? -1 : Long.MAX_VALUE);
                    case 11 -> cancel = true;
                    case 12 -> halfCloseEarly = true;
                    case 13 -> chunks.set(c, chunk.toBuilder().setStepId(chunk.getStepId() + 1 + v.below(3)).build());
                    case 14 -> open.setClientId("c".repeat(257 + v.below(10_000)));
                    case 15 -> commit.putGroupHyperparameters(v.pick(List.of("default", "no_decay", v.name("nope") + "?")),
                            v.pick(List.of(struct("amsgrad", true), struct("momentum", 0.5),
                                    struct("betas", List.of(1.5, 0.9)), struct("eps", -1.0), struct("lr", "fast"))));
                    case 16 -> { // weights at an eval point AdamW cannot convert from, or no such kind
                        if (v.chance(0.5)) {
                            commit.setKind(StepKind.STEP_SET_WEIGHTS)
                                    .setWeightsView(v.pick(List.of(ViewKind.VIEW_EVAL, ViewKind.VIEW_SLOT)));
                        } else {
                            commit.setKindValue(v.pick(List.of(2, -1, 99)));
                        }
                    }
                    default -> { // A view the model cannot serve, or a number the enum lacks
                        commit.setView(View.newBuilder().setKindValue(v.pick(List.of(99, -1, 7))));
                    }
                }
            }
            for (GradientChunk e : extra) {
                chunks.add(v.below(chunks.size() + 1), e);
            }
            msgs.add(StepRequest.newBuilder().setOpen(open).build());
            for (GradientChunk c : chunks) {
                msgs.add(StepRequest.newBuilder().setChunk(c).build());
            }
            if (!cancel && !halfCloseEarly) {
                msgs.add(StepRequest.newBuilder().setCommit(commit).build());
            }
            RawStep s = RawStep.start(async);
            int cut = cancel ? v.below(msgs.size() + 1) : msgs.size();
            for (int i = 0; i < cut; i++) {
                s.send(msgs.get(i));
            }
            Status st;
            if (cancel) {
                s.cancel();
                st = Status.CANCELLED;
            } else {
                s.halfClose();
                st = s.awaitClose();
            }
            boolean applied = s.responses.stream().anyMatch(r -> r.hasResult() && !r.getResult().getSkipped());
            if (applied) {
                problems.add("an invalid step (mutations " + done + ") was applied to the victim: "
                        + s.responses.get(s.responses.size() - 1).getResult());
            }
            record("Step(victim)", st);
        }

        // ---- Register: specs of any shape, then weights and state chunks right or wrong

        void register() {
            boolean plausible = v.chance(0.5);
            ModelSpec spec = plausible ? plausibleSpec() : spec();
            // Most plausible registrations send their weights right, so that there are models to step.
            boolean clean = plausible && v.chance(0.7);
            List<RegisterRequest> msgs = new ArrayList<>();
            if (clean || v.chance(0.95)) {
                msgs.add(RegisterRequest.newBuilder().setSpec(spec).build());
            }
            long total = 0;
            boolean countable = true;
            for (TensorSpec t : spec.getTensorsList()) {
                long n = 1;
                for (long d : t.getShapeList()) {
                    n = d < 0 || d > 4096 ? Long.MAX_VALUE : n * d;
                    if (n > 100_000) {
                        countable = false;
                        break;
                    }
                }
                total += Math.min(n, 100_000);
            }
            if (countable && total < 20_000 && (clean || v.chance(0.7))) {
                // The right weights, maybe with a defect, maybe out of order
                for (int t = 0; t < spec.getTensorsCount(); t++) {
                    long n = 1;
                    for (long d : spec.getTensors(t).getShapeList()) {
                        n *= d;
                    }
                    msgs.add(RegisterRequest.newBuilder().setWeights(WeightsChunk.newBuilder().setTensor(t)
                            .setData(v.floats((int) n, 0.05))).build());
                }
                if (!clean && v.chance(0.3) && msgs.size() > 1) {
                    msgs.remove(1 + v.below(msgs.size() - 1));
                }
                if (!clean && v.chance(0.3) && msgs.size() > 1) {
                    msgs.add(1 + v.below(msgs.size() - 1), msgs.get(msgs.size() - 1));
                }
            }
            for (int i = clean ? 0 : v.below(3); i > 0; i--) {
                msgs.add(v.chance(0.5)
                        ? RegisterRequest.newBuilder().setWeights(WeightsChunk.newBuilder().setTensor(v.anyInt())
                        .setOffset(v.anyLong()).setVersion(v.anyLong()).setData(v.anyBytes())).build()
                        : RegisterRequest.newBuilder().setState(StateChunk.newBuilder().setTensor(v.anyInt())
                        .setSlot(v.pick(FuzzValues.SLOTS)).setOffset(v.anyLong()).setData(v.anyBytes())).build());
            }
            if (!clean && v.chance(0.1)) {
                msgs.add(RegisterRequest.newBuilder().setSpec(spec).build());
            }
            CompletableFuture<Status> closed = new CompletableFuture<>();
            @SuppressWarnings("unchecked")
            ClientCallStreamObserver<RegisterRequest>[] call = new ClientCallStreamObserver[1];
            async.register(new ClientResponseObserver<RegisterRequest, ModelInfo>() {
                @Override
                public void beforeStart(ClientCallStreamObserver<RegisterRequest> requestStream) {
                    call[0] = requestStream;
                }

                @Override
                public void onNext(ModelInfo value) {}

                @Override
                public void onError(Throwable t) {
                    closed.complete(Status.fromThrowable(t));
                }

                @Override
                public void onCompleted() {
                    closed.complete(Status.OK);
                }
            });
            boolean truncate = !clean && v.chance(0.15);
            int cut = truncate ? v.below(msgs.size() + 1) : msgs.size();
            for (int i = 0; i < cut; i++) {
                call[0].onNext(msgs.get(i));
            }
            if (truncate) {
                call[0].cancel("a truncated registration", null);
                record("Register", Status.CANCELLED);
                return;
            }
            call[0].onCompleted();
            try {
                Status st = closed.get(CALL_DEADLINE_S, TimeUnit.SECONDS);
                record("Register", st);
                if (st.isOk()) {
                    sizes.put(spec.getName(), numels(spec));
                }
            } catch (Exception e) {
                call[0].cancel("no answer", e);
                problems.add("Register did not end within " + CALL_DEADLINE_S + " s");
            }
        }

        /**
         * AddTensors: on the victim always with one defect (it must change nothing), on this client's
         * models plausible (a new group, its weights right) or anything at all.
         */
        void addTensors() {
            boolean victim = v.chance(0.3);
            String model = victim ? VICTIM : deletable();
            int[] known = sizes.get(model);
            int first = victim ? SIZES.length : known != null ? known.length : v.below(4);
            AddTensorsSpec.Builder spec = AddTensorsSpec.newBuilder().setModel(model)
                    .setGroup(ParamGroup.newBuilder().setName("added-" + names++));
            List<Integer> numels = new ArrayList<>();
            for (int i = 1 + v.below(3); i > 0; i--) {
                int n = 1 + v.below(20);
                spec.addTensors(TensorSpec.newBuilder().setName("a" + names++).addShape(n));
                numels.add(n);
            }
            List<AddTensorsRequest> msgs = new ArrayList<>();
            for (int i = 0; i < numels.size(); i++) {
                msgs.add(AddTensorsRequest.newBuilder().setWeights(WeightsChunk.newBuilder().setTensor(first + i)
                        .setData(v.floats(numels.get(i), 0))).build());
            }
            int defect = victim ? v.below(8) : v.chance(0.5) ? -1 : v.below(9);
            switch (defect) {
                case 0 -> spec.setTensors(0, spec.getTensors(0).toBuilder().setName(victim ? "w" : v.name("t0")));
                case 1 -> spec.getGroupBuilder().setName(victim ? "no_decay" : v.name("g"));
                case 2 -> spec.setTensors(0, spec.getTensors(0).toBuilder().addShape(victim || v.chance(0.5) ? 0 : v.anyLong()));
                case 3 -> spec.getGroupBuilder().setHyperparameters(victim ? struct("lr", -1.0)
                        : v.struct(FuzzValues.HYPERPARAMETERS, 0));
                case 4 -> msgs.add(msgs.get(0)); // a chunk sent twice
                case 5 -> msgs.remove(msgs.size() - 1); // a tensor without weights
                case 6 -> msgs.add(AddTensorsRequest.newBuilder().setWeights(WeightsChunk.newBuilder()
                        .setTensor(v.below(first + 1)).setOffset(v.anyLong()).setData(v.anyBytes())).build());
                case 7 -> spec.getGroupBuilder().addTensors(v.name("w"));
                case 8 -> spec.addTensors(TensorSpec.newBuilder().setName(v.name("a")).addShape(v.anyLong()));
                default -> { }
            }
            msgs.add(0, AddTensorsRequest.newBuilder().setSpec(spec).build());
            CompletableFuture<Status> closed = new CompletableFuture<>();
            io.grpc.stub.StreamObserver<AddTensorsRequest> call = async.addTensors(new io.grpc.stub.StreamObserver<>() {
                @Override
                public void onNext(ModelInfo value) {}

                @Override
                public void onError(Throwable t) {
                    closed.complete(Status.fromThrowable(t));
                }

                @Override
                public void onCompleted() {
                    closed.complete(Status.OK);
                }
            });
            msgs.forEach(call::onNext);
            call.onCompleted();
            try {
                Status st = closed.get(CALL_DEADLINE_S, TimeUnit.SECONDS);
                record("AddTensors", st);
                if (st.isOk()) {
                    if (victim) {
                        problems.add("AddTensors with defect " + defect + " changed the victim");
                    }
                    if (known != null) { // its steps now need gradients for the new tensors too
                        int[] now = java.util.Arrays.copyOf(known, known.length + numels.size());
                        for (int i = 0; i < numels.size(); i++) {
                            now[known.length + i] = numels.get(i);
                        }
                        sizes.put(model, now);
                    }
                }
            } catch (Exception e) {
                problems.add("AddTensors did not end within " + CALL_DEADLINE_S + " s");
            }
        }

        /** A spec the server should accept: small shapes, a real algorithm, known hyperparameters. */
        ModelSpec plausibleSpec() {
            ModelSpec.Builder s = ModelSpec.newBuilder().setName(freshName());
            int tensors = 1 + v.below(3);
            for (int i = 0; i < tensors; i++) {
                TensorSpec.Builder t = TensorSpec.newBuilder().setName("t" + i);
                for (int d = v.below(3); d > 0; d--) {
                    t.addShape(1 + v.below(20));
                }
                s.addTensors(t);
            }
            if (tensors > 1 && v.chance(0.5)) {
                s.addGroups(ParamGroup.newBuilder().setName("g").addTensors("t1")
                        .setHyperparameters(struct("lr", 0.1)));
            }
            OptimizerConfig.Builder o = OptimizerConfig.newBuilder().setAlgorithm(v.pick(FuzzValues.ALGORITHMS))
                    .setNonFiniteValue(v.below(3));
            if (v.chance(0.3)) {
                o.addEma(EmaShadow.newBuilder().setDecay(0.9).setEvery(v.below(3)));
            }
            if (v.chance(0.2)) {
                o.setLookahead(Lookahead.newBuilder().setK(1 + v.below(4)).setAlpha(0.5).setPullbackMomentum("none"));
            }
            if (v.chance(0.3)) {
                o.setClipGradNorm(0.5);
            }
            if (v.chance(0.3)) {
                o.setSchedule(Schedule.newBuilder().setType("linear_warmup")
                        .setParameters(struct("warmup_steps", 3)));
            }
            return s.setOptimizer(o).build();
        }

        ModelSpec spec() {
            ModelSpec.Builder s = ModelSpec.newBuilder();
            s.setName(v.chance(0.7) ? freshName() : v.chance(0.2) ? VICTIM : v.name(freshName()));
            for (int i = v.below(5); i > 0; i--) {
                TensorSpec.Builder t = TensorSpec.newBuilder().setName(v.chance(0.8) ? "t" + i : v.name("t" + i));
                for (int d = v.below(4); d > 0; d--) {
                    t.addShape(v.chance(0.8) ? v.below(40) : v.anyLong());
                }
                s.addTensors(t);
            }
            for (int i = v.below(3); i > 0; i--) {
                ParamGroup.Builder g = ParamGroup.newBuilder().setName(v.name("g" + i));
                for (int k = v.below(3); k > 0; k--) {
                    g.addTensors(v.name("t" + (1 + v.below(4))));
                }
                if (v.chance(0.5)) {
                    g.setHyperparameters(v.struct(FuzzValues.HYPERPARAMETERS, 0));
                }
                s.addGroups(g);
            }
            OptimizerConfig.Builder o = OptimizerConfig.newBuilder()
                    .setAlgorithm(v.chance(0.85) ? v.pick(FuzzValues.ALGORITHMS) : v.name("Adam"))
                    .setHyperparameters(v.struct(FuzzValues.HYPERPARAMETERS, 0))
                    .setNonFiniteValue(v.chance(0.9) ? v.below(3) : v.anyInt());
            if (v.chance(0.3)) {
                o.setClipGradNorm(v.anyDouble());
            }
            if (v.chance(0.3)) {
                o.addEma(EmaShadow.newBuilder().setDecay(v.chance(0.5) ? 0.9 : v.anyDouble()).setEvery(v.anyInt()));
            }
            if (v.chance(0.2)) {
                o.setLookahead(Lookahead.newBuilder().setK(v.anyInt()).setAlpha(v.anyDouble())
                        .setPullbackMomentum(v.name("reset")));
            }
            if (v.chance(0.3)) {
                o.setSchedule(schedule());
            }
            s.setOptimizer(o);
            if (v.chance(0.2)) {
                ModelState.Builder st = ModelState.newBuilder().setVersion(v.anyLong()).setScheduleStep(v.anyLong())
                        .setLookaheadStep(v.anyLong()).setWeightsViewValue(v.chance(0.8) ? v.below(3) : v.anyInt());
                for (int i = v.below(4); i > 0; i--) {
                    st.addTensorSteps(v.anyLong());
                }
                for (int i = v.below(2); i > 0; i--) {
                    st.addEmaUpdates(v.anyLong());
                }
                s.setState(st);
            }
            if (v.chance(0.2)) {
                s.setCoordination(Coordination.newBuilder().setModeValue(v.chance(0.8) ? v.below(2) : v.anyInt())
                        .setSync(SyncOptions.newBuilder().setK(v.anyInt()).setTimeoutMs(v.below(50))
                                .setMinK(v.anyInt()).setCombineValue(v.below(3))));
            }
            return s.build();
        }

        Schedule schedule() {
            return Schedule.newBuilder().setType(v.chance(0.8) ? v.pick(FuzzValues.SCHEDULES) : v.name("wsd"))
                    .setParameters(v.struct(FuzzValues.SCHEDULE_PARAMETERS, 0)).build();
        }

        // ---- Step against this client's own models or no model: anything in any order

        /** Steps on one of this client's models: whole gradients, sometimes with a defect. */
        void plausibleSteps(String model, int[] numel) {
            RawStep s = RawStep.start(async);
            int wire = v.chance(0.6) ? 0 : v.below(3);
            s.send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model)
                    .setClientId(v.chance(0.3) ? "" : "trainer-" + id).setWireDtypeValue(wire)).build());
            long stepId = 1 + v.below(3);
            for (int k = 1 + v.below(3); k > 0; k--, stepId += v.chance(0.9) ? 1 : -1) {
                List<GradientChunk> chunks = new ArrayList<>();
                StepCommit.Builder c = StepCommit.newBuilder().setStepId(stepId)
                        .setView(v.chance(0.5) ? View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build() : v.view());
                for (int t = 0; t < numel.length; t++) {
                    if (v.chance(0.15)) {
                        c.addNoGrad(t);
                        continue;
                    }
                    for (int off = 0; off < numel[t]; ) {
                        int len = Math.min(numel[t] - off, 1 + v.below(numel[t]));
                        chunks.add(GradientChunk.newBuilder().setStepId(stepId).setTensor(t).setOffset(off)
                                .setData(v.elements(wire, len, 0.03)).build());
                        off += len;
                    }
                }
                Collections.shuffle(chunks, new Random(v.random.nextLong()));
                if (v.chance(0.15) && !chunks.isEmpty()) {
                    chunks.remove(v.below(chunks.size()));
                }
                if (v.chance(0.1) && !chunks.isEmpty()) {
                    chunks.add(chunks.get(v.below(chunks.size())));
                }
                if (v.chance(0.1)) {
                    c.putGroupLr(v.chance(0.7) ? "default" : "g", v.chance(0.7) ? 0.05 : v.anyDouble());
                }
                if (v.chance(0.1)) {
                    c.putGroupHyperparameters(v.chance(0.7) ? "default" : "g", v.chance(0.7)
                            ? struct("weight_decay", 0.01 * v.below(3)) : v.struct(List.of("eps", "betas", "lr"), 1));
                }
                if (v.chance(0.1)) { // the chunks are weights: set them
                    c.setKind(StepKind.STEP_SET_WEIGHTS);
                }
                if (v.chance(0.1)) {
                    c.setBaseVersion(v.chance(0.7) ? 0 : v.anyLong());
                }
                chunks.forEach(g -> s.send(StepRequest.newBuilder().setChunk(g).build()));
                s.send(StepRequest.newBuilder().setCommit(c).build());
            }
            finish("Step(plausible)", s, model);
        }

        /** Half-closes (or now and then cancels) a step stream and records how it ended. */
        void finish(String op, RawStep s, String model) {
            if (v.chance(0.15)) {
                s.cancel();
                record(op, Status.CANCELLED);
                return;
            }
            s.halfClose();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(CALL_DEADLINE_S);
            while (!s.isClosed() && System.nanoTime() < deadline) {
                try {
                    Thread.sleep(1);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
            if (!s.isClosed()) {
                s.cancel();
                problems.add(op + " on '" + model + "' did not end within " + CALL_DEADLINE_S + " s of its half-close");
                return;
            }
            record(op, s.awaitClose());
        }

        void randomStep() {
            String model = deletable();
            int[] numel = sizes.get(model);
            if (numel != null && v.chance(0.6)) {
                plausibleSteps(model, numel);
                return;
            }
            RawStep s = RawStep.start(async);
            int n = 1 + v.below(12);
            long stepId = 1;
            for (int i = 0; i < n; i++) {
                int kind = i == 0 && v.chance(0.9) ? 0 : v.below(3);
                switch (kind) {
                    case 0 -> s.send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model)
                            .setClientId(v.chance(0.5) ? "" : v.name("client"))
                            .setWireDtypeValue(v.chance(0.5) ? 0 : v.wireDtype())).build());
                    case 1 -> s.send(StepRequest.newBuilder().setChunk(GradientChunk.newBuilder()
                            .setStepId(v.chance(0.7) ? stepId : v.anyLong())
                            .setTensor(v.chance(0.7) ? v.below(4) : v.anyInt())
                            .setOffset(v.chance(0.7) ? v.below(64) : v.anyLong())
                            .setData(v.anyBytes())).build());
                    default -> {
                        StepCommit.Builder c = StepCommit.newBuilder()
                                .setStepId(v.chance(0.7) ? stepId++ : v.anyLong()).setView(v.view());
                        for (int k = v.below(3); k > 0; k--) {
                            c.addNoGrad(v.chance(0.8) ? v.below(4) : v.anyInt());
                        }
                        if (v.chance(0.3)) {
                            c.putGroupLr(v.name("default"), v.anyDouble());
                        }
                        if (v.chance(0.3)) {
                            c.setBaseVersion(v.anyLong());
                        }
                        if (v.chance(0.2)) {
                            c.putGroupHyperparameters(v.name("default"), v.struct(List.of("eps", "betas", "amsgrad"), 2));
                        }
                        if (v.chance(0.2)) {
                            c.setKindValue(v.chance(0.5) ? 1 : v.anyInt()).setWeightsViewValue(v.below(8));
                        }
                        s.send(StepRequest.newBuilder().setCommit(c).build());
                    }
                }
            }
            finish("Step", s, model);
        }

        // ---- Reads, snapshots, restores, forks and exports

        void pull() {
            PullRequest.Builder p = PullRequest.newBuilder().setModel(anyModel()).setView(v.view())
                    .setWireDtypeValue(v.chance(0.5) ? 0 : v.wireDtype());
            for (int i = v.chance(0.5) ? 0 : v.below(4); i > 0; i--) {
                p.addTensors(v.chance(0.8) ? v.below(4) : v.anyInt());
            }
            unary("Pull", () -> b().pull(p.build()).forEachRemaining(c -> {}));
        }

        void snapshots() {
            switch (v.below(5)) {
                case 0 -> unary("Snapshot", () -> b().snapshot(SnapshotRequest.newBuilder().setModel(anyModel()).build()));
                case 1 -> unary("ListSnapshots", () -> b().listSnapshots(ListSnapshotsRequest.newBuilder()
                        .setModel(v.chance(0.3) ? "" : anyModel()).build()));
                case 2 -> {
                    RestoreRequest.Builder r = RestoreRequest.newBuilder().setModel(anyModel())
                            .setId(v.chance(0.6) ? "" : v.name(String.format("%06d", v.below(5))))
                            .setAsModel(v.chance(0.8) ? freshName() : v.chance(0.5) ? "" : deletable())
                            .setReplace(v.random.nextBoolean());
                    String target = r.getAsModel().isEmpty() ? r.getModel() : r.getAsModel();
                    if (target.equals(VICTIM) || target.equals(TWIN)) {
                        r.setReplace(false); // replacing the victim is a valid way to change it
                    }
                    unary("Restore", () -> b().restore(r.build()));
                }
                case 3 -> {
                    ForkRequest.Builder r = ForkRequest.newBuilder().setModel(anyModel())
                            .setNewModel(v.chance(0.8) ? freshName() : v.chance(0.2) ? VICTIM : deletable());
                    if (v.chance(0.4)) {
                        r.setSchedule(schedule());
                    }
                    unary("Fork", () -> b().fork(r.build()));
                }
                default -> {
                    ExportRequest.Builder r = ExportRequest.newBuilder().setModel(anyModel());
                    if (v.chance(0.7)) {
                        r.setView(v.view());
                    }
                    unary("Export", () -> b().export(r.build()));
                }
            }
        }
    }
}
