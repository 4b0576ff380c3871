package dev.optsidecar.server.model;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.Twins;
import io.grpc.Status;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;

import static dev.optsidecar.server.StandardModel.NAMES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.spec;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.StandardModel.zeros;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * NaN and Inf in gradients: rejected by default (INVALID_ARGUMENT naming the tensor and element,
 * nothing changes); under NON_FINITE_SKIP the step is acknowledged as skipped and nothing changes
 * either. Extreme but finite values are not mistaken for non-finite ones.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class NonFiniteTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    private static final AtomicInteger SEQ = new AtomicInteger();

    private static Twins twins(NonFinitePolicy policy) {
        String name = "nonfinite-" + SEQ.incrementAndGet();
        return Twins.register(f, spec(name, "AdamW",
                struct("lr", 0.02, "betas", List.of(0.85, 0.97), "amsgrad", true), policy), 21);
    }

    static Stream<Arguments> rejectedValues() {
        return Stream.of(
                Arguments.of(NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED, 0, 270_000, Float.NaN),
                Arguments.of(NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED, 0, 5, Float.intBitsToFloat(0xffc00001)),
                Arguments.of(NonFinitePolicy.NON_FINITE_REJECT, 0, 299_999, Float.POSITIVE_INFINITY),
                Arguments.of(NonFinitePolicy.NON_FINITE_REJECT, 1, 7, Float.NEGATIVE_INFINITY),
                Arguments.of(NonFinitePolicy.NON_FINITE_REJECT, 2, 0, Float.NaN));
    }

    @ParameterizedTest(name = "{0}: {3} in tensor {1} at element {2}")
    @MethodSource("rejectedValues")
    void nonFiniteGradientIsRejectedAndChangesNothing(NonFinitePolicy policy, int tensor, int element, float value) {
        Twins t = twins(policy).validSteps(2);
        Twins.Snapshot before = t.snapshot();

        float[][] g = grads(50);
        g[tensor][element] = value;
        assertStatus(Status.Code.INVALID_ARGUMENT, () -> f.step(t.model, g, zeros()),
                "'" + NAMES[tensor] + "'", "element " + element, "non-finite");

        t.assertUnchanged(before);
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    void rejectionNamesTheFirstNonFiniteElementAndStopsTheStream() {
        Twins t = twins(NonFinitePolicy.NON_FINITE_REJECT).validSteps(2);
        Twins.Snapshot before = t.snapshot();

        // Raw stream: the bad chunk fails the step at once; the chunks after it are never used.
        float[][] g = grads(51);
        g[0][262_144 + 10] = Float.NaN;
        g[0][262_144 + 20] = Float.POSITIVE_INFINITY;
        RawStep s = RawStep.open(f.async(), t.model).all(1, g).commit(1, ViewKind.VIEW_TRAIN);
        assertStatus(Status.Code.INVALID_ARGUMENT, s.awaitClose(), "'w'", "element 262154", "step 1");
        assertTrue(s.responses.isEmpty());

        t.assertUnchanged(before);
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    void skipPolicySkipsTheStepAndChangesNothing() {
        Twins t = twins(NonFinitePolicy.NON_FINITE_SKIP).validSteps(2);
        Twins.Snapshot before = t.snapshot();
        double defaultLr = before.info().getGroupsList().stream()
                .filter(gi -> gi.getName().equals("default")).findFirst().orElseThrow().getLr();

        try (Trainer trainer = f.client().trainer(t.model, "skipper")) {
            // NaN in the first chunk of w; the step also asks for a new lr, which must not stick.
            float[][] g1 = grads(60);
            g1[0][5] = Float.NaN;
            float[][] out = zeros();
            StepResult r1 = trainer.step(tensors(g1), tensors(out), new Trainer.StepOptions().groupLr("default", 0.5));
            assertTrue(r1.getSkipped(), "NaN step not skipped");
            assertEquals(2, r1.getVersion());
            assertBitsEqual(before.weights(), out, "weights returned by the skipped step");
            for (GroupStep lr : r1.getGroupsList()) {
                if (lr.getGroup().equals("default")) {
                    assertEquals(defaultLr, lr.getLr(), "lr of a skipped step");
                }
            }
            t.assertUnchanged(before);

            // +Inf in the last chunk sent (scale), answered without weights.
            float[][] g2 = grads(61);
            g2[2][0] = Float.POSITIVE_INFINITY;
            StepResult r2 = trainer.step(tensors(g2), null, new Trainer.StepOptions().view(ViewKind.VIEW_NONE));
            assertTrue(r2.getSkipped());
            assertEquals(2, r2.getVersion());
            t.assertUnchanged(before);

            // Several at once, in several tensors and chunks.
            float[][] g3 = grads(62);
            g3[1][499] = Float.NEGATIVE_INFINITY;
            g3[0][299_999] = Float.NaN;
            StepResult r3 = trainer.step(g3, zeros());
            assertTrue(r3.getSkipped());
            assertEquals(2, r3.getVersion());
            t.assertUnchanged(before);

            // The next finite step on the same stream matches the twin, which never saw the bad steps.
            float[][] good = grads(3);
            float[][] a = zeros();
            StepResult r4 = trainer.step(good, a);
            assertFalse(r4.getSkipped());
            assertEquals(3, r4.getVersion());
            float[][] b = zeros();
            f.step(t.twin, good, b);
            assertBitsEqual(b, a, "first finite step after the skipped ones, model vs twin");
            t.validStepsDoneOutsideHelper(1);
        }
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    void skippedStepOverARawStreamReturnsTheUnchangedVersion() {
        Twins t = twins(NonFinitePolicy.NON_FINITE_SKIP).validSteps(2);
        Twins.Snapshot before = t.snapshot();
        float[][] g = grads(63);
        g[0][100_000] = Float.NaN;
        RawStep s = RawStep.open(f.async(), t.model).all(9, g).commit(9, ViewKind.VIEW_TRAIN).halfClose();
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        StepResult result = s.responses.stream().filter(StepResponse::hasResult).findFirst().orElseThrow().getResult();
        assertTrue(result.getSkipped());
        assertEquals(9, result.getStepId());
        assertEquals(2, result.getVersion());
        assertTrue(s.responses.stream().filter(StepResponse::hasWeights)
                .allMatch(w -> w.getWeights().getVersion() == 2), "weights of a skipped step carry the old version");
        t.assertUnchanged(before);
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    void extremeFiniteValuesAreAccepted() {
        Twins t = twins(NonFinitePolicy.NON_FINITE_REJECT).validSteps(2);
        float[][] g = grads(3);
        g[0][0] = Float.MAX_VALUE;
        g[0][1] = -Float.MAX_VALUE;
        g[0][2] = Float.MIN_VALUE;
        g[0][3] = -0.0f;
        g[1][0] = -Float.MIN_NORMAL;
        float[][] a = zeros();
        float[][] b = zeros();
        StepResult r = f.step(t.model, g, a);
        assertFalse(r.getSkipped());
        assertEquals(3, r.getVersion());
        f.step(t.twin, g, b);
        assertBitsEqual(b, a, "model vs twin after extreme finite gradients");
        t.validStepsDoneOutsideHelper(1);
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    @Order(Integer.MAX_VALUE)
    void serverSurvivesAllOfTheAbove() {
        f.assertServerHealthy("nonfinite-health");
    }
}
