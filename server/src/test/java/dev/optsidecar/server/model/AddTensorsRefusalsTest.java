package dev.optsidecar.server.model;

import com.google.protobuf.ByteString;
import com.google.rpc.ErrorInfo;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.FullState;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.StatusAssertions;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.data;
import static dev.optsidecar.server.TestData.hp;
import static dev.optsidecar.server.TestData.le;
import static dev.optsidecar.server.TestData.random;
import static dev.optsidecar.server.TestData.sync;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * AddTensors requests the server refuses: each names the field at fault and changes nothing (the
 * model's full state, the memory held and the registrations under way are as before).
 */
class AddTensorsRefusalsTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    private static final String MODEL = "refusals";
    private static final ParamGroup GROUP = ParamGroup.newBuilder().setName("late").build();

    /** An Adam model of w [40] (default group) and b [8] (no_decay), stepped twice. */
    @BeforeEach
    void register() {
        f.client().register(ModelSpec.newBuilder().setName(MODEL)
                .addTensors(StandardModel.tensor("w", 40)).addTensors(StandardModel.tensor("b", 8))
                .addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("b")
                        .setHyperparameters(hp("weight_decay", 0.0)))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("Adam").setHyperparameters(hp("lr", 0.01)))
                .build(), data(random(40, 1), random(8, 2)));
        try (Trainer t = f.client().trainer(MODEL, "t")) {
            for (int step = 1; step <= 2; step++) {
                t.step(new float[][] {random(40, 10 + step), random(8, 20 + step)}, new float[][] {new float[40], new float[8]});
            }
        }
    }

    @AfterEach
    void delete() {
        f.client().delete(MODEL);
    }

    /** What the server answered a raw AddTensors stream. */
    record Answer(Status status, Metadata trailers, ModelInfo info) {
        ErrorInfo errorInfo() {
            return StatusAssertions.errorInfo(StatusAssertions.details(status, trailers));
        }
    }

    static Answer send(SidecarFixture f, List<AddTensorsRequest> messages) {
        CompletableFuture<Answer> answer = new CompletableFuture<>();
        StreamObserver<AddTensorsRequest> requests = f.async().addTensors(new StreamObserver<>() {
            ModelInfo info;

            @Override
            public void onNext(ModelInfo value) {
                info = value;
            }

            @Override
            public void onError(Throwable t) {
                answer.complete(new Answer(Status.fromThrowable(t), Status.trailersFromThrowable(t), null));
            }

            @Override
            public void onCompleted() {
                answer.complete(new Answer(Status.OK, new Metadata(), info));
            }
        });
        messages.forEach(requests::onNext);
        requests.onCompleted();
        try {
            return answer.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    static AddTensorsRequest spec(String model, ParamGroup group, TensorSpec... tensors) {
        return AddTensorsRequest.newBuilder().setSpec(AddTensorsSpec.newBuilder().setModel(model)
                .addAllTensors(List.of(tensors)).setGroup(group)).build();
    }

    static AddTensorsRequest weights(int tensor, long offset, float[] values) {
        return AddTensorsRequest.newBuilder().setWeights(WeightsChunk.newBuilder().setTensor(tensor).setOffset(offset)
                .setData(ByteString.copyFrom(le(values)))).build();
    }

    /** Sends {@code messages}, which must be refused with {@code code} naming {@code field}; nothing changes. */
    private static void assertRefused(Status.Code code, String reason, String field, List<AddTensorsRequest> messages,
                                      String... fragments) {
        FullState before = FullState.of(f.client(), MODEL);
        long reserved = f.server().registry().reservedBytes();
        Answer a = send(f, messages);
        assertStatus(code, a.status(), fragments);
        ErrorInfo info = a.errorInfo();
        assertEquals(reason, info.getReason(), a.status()::toString);
        assertEquals(field, info.getMetadataOrDefault("field", ""), a.status()::toString);
        before.assertSame(FullState.of(f.client(), MODEL), "after a refused AddTensors");
        assertEquals(before.info().getState().getClientsList(), f.describe(MODEL).getState().getClientsList());
        assertEquals(0, f.server().registry().pendingRegistrations());
        // A pull's copy of the weights (FullState) may be given back just after the reading above:
        // no more than before is held, once that has happened.
        SidecarFixture.awaitTrue("bytes held back to their level " + reserved,
                () -> f.server().registry().reservedBytes() <= reserved);
    }

    private static void assertInvalid(String field, List<AddTensorsRequest> messages, String... fragments) {
        assertRefused(Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", field, messages, fragments);
    }

    @Test
    void aNameTheModelHasOrTheRequestRepeatsIsRefused() {
        assertInvalid("spec.tensors[0].name", List.of(spec(MODEL, GROUP, StandardModel.tensor("w", 3)),
                weights(2, 0, new float[3])), "model 'refusals' already has a tensor named 'w'");
        assertInvalid("spec.tensors[1].name", List.of(spec(MODEL, GROUP, StandardModel.tensor("x", 3),
                StandardModel.tensor("x", 3)), weights(2, 0, new float[3]), weights(3, 0, new float[3])), "twice");
        assertInvalid("spec.tensors[0].name", List.of(spec(MODEL, GROUP, StandardModel.tensor("", 3))), "required");
        assertInvalid("spec.tensors", List.of(spec(MODEL, GROUP)), "at least one tensor");
    }

    @Test
    void aGroupNameTheModelHasIsRefused() {
        for (String taken : List.of("no_decay", "default")) {
            assertInvalid("spec.group.name", List.of(spec(MODEL, ParamGroup.newBuilder().setName(taken).build(),
                    StandardModel.tensor("x", 3)), weights(2, 0, new float[3])), "already has a group named '" + taken + "'");
        }
        assertInvalid("spec.group.name", List.of(spec(MODEL, ParamGroup.getDefaultInstance(), StandardModel.tensor("x", 3))),
                "required");
        assertInvalid("spec.group.tensors", List.of(spec(MODEL, GROUP.toBuilder().addTensors("w").build(),
                StandardModel.tensor("x", 3))), "exactly the new tensors");
    }

    @Test
    void badShapesAreRefused() {
        assertInvalid("spec.tensors[0].shape[1]", List.of(spec(MODEL, GROUP, StandardModel.tensor("x", 3, 0))),
                "dimensions must be > 0");
        assertInvalid("spec.tensors[0].shape", List.of(spec(MODEL, GROUP, StandardModel.tensor("x", 1L << 62, 8))),
                "too many elements");
    }

    @Test
    void badHyperparametersAreRefused() {
        assertInvalid("spec.group.hyperparameters.lrr", List.of(spec(MODEL, GROUP.toBuilder()
                .setHyperparameters(hp("lrr", 0.1)).build(), StandardModel.tensor("x", 3))), "unknown hyperparameter");
        assertInvalid("spec.group.hyperparameters.lr", List.of(spec(MODEL, GROUP.toBuilder()
                .setHyperparameters(hp("lr", -1.0)).build(), StandardModel.tensor("x", 3))), "must be >= 0");
    }

    @Test
    void badChunksAreRefused() {
        TensorSpec x = StandardModel.tensor("x", 3);
        assertInvalid("weights.offset", List.of(spec(MODEL, GROUP, x), weights(2, 0, new float[3]),
                weights(2, 1, new float[1])), "already sent");
        assertInvalid("chunk.tensor", List.of(spec(MODEL, GROUP, x), weights(0, 0, new float[3])),
                "names a tensor model 'refusals' has already", "indexed from 2");
        assertInvalid("chunk.tensor", List.of(spec(MODEL, GROUP, x), weights(3, 0, new float[3])), "out of range");
        assertInvalid("spec", List.of(weights(2, 0, new float[3])), "first AddTensors message");
        assertInvalid("spec", List.of(spec(MODEL, GROUP, x), spec(MODEL, GROUP, x)), "sent twice");
        // As for a registration, weights that never arrived are a precondition that failed.
        assertRefused(Status.Code.FAILED_PRECONDITION, "INCOMPLETE_DATA", "", List.of(spec(MODEL, GROUP, x),
                weights(2, 0, new float[2])), "tensor 'x' (index 2)", "1 of 3 elements missing");
    }

    @Test
    void anUnknownModelIsNotFound() {
        assertRefused(Status.Code.NOT_FOUND, "MODEL_NOT_FOUND", "spec.model",
                List.of(spec("nothing-here", GROUP, StandardModel.tensor("x", 3))), "no model named 'nothing-here'");
    }

    @Test
    void aSyncStepWaitingForContributionsHoldsTheAdditionOff() throws Exception {
        String name = "sync-waiting";
        f.client().register(ModelSpec.newBuilder().setName(name).addTensors(StandardModel.tensor("w", 4))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(hp("lr", 0.1)))
                .setCoordination(sync(2, 0, 0)).build(), data(random(4, 1)));
        Model model = f.model(name);
        CompletableFuture<Long> first = CompletableFuture.supplyAsync(() -> {
            try (Trainer t = f.connect().trainer(name, "a")) {
                return t.step(new float[][] {random(4, 2)}, new float[][] {new float[4]}).getVersion();
            }
        });
        SidecarFixture.awaitTrue("a contribution waits", () -> {
            long stamp = model.readLock();
            try {
                return model.syncStepWaiting();
            } finally {
                model.unlockRead(stamp);
            }
        });
        Answer refused = send(f, List.of(spec(name, GROUP, StandardModel.tensor("x", 3)), weights(1, 0, new float[3])));
        assertStatus(Status.Code.FAILED_PRECONDITION, refused.status(), "sync step waiting");
        assertEquals(1, f.describe(name).getTensorsCount());
        try (Trainer t = f.client().trainer(name, "b")) {
            assertEquals(1, t.step(new float[][] {random(4, 3)}, new float[][] {new float[4]}).getVersion());
        }
        assertEquals(1L, first.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS));
        Answer added = send(f, List.of(spec(name, GROUP, StandardModel.tensor("x", 3)), weights(1, 0, new float[3])));
        assertEquals(Status.Code.OK, added.status().getCode(), added.status()::toString);
        assertEquals(2, added.info().getTensorsCount());
        f.client().delete(name);
    }

    @Test
    void theTensorLimitCountsTheModelsTensors() throws Exception {
        try (SidecarFixture small = SidecarFixture.inProcess().limits(dev.optsidecar.server.model.Limits.DEFAULTS
                .withMaxTensorsPerModel(3)).start()) {
            small.client().register(ModelSpec.newBuilder().setName("m").addTensors(StandardModel.tensor("w", 4))
                    .addTensors(StandardModel.tensor("b", 2))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD")).build(),
                    data(random(4, 1), random(2, 2)));
            Answer a = send(small, List.of(spec("m", GROUP, StandardModel.tensor("x", 1), StandardModel.tensor("y", 1))));
            assertStatus(Status.Code.RESOURCE_EXHAUSTED, a.status(), "would have 4 tensors", "--max-tensors-per-model");
            assertEquals("spec.tensors", a.errorInfo().getMetadataOrThrow("field"));
            assertEquals(2, small.describe("m").getTensorsCount());
        }
    }

    /**
     * The extended model is counted from the moment the spec arrives, like a registration, and
     * given back if the stream ends without it; once it has replaced the model, the model's bytes
     * are given back and the extended model's held.
     */
    @Test
    void theExtendedModelIsCountedAgainstTheMemoryLimit() throws Exception {
        try (SidecarFixture tight = SidecarFixture.inProcess(4L << 20).start()) {
            tight.client().register(ModelSpec.newBuilder().setName("m").addTensors(StandardModel.tensor("w", 100_000))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("Adam")).build(),
                    data(random(100_000, 1)));
            long oneModel = tight.model("m").memoryBytes();
            ModelRegistry registry = tight.server().registry();
            assertEquals(oneModel, registry.reservedBytes());

            // A copy of the model with a tensor as large again does not fit beside it.
            Answer tooLarge = send(tight, List.of(spec("m", GROUP, StandardModel.tensor("x", 100_000))));
            assertStatus(Status.Code.RESOURCE_EXHAUSTED, tooLarge.status(), "memory limit");
            assertEquals("MEMORY_LIMIT", tooLarge.errorInfo().getReason());
            assertEquals(oneModel, registry.reservedBytes());

            // Held while the weights arrive; given back when the client gives up.
            CompletableFuture<Status> cancelled = new CompletableFuture<>();
            StreamObserver<AddTensorsRequest> open = tight.async().addTensors(new StreamObserver<>() {
                @Override
                public void onNext(ModelInfo value) {}

                @Override
                public void onError(Throwable t) {
                    cancelled.complete(Status.fromThrowable(t));
                }

                @Override
                public void onCompleted() {}
            });
            open.onNext(spec("m", GROUP, StandardModel.tensor("x", 1000)));
            // Beside the model: the extended copy, whose 101 000 elements each hold θ, g and Adam's two
            // moments (the pending place is taken just before the bytes are).
            SidecarFixture.awaitTrue("the spec is counted", () -> registry.pendingRegistrations() == 1
                    && registry.reservedBytes() >= oneModel + 4L * 101_000 * Float.BYTES);
            open.onError(Status.CANCELLED.asRuntimeException());
            SidecarFixture.awaitTrue("the spec is given back", () -> registry.pendingRegistrations() == 0
                    && registry.reservedBytes() == oneModel);

            Answer added = send(tight, List.of(spec("m", GROUP, StandardModel.tensor("x", 1000)),
                    weights(1, 0, random(1000, 3))));
            assertEquals(Status.Code.OK, added.status().getCode(), added.status()::toString);
            assertEquals(tight.model("m").memoryBytes(), registry.reservedBytes());
            assertTrue(tight.model("m").memoryBytes() > oneModel + 4 * 1000 * 4);
            tight.client().delete("m");
            assertEquals(0, registry.reservedBytes());
        }
    }
}
