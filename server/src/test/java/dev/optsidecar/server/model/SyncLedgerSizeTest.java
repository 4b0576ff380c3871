package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.ClientProgress;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationMode;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.util.ArrayList;
import java.util.List;

import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A sync step of a thousand trainers leaves a ledger entry per trainer, and each trainer's result
 * lists all thousand contributions. The ledger keeps them once, in History, so Describe (which
 * lists the ledger) and the bytes counted for it grow with the trainers, not with their square;
 * a retry still gets the whole result it had.
 */
class SyncLedgerSizeTest {
    private static final int TRAINERS = 1000;
    /** What one trainer's ledger entry may take in Describe: its id, step id and the step's figures. */
    private static final int ENTRY_BOUND = 256;

    private static StepResult result(RawStep s) {
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        List<StepResponse> responses = s.responses;
        return responses.get(responses.size() - 1).getResult();
    }

    private static RawStep step(SidecarFixture f, String clientId, float gradient) {
        return RawStep.openAs(f.async(), "crowd", clientId)
                .chunk(1, 0, 0, StandardModel.le(new float[] {gradient}, 0, 1))
                .commit(1, ViewKind.VIEW_NONE).halfClose();
    }

    @Test
    @Timeout(120)
    void describeAndTheLedgerGrowWithTheTrainersAndARetryGetsItsWholeResult() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(ModelSpec.newBuilder().setName("crowd")
                    .addTensors(TensorSpec.newBuilder().setName("w").addShape(1))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(struct("lr", 0.1)))
                    .setCoordination(Coordination.newBuilder().setMode(CoordinationMode.COORDINATION_SYNC)
                            .setSync(SyncOptions.newBuilder().setK(TRAINERS)))
                    .build(), List.of(TensorData.of(new float[1])));
            List<RawStep> streams = new ArrayList<>();
            for (int i = 0; i < TRAINERS; i++) {
                streams.add(step(f, String.format("trainer-%04d", i), i));
            }
            List<StepResult> results = new ArrayList<>();
            for (RawStep s : streams) {
                results.add(result(s));
            }
            StepResult first = results.get(0);
            assertEquals(1, first.getVersion());
            assertEquals(TRAINERS, first.getContributionsCount());

            ModelInfo info = f.describe("crowd");
            assertEquals(TRAINERS, info.getState().getClientsCount());
            assertTrue(info.getSerializedSize() < TRAINERS * ENTRY_BOUND,
                    "Describe of " + TRAINERS + " trainers' ledger: " + info.getSerializedSize() + " bytes");
            for (ClientProgress p : info.getState().getClientsList()) {
                assertEquals(0, p.getLastResult().getContributionsCount(), p.getClientId());
            }
            Model m = f.model("crowd");
            long ledgerBytes = m.underReadLock(() -> m.ledger().bytes());
            assertTrue(ledgerBytes < TRAINERS * (MemoryEstimates.ENTRY_BYTES + ENTRY_BOUND),
                    ledgerBytes + " bytes counted for the ledger");

            // A retry of any trainer's step is answered with the result it had, every contributor listed.
            StepResult again = result(step(f, "trainer-0421", 99));
            assertEquals(results.get(421).toBuilder().setReplayed(true).build(), again);
            assertEquals(TRAINERS, again.getContributionsCount());
            assertEquals(1, f.describe("crowd").getVersion());
        }
    }

    /** Once History has dropped a step's version, its retry gets the stored figures without the contributions. */
    @Test
    void aRetryOfAVersionHistoryDroppedListsNoContributions() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().limits(Limits.DEFAULTS.withHistory(1, 1 << 20)).start()) {
            f.client().register(StandardModel.adamSpec("short-memory"), StandardModel.tensors(StandardModel.initialWeights(3)));
            StepResult a = result(RawStep.openAs(f.async(), "short-memory", "a").all(1, StandardModel.grads(1))
                    .commit(1, ViewKind.VIEW_NONE).halfClose());
            StepResult stillKept = result(RawStep.openAs(f.async(), "short-memory", "a").all(1, StandardModel.grads(9))
                    .commit(1, ViewKind.VIEW_NONE).halfClose());
            assertEquals(a.toBuilder().setReplayed(true).build(), stillKept);
            result(RawStep.openAs(f.async(), "short-memory", "b").all(1, StandardModel.grads(2))
                    .commit(1, ViewKind.VIEW_NONE).halfClose());
            StepResult dropped = result(RawStep.openAs(f.async(), "short-memory", "a").all(1, StandardModel.grads(9))
                    .commit(1, ViewKind.VIEW_NONE).halfClose());
            assertEquals(a.toBuilder().setReplayed(true).clearContributions().build(), dropped);
            assertEquals(2, f.describe("short-memory").getVersion());
        }
    }
}
