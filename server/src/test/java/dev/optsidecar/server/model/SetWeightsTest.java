package dev.optsidecar.server.model;

import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.CapturedCopy;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.Twins;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A set-weights step (a trainer changed its parameters outside the optimizer) replaces the weights
 * it sends and nothing else, as torch keeps its state when parameters are edited in place: the
 * model then steps exactly as a model registered with those weights and the optimizer state it
 * had. It is a version of its own, exactly-once, and refused whole when anything about it is bad.
 */
class SetWeightsTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();

    private static final View EVAL = View.newBuilder().setKind(ViewKind.VIEW_EVAL).build();

    /** Tensors 0 and 2 edited (new values), tensor 1 left as it is (null). */
    private static float[][] edits(long seed) {
        float[][] w = StandardModel.initialWeights(seed);
        w[1] = null;
        return w;
    }

    private static List<TensorData> data(float[][] arrays) {
        List<TensorData> out = new ArrayList<>();
        for (float[] a : arrays) {
            out.add(a == null ? null : TensorData.of(a));
        }
        return out;
    }

    private static StepResult result(RawStep s) {
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        List<StepResponse> responses = s.responses;
        return responses.get(responses.size() - 1).getResult();
    }

    private static StepCommit setWeights(long stepId) {
        return StepCommit.newBuilder().setStepId(stepId).setKind(StepKind.STEP_SET_WEIGHTS)
                .setView(View.newBuilder().setKind(ViewKind.VIEW_NONE)).build();
    }

    @Test
    void setWeightsReplacesTheSentTensorsKeepsTheStateAndStepsOnAsARegisteredCopy() {
        ModelSpec adam = StandardModel.adamSpec("edited");
        // An EMA every 2 optimizer steps: set-weights steps are versions, not optimizer steps.
        ModelSpec spec = adam.toBuilder().setOptimizer(adam.getOptimizer().toBuilder()
                .addEma(EmaShadow.newBuilder().setDecay(0.9).setEvery(2))).build();
        f.client().register(spec, StandardModel.tensors(StandardModel.initialWeights(5)));
        try (Trainer t = f.client().trainer("edited", "t")) {
            t.step(grads(1), StandardModel.zeros());
            float[][] afterOne = f.pull("edited");
            float[][] edits = edits(77);
            StepResult set = t.setWeights(data(edits));
            assertEquals(StepKind.STEP_SET_WEIGHTS, set.getKind());
            assertEquals(2, set.getVersion());
            assertEquals(2, t.baseVersion());
            assertFalse(set.getReplayed());
            assertEquals(List.of("t"), set.getContributionsList().stream().map(c -> c.getClientId()).toList());

            float[][] now = f.pull("edited");
            assertBitsEqual(new float[][] {edits[0], afterOne[1], edits[2]}, now, "weights after setting 0 and 2");
            ModelInfo info = f.describe("edited");
            assertEquals(2, info.getVersion());
            assertEquals(1, info.getState().getScheduleStep(), "a set-weights step is no optimizer step");
            assertEquals(List.of(1L, 1L, 1L), info.getState().getTensorStepsList());

            // What torch would do next: step from the edited weights with the state kept.
            CapturedCopy.register(f.client(), "edited", spec.toBuilder().setName("edited-copy").build(),
                    Arrays.asList(now), ViewKind.VIEW_TRAIN);
            float[][] a = StandardModel.zeros();
            float[][] b = StandardModel.zeros();
            t.step(grads(2), a);
            f.step("edited-copy", grads(2), b);
            assertBitsEqual(b, a, "step 2 after the edit, model vs registered copy");
            assertEquals(List.of(1L), f.describe("edited").getState().getEmaUpdatesList(),
                    "optimizer step 2 updates the every-2 EMA, the set-weights version notwithstanding");
            float[][] emaA = StandardModel.zeros();
            float[][] emaB = StandardModel.zeros();
            f.client().pull("edited", EVAL, StandardModel.tensors(emaA));
            f.client().pull("edited-copy", EVAL, StandardModel.tensors(emaB));
            assertBitsEqual(emaB, emaA, "EMA shadow, model vs registered copy");
        }
        f.client().delete("edited");
        f.client().delete("edited-copy");
    }

    @Test
    void weightsAtScheduleFreesEvalPointBecomeTheTrainWeightsItsTrainWouldCompute() {
        ModelSpec spec = StandardModel.spec("sf-edited", "AdamWScheduleFree", TestData.hp("lr", 0.01),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED);
        f.client().register(spec, StandardModel.tensors(StandardModel.initialWeights(6)));
        try (Trainer t = f.client().trainer("sf-edited", "t")) {
            t.step(grads(1), StandardModel.zeros());
            t.step(grads(2), StandardModel.zeros());
            float[][] x = StandardModel.initialWeights(88);
            t.setWeights(StandardModel.tensors(x), new Trainer.StepOptions().weightsView(ViewKind.VIEW_EVAL));
            // Registering weights saved at the eval point recomputes y from z the same way.
            CapturedCopy.register(f.client(), "sf-edited", spec.toBuilder().setName("sf-copy").build(),
                    Arrays.asList(x), ViewKind.VIEW_EVAL);
            assertBitsEqual(f.pull("sf-copy"), f.pull("sf-edited"), "train weights from x, model vs copy");
            float[][] a = StandardModel.zeros();
            float[][] b = StandardModel.zeros();
            t.step(grads(3), a);
            f.step("sf-copy", grads(3), b);
            assertBitsEqual(b, a, "the step after, model vs copy");
        }
        f.client().delete("sf-edited");
        f.client().delete("sf-copy");
    }

    @Test
    void aRetriedSetWeightsIsAnsweredFromTheLedgerNotAppliedAgain() {
        Twins t = Twins.register(f, StandardModel.adamSpec("set-once"), 7);
        float[][] first = StandardModel.initialWeights(21);
        StepResult r = result(RawStep.openAs(f.async(), t.model, "c").all(1, first).commit(setWeights(1)).halfClose());
        assertEquals(1, r.getVersion());
        StepResult again = result(RawStep.openAs(f.async(), t.model, "c").all(1, StandardModel.initialWeights(22))
                .commit(setWeights(1)).halfClose());
        assertTrue(again.getReplayed());
        assertEquals(r.toBuilder().setReplayed(true).build(), again);
        assertEquals(1, f.describe(t.model).getVersion());
        assertBitsEqual(first, f.pull(t.model), "the first weights stay");
        t.delete();
    }

    @Test
    void aBadSetWeightsIsRefusedWholeAndChangesNothing() {
        Twins t = Twins.register(f, StandardModel.adamSpec("bad-set"), 8);
        t.validSteps(1);
        Twins.Snapshot before = t.snapshot();
        float[][] w = StandardModel.initialWeights(31);

        RawStep anonymous = RawStep.start(f.async()).send(StepRequest.newBuilder()
                .setOpen(StepOpen.newBuilder().setModel(t.model)).build());
        assertStatus(Status.Code.INVALID_ARGUMENT, anonymous.all(1, w).commit(setWeights(1)).awaitClose(),
                "open.client_id");
        float[][] nan = StandardModel.initialWeights(32);
        nan[1][7] = Float.NaN;
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), t.model, "c").all(1, nan)
                .commit(setWeights(1)).awaitClose(), "non-finite");
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), t.model, "c").all(1, w)
                .commit(setWeights(1).toBuilder().setWeightsView(ViewKind.VIEW_EVAL).build()).awaitClose(),
                "commit.weights_view", "Adam");
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), t.model, "c").all(1, w)
                .commit(setWeights(1).toBuilder().setWeightsView(ViewKind.VIEW_SLOT).build()).awaitClose(),
                "commit.weights_view");
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), t.model, "c").all(1, grads(2))
                .commit(StepCommit.newBuilder().setStepId(1).setWeightsView(ViewKind.VIEW_EVAL).build()).awaitClose(),
                "commit.weights_view", "only a STEP_SET_WEIGHTS step");
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), t.model, "c").all(1, w)
                .commit(setWeights(1).toBuilder().setKindValue(7).build()).awaitClose(), "commit.kind", "7");

        t.assertUnchanged(before);
        t.assertStateMatchesTwin();
        t.delete();
    }

    @Test
    void nonFiniteWeightsAreRefusedEvenWhereNonFiniteGradientsAreSkipped() {
        ModelSpec spec = StandardModel.spec("skip-nan", "Adam", TestData.hp(), NonFinitePolicy.NON_FINITE_SKIP);
        float[][] init = StandardModel.initialWeights(10);
        f.client().register(spec, StandardModel.tensors(init));
        float[][] inf = StandardModel.initialWeights(33);
        inf[0][5] = Float.POSITIVE_INFINITY;
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), "skip-nan", "c").all(1, inf)
                .commit(setWeights(1)).awaitClose(), "weights to set", "non-finite");
        assertEquals(0, f.describe("skip-nan").getVersion());
        assertBitsEqual(init, f.pull("skip-nan"), "weights after refused non-finite weights");
        f.client().delete("skip-nan");
    }

    @Test
    void inSyncModeWeightsAreSetBetweenStepsNotWhileOneGathersContributions() {
        ModelSpec spec = StandardModel.adamSpec("sync-set").toBuilder().setCoordination(TestData.sync(2, 0, 0)).build();
        f.client().register(spec, StandardModel.tensors(StandardModel.initialWeights(9)));
        Model m = f.model("sync-set");
        RawStep a = RawStep.openAs(f.async(), "sync-set", "a").all(1, grads(1)).commit(1, ViewKind.VIEW_NONE);
        SidecarFixture.awaitTrue("a's contribution waiting", () -> m.syncContributionsWaiting() == 1);
        assertStatus(Status.Code.FAILED_PRECONDITION, RawStep.openAs(f.async(), "sync-set", "b")
                .all(1, StandardModel.initialWeights(41)).commit(setWeights(1)).awaitClose(), "sync step", "waiting");
        assertEquals(0, f.describe("sync-set").getVersion());

        StepResult b = result(RawStep.openAs(f.async(), "sync-set", "b").all(2, grads(1))
                .commit(2, ViewKind.VIEW_NONE).halfClose());
        assertEquals(1, b.getVersion());
        assertEquals(1, result(a.halfClose()).getVersion());
        float[][] w = StandardModel.initialWeights(42);
        assertEquals(2, result(RawStep.openAs(f.async(), "sync-set", "b").all(3, w).commit(setWeights(3))
                .halfClose()).getVersion());
        assertBitsEqual(w, f.pull("sync-set"), "weights set between sync steps");
        f.client().delete("sync-set");
    }
}
