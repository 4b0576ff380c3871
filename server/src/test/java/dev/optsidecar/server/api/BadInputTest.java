package dev.optsidecar.server.api;

import com.google.rpc.ErrorInfo;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.DeleteRequest;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.RegisterEnd;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.UnaryOperator;
import java.util.stream.Stream;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.le;
import static dev.optsidecar.server.StandardModel.spec;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.StatusAssertions.badRequest;
import static dev.optsidecar.server.StatusAssertions.details;
import static dev.optsidecar.server.StatusAssertions.errorInfo;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

/**
 * Bad Register input and unknown models, end to end through the service: each case gets the
 * documented status with a description naming the field, tensor or model, and a refused
 * registration leaves nothing behind (no model, no reserved memory).
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class BadInputTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    private static final AtomicInteger SEQ = new AtomicInteger();

    private static String unique(String prefix) {
        return prefix + "-" + SEQ.incrementAndGet();
    }

    // ------------------------------------------------------------------------------------------
    // Register: a bad spec, through the Java client

    /** A spec edit, the status it must get and what the description must name. */
    record BadSpec(UnaryOperator<ModelSpec.Builder> edit, Status.Code code, String... fragments) {}

    private static Arguments badSpec(String name, UnaryOperator<ModelSpec.Builder> edit, Status.Code code,
                                     String... fragments) {
        return Arguments.of(Named.of(name, new BadSpec(edit, code, fragments)));
    }

    private static UnaryOperator<ModelSpec.Builder> hp(String algorithm, Object... nameValuePairs) {
        return b -> {
            b.getOptimizerBuilder().setAlgorithm(algorithm).setHyperparameters(struct(nameValuePairs));
            return b;
        };
    }

    static Stream<Arguments> badSpecs() {
        Status.Code invalid = Status.Code.INVALID_ARGUMENT;
        String top = "spec.optimizer.hyperparameters.";
        return Stream.of(
                badSpec("unknown algorithm", b -> {
                    b.getOptimizerBuilder().setAlgorithm("Adamax");
                    return b;
                }, invalid, "spec.optimizer.algorithm", "'Adamax'"),
                badSpec("empty algorithm", b -> {
                    b.getOptimizerBuilder().setAlgorithm("");
                    return b;
                }, invalid, "spec.optimizer.algorithm"),
                badSpec("unknown hyperparameter", hp("Adam", "lr", 0.01, "foo", 1),
                        invalid, top + "foo", "unknown hyperparameter"),
                badSpec("hyperparameter of another algorithm (betas on SGD)", hp("SGD", "betas", List.of(0.9, 0.99)),
                        invalid, top + "betas", "unknown hyperparameter"),
                badSpec("unknown hyperparameter in a group", b -> {
                    b.getGroupsBuilder(0).setHyperparameters(struct("bar", 1));
                    return b;
                }, invalid, "spec.groups[0].hyperparameters.bar"),
                badSpec("negative lr", hp("Adam", "lr", -0.001), invalid, top + "lr", ">= 0"),
                badSpec("NaN lr", hp("AdamW", "lr", Double.NaN), invalid, top + "lr"),
                badSpec("infinite lr", hp("AdamW", "lr", Double.POSITIVE_INFINITY), invalid, top + "lr", "finite"),
                badSpec("negative lr in a group override", b -> {
                    b.getGroupsBuilder(0).setHyperparameters(struct("lr", -1));
                    return b;
                }, invalid, "spec.groups[0].hyperparameters.lr"),
                badSpec("betas[1] = 1", hp("Adam", "betas", List.of(0.9, 1.0)), invalid, top + "betas", "betas[1]"),
                badSpec("betas[0] < 0", hp("RAdam", "betas", List.of(-0.1, 0.999)), invalid, top + "betas", "betas[0]"),
                badSpec("betas of the wrong length", hp("Adam", "betas", List.of(0.9)), invalid, top + "betas",
                        "list of 2"),
                badSpec("betas not numbers", hp("Adam", "betas", List.of(0.9, "x")), invalid, top + "betas[1]"),
                badSpec("negative eps", hp("Adam", "eps", -1e-8), invalid, top + "eps"),
                badSpec("negative weight_decay", hp("AdamW", "weight_decay", -0.1), invalid, top + "weight_decay"),
                badSpec("lr not a number", hp("Adam", "lr", "fast"), invalid, top + "lr", "expected a finite number"),
                badSpec("amsgrad not a boolean", hp("Adam", "amsgrad", 1), invalid, top + "amsgrad", "true or false"),
                badSpec("nesterov without momentum", hp("SGD", "lr", 0.1, "nesterov", true), invalid,
                        top + "nesterov", "momentum"),
                badSpec("nesterov with dampening", hp("SGD", "lr", 0.1, "momentum", 0.9, "dampening", 0.5,
                        "nesterov", true), invalid, top + "nesterov", "dampening"),
                badSpec("negative momentum", hp("SGD", "momentum", -0.5), invalid, top + "momentum"),
                badSpec("unknown non_finite policy", b -> {
                    b.getOptimizerBuilder().setNonFiniteValue(7);
                    return b;
                }, invalid, "spec.optimizer.non_finite"),
                badSpec("negative non_finite policy", b -> {
                    b.getOptimizerBuilder().setNonFiniteValue(-1);
                    return b;
                }, invalid, "spec.optimizer.non_finite", "NON_FINITE_SKIP (2)"),
                badSpec("unknown coordination mode", b -> {
                    b.getCoordinationBuilder().setModeValue(2);
                    return b;
                }, invalid, "spec.coordination.mode", "unknown value 2", "COORDINATION_ASYNC (0), COORDINATION_SYNC (1)"),
                badSpec("unknown combine", b -> {
                    b.getCoordinationBuilder().getSyncBuilder().setCombineValue(-5);
                    return b;
                }, invalid, "spec.coordination.sync.combine", "COMBINE_MEAN (0)"),
                badSpec("unknown stale policy", b -> {
                    b.getCoordinationBuilder().getAsyncBuilder().setStaleValue(9);
                    return b;
                }, invalid, "spec.coordination.async.stale", "STALE_DOWNWEIGHT (1)"),
                badSpec("sync k beyond 2^31 - 1 (uint32)", b -> {
                    b.getCoordinationBuilder().getSyncBuilder().setK(-1);
                    return b;
                }, invalid, "spec.coordination.sync.k", "4294967295"),
                badSpec("sync timeout beyond 2^31 - 1 ms (uint32)", b -> {
                    b.getCoordinationBuilder().getSyncBuilder().setTimeoutMs(Integer.MIN_VALUE);
                    return b;
                }, invalid, "spec.coordination.sync.timeout_ms", "2147483648"),
                badSpec("sync min_k beyond 2^31 - 1 (uint32)", b -> {
                    b.getCoordinationBuilder().getSyncBuilder().setMinK(-2);
                    return b;
                }, invalid, "spec.coordination.sync.min_k"),
                badSpec("unknown saved weights view", b -> {
                    b.setState(dev.optsidecar.proto.v1.ModelState.newBuilder().setWeightsViewValue(42));
                    return b;
                }, invalid, "spec.state.weights_view", "42"),
                badSpec("dimension 0", b -> {
                    b.setTensors(1, StandardModel.tensor("b", 0));
                    return b;
                }, invalid, "spec.tensors[1].shape[0]", "'b'"),
                badSpec("dimension 0 after a good one", b -> {
                    b.setTensors(0, StandardModel.tensor("w", 600, 0));
                    return b;
                }, invalid, "spec.tensors[0].shape[1]", "'w'"),
                badSpec("dimension beyond 2^63 (uint64)", b -> {
                    b.setTensors(1, StandardModel.tensor("b", -1L));
                    return b;
                }, invalid, "spec.tensors[1].shape[0]", "'b'", "18446744073709551615"),
                badSpec("element count overflows", b -> {
                    b.setTensors(1, StandardModel.tensor("b", 1L << 40, 1L << 40));
                    return b;
                }, invalid, "spec.tensors[1].shape", "'b'"),
                badSpec("duplicate tensor name", b -> {
                    b.setTensors(2, StandardModel.tensor("b", 3));
                    return b;
                }, invalid, "spec.tensors[2].name", "duplicate", "'b'"),
                badSpec("empty tensor name", b -> {
                    b.setTensors(1, TensorSpec.newBuilder().addShape(500));
                    return b;
                }, invalid, "spec.tensors[1].name"),
                badSpec("no tensors", b -> {
                    b.clearTensors().clearGroups();
                    return b;
                }, invalid, "spec.tensors"),
                badSpec("no model name", b -> {
                    b.setName("");
                    return b;
                }, invalid, "spec.name"),
                badSpec("group naming an unknown tensor", b -> {
                    b.getGroupsBuilder(0).addTensors("nope");
                    return b;
                }, invalid, "spec.groups[0].tensors", "'nope'"),
                badSpec("tensor in two groups", b -> {
                    b.addGroups(ParamGroup.newBuilder().setName("again").addTensors("scale"));
                    return b;
                }, invalid, "spec.groups[1].tensors", "'scale'", "no_decay"),
                badSpec("duplicate group name", b -> {
                    b.addGroups(ParamGroup.newBuilder().setName("no_decay"));
                    return b;
                }, invalid, "spec.groups[1].name", "no_decay"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badSpecs")
    void badSpecIsRejectedAndLeavesNothing(BadSpec bad) {
        String name = unique("badspec");
        ModelSpec.Builder b = StandardModel.adamSpec(name).toBuilder();
        ModelSpec spec = bad.edit().apply(b).build();
        long reserved = f.server().registry().reservedBytes();
        // The client uploads weights for the spec's tensors; give it one zero tensor per entry.
        List<TensorData> weights = new ArrayList<>();
        for (TensorSpec t : spec.getTensorsList()) {
            long numel = 1;
            for (long d : t.getShapeList()) {
                numel *= d;
            }
            weights.add(TensorData.of(new float[(int) Math.max(0, Math.min(numel, 1_000_000))]));
        }
        assertStatus(bad.code(), () -> f.client().register(spec, weights), bad.fragments());
        if (!spec.getName().isEmpty()) {
            f.assertNotFound(spec.getName());
        }
        assertEquals(reserved, f.server().registry().reservedBytes(), "memory still reserved after a refused Register");
    }

    // ------------------------------------------------------------------------------------------
    // Register: bad initial weights, through the raw stub

    /** Sends {@code messages} on a raw Register stream, half-closes it and returns how it ended. */
    private static Status rawRegister(List<RegisterRequest> messages) {
        CompletableFuture<Status> done = new CompletableFuture<>();
        StreamObserver<RegisterRequest> req = f.async().register(new RegisterEnd(done));
        messages.forEach(req::onNext);
        req.onCompleted();
        try {
            return done.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            throw new AssertionError("Register did not finish", e);
        }
    }

    private static RegisterRequest specMessage(ModelSpec spec) {
        return RegisterRequest.newBuilder().setSpec(spec).build();
    }

    private static RegisterRequest weights(int tensor, long offset, com.google.protobuf.ByteString data) {
        return RegisterRequest.newBuilder().setWeights(WeightsChunk.newBuilder()
                .setTensor(tensor).setOffset(offset).setData(data)).build();
    }

    /** Every chunk of the standard model's initial weights, as the client would send them. */
    private static List<RegisterRequest> allWeights(float[][] w) {
        List<RegisterRequest> out = new ArrayList<>();
        for (int t = 0; t < w.length; t++) {
            for (int off = 0; off < w[t].length; off += StandardModel.CHUNK_FLOATS) {
                int n = Math.min(StandardModel.CHUNK_FLOATS, w[t].length - off);
                out.add(weights(t, off, le(w[t], off, n)));
            }
        }
        return out;
    }

    record BadWeights(UnaryOperator<List<RegisterRequest>> edit, Status.Code code, String... fragments) {}

    private static Arguments badWeights(String name, UnaryOperator<List<RegisterRequest>> edit, Status.Code code,
                                        String... fragments) {
        return Arguments.of(Named.of(name, new BadWeights(edit, code, fragments)));
    }

    static Stream<Arguments> badWeights() {
        Status.Code invalid = Status.Code.INVALID_ARGUMENT;
        Status.Code precondition = Status.Code.FAILED_PRECONDITION;
        float[] four = {1, 2, 3, 4};
        return Stream.of(
                // The messages: [0] spec, [1] w[0, 262144), [2] w[262144, 300000), [3] b, [4] scale
                badWeights("second chunk of a multi-chunk tensor missing", m -> {
                    m.remove(2);
                    return m;
                }, precondition, "'w'", "incomplete", "37856 of 300000", "first missing element 262144"),
                badWeights("a whole tensor missing", m -> {
                    m.remove(4);
                    return m;
                }, precondition, "'scale'", "incomplete"),
                badWeights("no weights at all", m -> {
                    m.subList(1, m.size()).clear();
                    return m;
                }, precondition, "'w'", "incomplete"),
                badWeights("tensor index out of range", m -> {
                    m.add(weights(3, 0, le(four, 0, 4)));
                    return m;
                }, invalid, "chunk.tensor", "3"),
                badWeights("offset past the end", m -> {
                    m.set(3, weights(1, 498, le(four, 0, 4)));
                    return m;
                }, invalid, "chunk.offset", "'b'"),
                badWeights("data not a whole number of floats", m -> {
                    m.add(weights(1, 0, com.google.protobuf.ByteString.copyFrom(new byte[6])));
                    return m;
                }, invalid, "chunk.data", "'b'", "6 bytes"),
                badWeights("overlapping chunks", m -> {
                    m.add(weights(0, 262_000, le(new float[1000], 0, 1000)));
                    return m;
                }, invalid, "'w'", "[262000, 263000)", "already sent"),
                badWeights("weights before the spec", m -> {
                    RegisterRequest spec = m.remove(0);
                    m.add(spec);
                    return m;
                }, invalid, "spec"),
                badWeights("spec sent twice", m -> {
                    m.add(1, m.get(0));
                    return m;
                }, invalid, "spec", "twice"),
                badWeights("empty stream", m -> {
                    m.clear();
                    return m;
                }, invalid, "spec"),
                badWeights("empty message", m -> {
                    m.add(2, RegisterRequest.getDefaultInstance());
                    return m;
                }, invalid, "kind"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badWeights")
    void badInitialWeightsAreRejectedAndTheModelDoesNotExist(BadWeights bad) {
        String name = unique("badweights");
        List<RegisterRequest> messages = new ArrayList<>();
        messages.add(specMessage(StandardModel.adamSpec(name)));
        messages.addAll(allWeights(initialWeights(3)));
        long reserved = f.server().registry().reservedBytes();
        Status status = rawRegister(bad.edit().apply(messages));
        assertStatus(bad.code(), status, bad.fragments());
        f.assertNotFound(name);
        assertEquals(reserved, f.server().registry().reservedBytes(), "memory still reserved after a refused Register");
        // The same name is free: the full, valid upload now succeeds.
        List<RegisterRequest> good = new ArrayList<>();
        good.add(specMessage(StandardModel.adamSpec(name)));
        good.addAll(allWeights(initialWeights(3)));
        assertEquals(Status.Code.OK, rawRegister(good).getCode());
        assertBitsEqual(initialWeights(3), f.pull(name), "weights registered after the refused attempt");
        f.client().delete(name);
    }

    // ------------------------------------------------------------------------------------------
    // Register: name clash and memory limit

    @Test
    void duplicateModelNameIsAlreadyExistsAndTheFirstModelIsUntouched() {
        String name = unique("dup");
        float[][] first = initialWeights(5);
        f.client().register(StandardModel.adamSpec(name), tensors(first));
        ModelInfo before = f.client().describe(name);
        long reserved = f.server().registry().reservedBytes();

        assertStatus(Status.Code.ALREADY_EXISTS,
                () -> f.client().register(StandardModel.adamSpec(name), tensors(initialWeights(6))),
                "spec.name", "'" + name + "'");
        // A different spec under the same name is refused the same way.
        assertStatus(Status.Code.ALREADY_EXISTS,
                () -> f.client().register(spec(name, "SGD", struct("lr", 0.1), NonFinitePolicy.NON_FINITE_SKIP),
                        tensors(initialWeights(7))),
                "spec.name", "'" + name + "'");

        assertEquals(before, f.client().describe(name));
        assertBitsEqual(first, f.pull(name), "weights of the first model");
        assertEquals(reserved, f.server().registry().reservedBytes());
        f.client().delete(name);
    }

    /**
     * Two registrations of one name overlap: the name is checked again when the model is
     * published, so the one that completes second gets ALREADY_EXISTS and frees its memory.
     */
    @Test
    void nameTakenWhileRegisteringIsAlreadyExistsAtPublish() throws Exception {
        String name = unique("race");
        long reserved = f.server().registry().reservedBytes();
        CompletableFuture<Status> done = new CompletableFuture<>();
        StreamObserver<RegisterRequest> slow = f.async().register(new RegisterEnd(done));
        float[][] slowWeights = initialWeights(12);
        List<RegisterRequest> messages = allWeights(slowWeights);
        slow.onNext(specMessage(StandardModel.adamSpec(name)));
        messages.forEach(slow::onNext);
        SidecarFixture.awaitTrue("the first registration to reserve its memory",
                () -> f.server().registry().reservedBytes() > reserved);
        f.assertNotFound(name);

        float[][] fastWeights = initialWeights(13);
        f.client().register(StandardModel.adamSpec(name), tensors(fastWeights));
        slow.onCompleted();
        assertStatus(Status.Code.ALREADY_EXISTS, done.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS),
                "spec.name", "'" + name + "'");
        assertBitsEqual(fastWeights, f.pull(name), "weights of the registration that completed first");
        assertEquals(reserved + f.client().describe(name).getMemoryBytes(), f.server().registry().reservedBytes());
        f.client().delete(name);
    }

    @Test
    void modelOverTheMemoryLimitIsResourceExhausted() throws Exception {
        // The standard Adam model takes 300 501 floats x (weights, gradient, 2 moments) = 4 808 016 bytes,
        // and each trainer stepping it its own gradient buffer of 1 202 004 bytes.
        long limit = 6_100_000;
        try (SidecarFixture small = SidecarFixture.inProcess(limit).start()) {
            String big = "too-big";
            ModelSpec bigSpec = ModelSpec.newBuilder().setName(big)
                    .addTensors(StandardModel.tensor("huge", 1L << 40))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("Adam"))
                    .build();
            assertStatus(Status.Code.RESOURCE_EXHAUSTED,
                    () -> small.client().register(bigSpec, List.of(TensorData.of(new float[1]))),
                    "'" + big + "'", "memory limit");
            small.assertNotFound(big);
            assertEquals(0, small.server().registry().reservedBytes());

            // One standard model fits; a second does not, and is refused without leaking.
            small.client().register(StandardModel.adamSpec("fits"), tensors(initialWeights(1)));
            long used = small.server().registry().reservedBytes();
            assertEquals(small.client().describe("fits").getMemoryBytes(), used);
            assertStatus(Status.Code.RESOURCE_EXHAUSTED,
                    () -> small.client().register(StandardModel.adamSpec("second"), tensors(initialWeights(2))),
                    "'second'", "memory limit");
            small.assertNotFound("second");
            assertEquals(used, small.server().registry().reservedBytes());

            // Deleting the first frees its memory: now the second fits.
            small.client().delete("fits");
            assertEquals(0, small.server().registry().reservedBytes());
            small.client().register(StandardModel.adamSpec("second"), tensors(initialWeights(2)));
            assertBitsEqual(initialWeights(2), small.pull("second"), "weights of the model registered after the delete");
            small.client().delete("second");
            small.assertServerHealthy("small-health");
        }
    }

    // ------------------------------------------------------------------------------------------
    // Unknown models

    @Test
    void unknownModelIsNotFoundEverywhere() {
        String ghost = "ghost-model";
        f.assertNotFound(ghost);
        assertStatus(Status.Code.NOT_FOUND, () -> f.client().pull(ghost, tensors(StandardModel.zeros())), "'" + ghost + "'");
        assertStatus(Status.Code.NOT_FOUND,
                () -> drain(f.blocking().pull(PullRequest.newBuilder().setModel(ghost).build())), "model", "'" + ghost + "'");
        assertStatus(Status.Code.NOT_FOUND,
                () -> f.blocking().describe(DescribeRequest.newBuilder().setModel(ghost).build()), "model", "'" + ghost + "'");
        assertStatus(Status.Code.NOT_FOUND, () -> f.client().delete(ghost), "model", "'" + ghost + "'");
        assertStatus(Status.Code.NOT_FOUND,
                () -> f.blocking().delete(DeleteRequest.newBuilder().setModel(ghost).build()), "'" + ghost + "'");
        // The client's trainer describes the model first.
        assertStatus(Status.Code.NOT_FOUND, () -> f.client().trainer(ghost, "t"), "'" + ghost + "'");
        // A raw Step stream: StepOpen names the model.
        RawStep s = RawStep.open(f.async(), ghost);
        assertStatus(Status.Code.NOT_FOUND, s.awaitClose(), "open.model", "'" + ghost + "'");
    }

    @Test
    void deletedModelIsNotFoundEverywhere() {
        String name = unique("deleted");
        f.client().register(StandardModel.adamSpec(name), tensors(initialWeights(8)));
        long reserved = f.server().registry().reservedBytes();
        long size = f.client().describe(name).getMemoryBytes();
        f.client().delete(name);
        assertEquals(reserved - size, f.server().registry().reservedBytes());
        f.assertNotFound(name);
        assertStatus(Status.Code.NOT_FOUND, () -> f.client().pull(name, tensors(StandardModel.zeros())), "'" + name + "'");
        assertStatus(Status.Code.NOT_FOUND, () -> f.client().delete(name), "'" + name + "'");
        assertStatus(Status.Code.NOT_FOUND, RawStep.open(f.async(), name).awaitClose(), "open.model", "'" + name + "'");
    }

    @Test
    void missingModelNameAndStreamsWithoutOpenAreInvalid() {
        assertStatus(Status.Code.INVALID_ARGUMENT, () -> f.client().describe(""), "model");
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.open(f.async(), "").awaitClose(), "open.model");
        // A chunk or commit before StepOpen.
        RawStep chunkFirst = RawStep.start(f.async()).chunk(1, 0, 0, le(new float[4], 0, 4));
        assertStatus(Status.Code.INVALID_ARGUMENT, chunkFirst.awaitClose(), "open", "StepOpen");
        RawStep commitFirst = RawStep.start(f.async()).commit(1, ViewKind.VIEW_TRAIN);
        assertStatus(Status.Code.INVALID_ARGUMENT, commitFirst.awaitClose(), "open", "StepOpen");
    }

    @Test
    void pullOfAViewTheAlgorithmLacksIsInvalid() {
        String name = unique("views");
        f.client().register(StandardModel.adamSpec(name), tensors(initialWeights(9)));
        for (ViewKind kind : List.of(ViewKind.VIEW_EVAL, ViewKind.VIEW_EMA, ViewKind.VIEW_SLOW, ViewKind.VIEW_NONE)) {
            View view = View.newBuilder().setKind(kind).build();
            assertStatus(Status.Code.INVALID_ARGUMENT, () -> f.client().pull(name, view, tensors(StandardModel.zeros())),
                    "view", kind.name(), "'" + name + "'");
        }
        assertStatus(Status.Code.INVALID_ARGUMENT,
                () -> drain(f.blocking().pull(PullRequest.newBuilder().setModel(name)
                        .setView(View.newBuilder().setKindValue(42)).build())), "view", "'" + name + "'");
        assertBitsEqual(initialWeights(9), f.pull(name), "weights");
        f.client().delete(name);
    }

    // ------------------------------------------------------------------------------------------
    // Every error above went out with details a program can read

    /**
     * Runs last: each error the server sent in this class carries an ErrorInfo with a reason, and
     * a BadRequest, where there is one, names the same field as the ErrorInfo.
     */
    @Test
    @Order(Integer.MAX_VALUE)
    void everyErrorCarriesAReason() {
        List<SidecarFixture.SentError> sent = f.errorsSent();
        assertFalse(sent.isEmpty(), "no errors were recorded");
        for (SidecarFixture.SentError e : sent) {
            com.google.rpc.Status details = details(e.status(), e.trailers());
            ErrorInfo info = errorInfo(details);
            badRequest(details).ifPresent(bad -> {
                assertEquals(Status.Code.INVALID_ARGUMENT, e.status().getCode(), () -> "BadRequest with " + e);
                assertEquals(info.getMetadataOrDefault("field", ""), bad.getFieldViolations(0).getField(),
                        () -> "fields of " + e);
            });
        }
    }

    private static void drain(Iterator<?> it) {
        while (it.hasNext()) {
            it.next();
        }
    }

    @Test
    @Order(Integer.MAX_VALUE)
    void serverSurvivesAllOfTheAbove() {
        assertFalse(f.client().list().stream().anyMatch(n -> n.startsWith("badspec") || n.startsWith("badweights")));
        f.assertServerHealthy("bad-input-health");
    }
}
