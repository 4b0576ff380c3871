package dev.optsidecar.server.model;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WireDtype;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.HalfFloatReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.util.List;
import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.SidecarFixture.awaitTrue;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A 16-bit step's reply carries weights the step's own pass rounded as it wrote θ
 * ({@link ReplyWeights}): they are the model's float32 weights after the step, rounded, in every
 * chunk (a tensor of two chunks, short ones), after an EMA update and a Lookahead sync; where
 * that pass cannot write them (a tensor without a gradient, a skipped step, no room under the
 * memory limit) the reply reads them after the step instead, with the same bits. The copy's bytes
 * are given back either way.
 */
class ReplyWeightsTest {
    /** Two bfloat16 chunks (512Ki values each) for the first tensor, one short chunk for the others. */
    private static final long[] SIZES = {600_000, 1000, 1};

    private static HalfFloatReference format(WireDtype wire) {
        return wire == WireDtype.WIRE_BFLOAT16 ? HalfFloatReference.BFLOAT16 : HalfFloatReference.FLOAT16;
    }

    private static ModelSpec spec(String name, NonFinitePolicy policy) {
        ModelSpec base = TestData.spec(name, "RAdam", TestData.hp("lr", 0.01, "weight_decay", 0.1), SIZES).build();
        return base.toBuilder().setOptimizer(base.getOptimizer().toBuilder().setNonFinite(policy)
                .setLookahead(Lookahead.newBuilder().setK(2).setAlpha(0.5))
                .addEma(EmaShadow.newBuilder().setDecay(0.9))).build();
    }

    private static float[][] init() {
        float[][] w = new float[SIZES.length][];
        for (int t = 0; t < SIZES.length; t++) {
            w[t] = TestData.random((int) SIZES[t], 10 + t);
        }
        return w;
    }

    private static float[][] grads(int k) {
        float[][] g = new float[SIZES.length][];
        for (int t = 0; t < SIZES.length; t++) {
            g[t] = TestData.random((int) SIZES[t], 100 * k + t);
        }
        return g;
    }

    private static float[][] zeros() {
        float[][] w = new float[SIZES.length][];
        for (int t = 0; t < SIZES.length; t++) {
            w[t] = new float[(int) SIZES[t]];
        }
        return w;
    }

    /** The model's float32 train weights. */
    private static float[][] pull(SidecarFixture f, String model) {
        float[][] out = zeros();
        f.client().pull(model, View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build(), StandardModel.tensors(out),
                List.of(), WireDtype.WIRE_FLOAT32);
        return out;
    }

    /** Waits until the trainers left and the server holds only the model and what its steps recorded. */
    private static void assertOnlyTheModelHeld(SidecarFixture f, String model, long modelOnly) throws Exception {
        awaitTrue("the trainer to detach", () -> f.client().describe(model).getCoordination().getTrainersCount() == 0);
        long held = modelOnly + f.model(model).underReadLock(f.model(model)::recordBytes);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (f.server().registry().reservedBytes() != held && System.nanoTime() < deadline) {
            Thread.sleep(2);
        }
        assertEquals(held, f.server().registry().reservedBytes(), "bytes held once the trainer left");
    }

    @ParameterizedTest
    @EnumSource(value = WireDtype.class, names = {"WIRE_BFLOAT16", "WIRE_FLOAT16"})
    void theStepsRepliesAreTheMasterWeightsRounded(WireDtype wire) throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(spec("reply", NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED), TestData.data(init()));
            long modelOnly = f.server().registry().reservedBytes();
            try (Trainer trainer = f.client().trainer("reply", "a", wire)) {
                for (int k = 1; k <= 8; k++) { // RAdam's SGD-like steps and rectified ones, EMA and syncs
                    float[][] replied = zeros();
                    trainer.step(grads(k), replied);
                    assertBitsEqual(format(wire).rounded(pull(f, "reply")), replied, "weights replied to step " + k);
                }
                float[][] withoutGradient = grads(9);
                withoutGradient[1] = null; // no pass over tensor 1: the reply reads the weights after the step
                float[][] replied = zeros();
                trainer.step(withoutGradient, replied);
                assertBitsEqual(format(wire).rounded(pull(f, "reply")), replied, "weights replied with a tensor left out");
            }
            assertOnlyTheModelHeld(f, "reply", modelOnly);
        }
    }

    @Test
    void aSkippedStepRepliesWithTheWeightsItLeftAndGivesTheCopyBack() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(spec("skip", NonFinitePolicy.NON_FINITE_SKIP), TestData.data(init()));
            long modelOnly = f.server().registry().reservedBytes();
            try (Trainer trainer = f.client().trainer("skip", "a", WireDtype.WIRE_BFLOAT16)) {
                trainer.step(grads(1), zeros());
                float[][] before = pull(f, "skip");
                float[][] bad = grads(2);
                bad[0][123_456] = Float.NaN;
                float[][] replied = zeros();
                StepResult r = trainer.step(bad, replied);
                assertTrue(r.getSkipped(), "a NaN skips the step");
                assertBitsEqual(before, pull(f, "skip"), "the skipped step changed nothing");
                assertBitsEqual(HalfFloatReference.BFLOAT16.rounded(before), replied, "the weights replied");
            }
            assertOnlyTheModelHeld(f, "skip", modelOnly);
        }
    }

    @Test
    void withoutRoomForTheCopyTheReplyStillCarriesTheStepsWeights() throws Exception {
        long needed;
        try (SidecarFixture probe = SidecarFixture.inProcess().start()) {
            probe.client().register(spec("room", NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED), TestData.data(init()));
            try (Trainer trainer = probe.client().trainer("room", "a", WireDtype.WIRE_BFLOAT16)) {
                trainer.step(grads(1), zeros());
                needed = probe.server().registry().reservedBytes(); // model, gradient buffers, records
            }
        }
        // 64 KiB to spare: room for the steps' records, none for a 1.2 MB copy of the weights.
        try (SidecarFixture f = SidecarFixture.inProcess(needed + (64 << 10)).start()) {
            f.client().register(spec("room", NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED), TestData.data(init()));
            try (Trainer trainer = f.client().trainer("room", "a", WireDtype.WIRE_BFLOAT16)) {
                for (int k = 1; k <= 3; k++) {
                    float[][] replied = zeros();
                    trainer.step(grads(k), replied);
                    assertBitsEqual(HalfFloatReference.BFLOAT16.rounded(pull(f, "room")), replied, "step " + k);
                }
            }
            assertFalse(f.server().registry().reservedBytes() > needed + (64 << 10), "within the limit");
        }
    }
}
