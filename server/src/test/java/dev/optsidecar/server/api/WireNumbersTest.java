package dev.optsidecar.server.api;

import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ClientProgress;
import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.UnaryOperator;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * uint64 fields arrive as Java longs, negative from 2^63 on: each is compared unsigned and held
 * below 2^62, and a bad one is refused with INVALID_ARGUMENT naming it before anything is
 * journaled or applied.
 */
class WireNumbersTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    private static final AtomicInteger SEQ = new AtomicInteger();
    private static final long TWO_TO_63 = Long.MIN_VALUE;
    private static final long TWO_TO_64_MINUS_1 = -1L;

    private static ModelSpec tiny(String name) {
        return ModelSpec.newBuilder().setName(name + "-" + SEQ.incrementAndGet())
                .addTensors(StandardModel.tensor("w", 4))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(struct("lr", 0.1)))
                .build();
    }

    private static String register(ModelSpec spec) {
        f.client().register(spec, List.of(TensorData.of(new float[]{1, 2, 3, 4})));
        return spec.getName();
    }

    /** Steps 1..n on one stream, each without a view. */
    private static void steps(String model, int n) {
        RawStep s = RawStep.open(f.async(), model);
        for (int k = 1; k <= n; k++) {
            s.chunk(k, 0, 0, StandardModel.le(new float[]{0.1f, 0.2f, 0.3f, 0.4f}, 0, 4)).commit(k, ViewKind.VIEW_NONE);
        }
        assertEquals(Status.Code.OK, s.halfClose().awaitClose().getCode());
    }

    private static Status commitWithBaseVersion(String model, long baseVersion) {
        return RawStep.open(f.async(), model)
                .chunk(100, 0, 0, StandardModel.le(new float[]{1, 1, 1, 1}, 0, 4))
                .commit(StepCommit.newBuilder().setStepId(100).setBaseVersion(baseVersion)
                        .setView(View.newBuilder().setKind(ViewKind.VIEW_NONE)).build())
                .awaitClose();
    }

    @Test
    void aBaseVersionOf2To63IsAheadOfTheModelNotFarBehind() {
        String model = register(tiny("base-2-63"));
        steps(model, 17); // the staleness histogram has 17 buckets: a wrapped staleness indexed past them
        float[][] before = pull(model);
        assertStatus(Status.Code.INVALID_ARGUMENT, commitWithBaseVersion(model, TWO_TO_63),
                "commit.base_version", "9223372036854775808", "ahead");
        assertEquals(17, f.describe(model).getVersion());
        assertEquals(17, f.describe(model).getCoordination().getContributionsApplied());
        StandardModel.assertBitsEqual(before, pull(model), "weights after the refused step");
        f.client().delete(model);
    }

    @Test
    void aBaseVersionFromTheFutureIsRefusedAtAnyVersion() {
        String model = register(tiny("base-future"));
        steps(model, 1);
        assertStatus(Status.Code.INVALID_ARGUMENT, commitWithBaseVersion(model, TWO_TO_64_MINUS_1),
                "commit.base_version", "18446744073709551615");
        assertStatus(Status.Code.INVALID_ARGUMENT, commitWithBaseVersion(model, TWO_TO_63), "commit.base_version");
        assertStatus(Status.Code.INVALID_ARGUMENT, commitWithBaseVersion(model, 2), "commit.base_version");
        assertEquals(1, f.describe(model).getVersion());
        // The version itself is fine.
        assertEquals(Status.Code.OK, RawStep.open(f.async(), model)
                .chunk(5, 0, 0, StandardModel.le(new float[]{1, 1, 1, 1}, 0, 4))
                .commit(StepCommit.newBuilder().setStepId(5).setBaseVersion(1)
                        .setView(View.newBuilder().setKind(ViewKind.VIEW_NONE)).build())
                .halfClose().awaitClose().getCode());
        assertEquals(2, f.describe(model).getVersion());
        f.client().delete(model);
    }

    @Test
    void aStepIdOf2To62OrMoreIsRefused() {
        String model = register(tiny("step-id"));
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.open(f.async(), model)
                .chunk(TWO_TO_63, 0, 0, StandardModel.le(new float[]{1, 1, 1, 1}, 0, 4)).awaitClose(),
                "chunk.step_id", "9223372036854775808");
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.open(f.async(), model)
                .commit(StepCommit.newBuilder().setStepId(1L << 62).build()).awaitClose(), "commit.step_id");
        assertEquals(0, f.describe(model).getVersion());
        f.client().delete(model);
    }

    private static void assertStateRefused(UnaryOperator<ModelState.Builder> edit, String field) {
        ModelSpec.Builder spec = tiny("state").toBuilder();
        spec.getOptimizerBuilder().addEma(dev.optsidecar.proto.v1.EmaShadow.newBuilder().setDecay(0.9));
        spec.setState(edit.apply(ModelState.newBuilder().setVersion(3)));
        ModelSpec s = spec.build();
        assertStatus(Status.Code.INVALID_ARGUMENT, () -> register(s), field, "2^62");
        f.assertNotFound(s.getName());
    }

    @Test
    void savedCountersAtOrAbove2To62AreRefused() {
        assertStateRefused(b -> b.setVersion(TWO_TO_64_MINUS_1), "spec.state.version");
        assertStateRefused(b -> b.setVersion(1L << 62), "spec.state.version");
        assertStateRefused(b -> b.setScheduleStep(TWO_TO_63), "spec.state.schedule_step");
        assertStateRefused(b -> b.setLookaheadStep(TWO_TO_63), "spec.state.lookahead_step");
        assertStateRefused(b -> b.addTensorSteps(TWO_TO_64_MINUS_1), "spec.state.tensor_steps[0]");
        assertStateRefused(b -> b.addEmaUpdates(TWO_TO_63), "spec.state.ema_updates[0]");
        assertStateRefused(b -> b.addClients(ClientProgress.newBuilder().setClientId("c").setLastStepId(-1)),
                "spec.state.clients[0].last_step_id");
        // Just below the bound is a valid saved run.
        ModelSpec ok = tiny("state-ok").toBuilder()
                .setState(ModelState.newBuilder().setVersion((1L << 62) - 1).addTensorSteps(5)).build();
        assertEquals((1L << 62) - 1, f.client().register(ok, List.of(TensorData.of(new float[4]))).getVersion());
        f.client().delete(ok.getName());
    }

    private static void assertTooBig(String field, long[]... shapes) {
        ModelSpec.Builder spec = tiny("too-big").toBuilder().clearTensors();
        List<TensorData> weights = new java.util.ArrayList<>();
        for (int i = 0; i < shapes.length; i++) {
            spec.addTensors(StandardModel.tensor("t" + i, shapes[i]));
            weights.add(TensorData.of(new float[1]));
        }
        ModelSpec s = spec.build();
        assertStatus(Status.Code.RESOURCE_EXHAUSTED, () -> f.client().register(s, weights), field, s.getName());
        f.assertNotFound(s.getName());
        assertEquals(0, f.server().registry().reservedBytes());
    }

    @Test
    void sizesThatOverflowALongAreRefusedNotWrapped() {
        // 2^61 elements x 4 bytes x (weights, gradient) = 2^64 bytes: wrapped, 0
        assertTooBig("spec.tensors[0].shape", new long[]{1L << 61});
        assertTooBig("spec.tensors[0].shape", new long[]{1L << 31, 1L << 30});
        // 2^62 bytes each: the model's total of 2^63 wrapped negative
        assertTooBig("spec.tensors[1].shape", new long[]{1L << 59}, new long[]{1L << 59});
    }

    @Test
    void historyFromAVersionOf2To63IsEmpty() {
        String model = register(tiny("history"));
        steps(model, 2);
        assertEquals(2, f.blocking().history(HistoryRequest.newBuilder().setModel(model).build()).getVersionsCount());
        assertEquals(0, f.blocking().history(HistoryRequest.newBuilder().setModel(model).setFromVersion(TWO_TO_63)
                .build()).getVersionsCount());
        f.client().delete(model);
    }

    private static float[][] pull(String model) {
        float[][] out = {new float[4]};
        f.client().pull(model, List.of(TensorData.of(out[0])));
        return out;
    }
}
