package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.Twins;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.List;

import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A step is applied once per (client, sequence number): a retry of the client's last step is
 * answered from its ledger with the current weights, an older one is refused, and the ledger
 * never changes on a rejected step.
 */
class ExactlyOnceTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();

    private static StepResult result(RawStep s) {
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        List<StepResponse> responses = s.responses;
        return responses.get(responses.size() - 1).getResult();
    }

    @Test
    void aRetriedStepIsAnsweredFromTheLedgerNotAppliedAgain() {
        Twins t = Twins.register(f, StandardModel.adamSpec("exactly-once"), 5);
        StepResult first = result(RawStep.openAs(f.async(), t.model, "c1").all(1, grads(1))
                .commit(1, ViewKind.VIEW_TRAIN).halfClose());
        assertFalse(first.getReplayed());
        assertEquals(1, first.getVersion());
        float[][] afterOne = f.pull(t.model);

        // The same step again on a new stream, with different gradients: the stored result, the current weights.
        RawStep retry = RawStep.openAs(f.async(), t.model, "c1").all(1, grads(99)).commit(1, ViewKind.VIEW_TRAIN).halfClose();
        StepResult again = result(retry);
        assertTrue(again.getReplayed());
        assertEquals(first.toBuilder().setReplayed(true).build(), again);
        assertEquals(1, f.describe(t.model).getVersion());
        StandardModel.assertBitsEqual(afterOne, f.pull(t.model), "weights after the retry");
        assertTrue(retry.responses.stream().anyMatch(StepResponse::hasWeights), "a retry returns the weights too");

        // An older step is refused; the next one applies.
        assertStatus(Status.Code.FAILED_PRECONDITION, RawStep.openAs(f.async(), t.model, "c1").all(0, grads(2))
                .commit(0, ViewKind.VIEW_NONE).awaitClose(), "step 0", "'c1'", "older");
        StepResult second = result(RawStep.openAs(f.async(), t.model, "c1").all(7, grads(2))
                .commit(7, ViewKind.VIEW_NONE).halfClose());
        assertEquals(2, second.getVersion());
        assertFalse(second.getReplayed());

        // Another client's sequence numbers are its own.
        StepResult other = result(RawStep.openAs(f.async(), t.model, "c2").all(1, grads(3))
                .commit(1, ViewKind.VIEW_NONE).halfClose());
        assertEquals(3, other.getVersion());
        assertFalse(other.getReplayed());
        assertEquals(List.of("c1", "c2"), f.describe(t.model).getState().getClientsList().stream()
                .map(c -> c.getClientId() + "").toList());
        t.delete();
    }

    @Test
    void aRetryReplacesItsOwnHalfSentStep() {
        Twins t = Twins.register(f, StandardModel.adamSpec("superseded"), 6);
        // The first attempt dies half-sent (the server has not noticed yet); the retry takes its place.
        RawStep dead = RawStep.openAs(f.async(), t.model, "c").chunk(1, 0, 0,
                StandardModel.le(grads(1)[0], 0, StandardModel.CHUNK_FLOATS));
        SidecarFixture.awaitTrue("first attempt assembling", () -> f.model(t.model).assemblingStep().isPresent());
        StepResult r = result(RawStep.openAs(f.async(), t.model, "c").all(1, grads(1)).commit(1, ViewKind.VIEW_NONE).halfClose());
        assertEquals(1, r.getVersion());
        assertStatus(Status.Code.ABORTED, dead.commit(1, ViewKind.VIEW_NONE).awaitClose(), "no longer being assembled");
        assertEquals(1, f.describe(t.model).getVersion());
        t.delete();
    }
}
