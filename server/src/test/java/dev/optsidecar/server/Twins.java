package dev.optsidecar.server;

import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.StepResult;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;

import java.util.concurrent.TimeUnit;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * A model and its twin: same spec, same initial weights, same history of valid steps, under two
 * names. Only the model sees the bad input; the twin never does. Weights and version are checked
 * directly; optimizer state (Adam's moments, the per-tensor step counts) is invisible, so it is
 * checked by one more valid step on both, which must give bit-for-bit the same weights.
 */
public final class Twins {
    public final SidecarFixture f;
    public final String model;
    public final String twin;
    private int validSteps;

    private Twins(SidecarFixture f, String model, String twin) {
        this.f = f;
        this.model = model;
        this.twin = twin;
    }

    /** Registers {@code spec} under its name and under name + "-twin", with the same weights. */
    public static Twins register(SidecarFixture f, ModelSpec spec, long seed) {
        Twins t = new Twins(f, spec.getName(), spec.getName() + "-twin");
        float[][] init = StandardModel.initialWeights(seed);
        f.client().register(spec, StandardModel.tensors(init));
        f.client().register(spec.toBuilder().setName(t.twin).build(), StandardModel.tensors(init));
        return t;
    }

    /** {@code n} valid steps on both, checking that they stay identical. */
    public Twins validSteps(int n) {
        for (int i = 0; i < n; i++) {
            float[][] grads = StandardModel.grads(validSteps + 1);
            float[][] a = StandardModel.zeros();
            float[][] b = StandardModel.zeros();
            StepResult ra = f.step(model, grads, a);
            StepResult rb = f.step(twin, grads, b);
            validSteps++;
            assertEquals(validSteps, ra.getVersion());
            assertEquals(validSteps, rb.getVersion());
            assertBitsEqual(b, a, "model vs twin after valid step " + validSteps);
        }
        return this;
    }

    /** Records {@code n} valid steps that the test applied to both models itself. */
    public void validStepsDoneOutsideHelper(int n) {
        validSteps += n;
    }

    /** The model's weights and description, to compare after the bad input. */
    public record Snapshot(float[][] weights, ModelInfo info) {}

    public Snapshot snapshot() {
        return new Snapshot(f.pull(model), f.describe(model));
    }

    /** Weights, version, per-tensor step counts and learning rates are exactly as in {@code before}. */
    public void assertUnchanged(Snapshot before) {
        ModelInfo now = f.describe(model);
        assertEquals(before.info().getVersion(), now.getVersion(), "version changed");
        // Clients' sequence numbers are bookkeeping, not model state: a skipped step is acknowledged
        // and so recorded. Those recorded before must not move.
        assertEquals(withoutClients(before.info()), withoutClients(now), "Describe changed");
        assertTrue(now.getState().getClientsList().containsAll(before.info().getState().getClientsList()),
                "clients' progress changed");
        assertBitsEqual(before.weights(), f.pull(model), "weights of " + model + " after the bad input");
    }

    /** The model releases its assembly and its state matches the twin's (see the class comment). */
    public void assertStateMatchesTwin() {
        assertStateMatchesTwin(false);
    }

    /**
     * One more valid step on both models must give bit-for-bit identical weights and equal
     * descriptions. With {@code retryWhileAssembling}, attempts refused with ABORTED because the
     * server has not yet noticed that an abandoned stream is gone are retried for a bounded time
     * (such an attempt changes nothing).
     */
    public void assertStateMatchesTwin(boolean retryWhileAssembling) {
        float[][] grads = StandardModel.grads(validSteps + 1);
        float[][] a = StandardModel.zeros();
        float[][] b = StandardModel.zeros();
        StepResult ra = retryWhileAssembling ? stepRetryingAborted(grads, a) : f.step(model, grads, a);
        StepResult rb = f.step(twin, grads, b);
        validSteps++;
        assertFalse(ra.getSkipped());
        assertEquals(validSteps, ra.getVersion(), "version of " + model + " after the next valid step");
        assertEquals(rb.getVersion(), ra.getVersion());
        assertBitsEqual(b, a, "weights returned by the next valid step, model vs twin");
        assertBitsEqual(f.pull(twin), f.pull(model), "pulled weights, model vs twin");
        ModelInfo ia = f.describe(model);
        ModelInfo ib = f.describe(twin);
        assertEquals(withoutClients(ib.toBuilder().setName(model).build()), withoutClients(ia),
                "Describe, model vs twin");
    }

    /**
     * A description without the bookkeeping of who stepped it: the clients' sequence numbers, the
     * trainers attached and their counts, and the memory their gradient buffers hold (twins are
     * stepped by different clients).
     */
    public static ModelInfo withoutClients(ModelInfo info) {
        return info.toBuilder().setState(info.getState().toBuilder().clearClients()).clearCoordination()
                .clearMemoryBytes().build();
    }

    private StepResult stepRetryingAborted(float[][] grads, float[][] out) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(SidecarFixture.WAIT_MS);
        while (true) {
            try {
                return f.step(model, grads, out);
            } catch (StatusRuntimeException e) {
                if (e.getStatus().getCode() != Status.Code.ABORTED || System.nanoTime() > deadline) {
                    return fail("the model did not accept a step from another stream: " + e.getStatus(), e);
                }
                StatusAssertions.assertStatus(Status.Code.ABORTED, e.getStatus(), model, "assembling");
            }
            try {
                Thread.sleep(5);
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
                return fail("interrupted");
            }
        }
    }

    public void delete() {
        f.client().delete(model);
        f.client().delete(twin);
    }
}
