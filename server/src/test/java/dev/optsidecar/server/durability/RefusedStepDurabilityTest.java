package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.StandardModel;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * A step refused for a base_version ahead of the model is refused before it is journaled: the
 * journal a crash leaves behind restores to the last acknowledged step, and the same step id is
 * then new. (A base_version of 2^63 at version 17 used to be journaled and applied, then fail.)
 */
class RefusedStepDurabilityTest {
    @TempDir
    Path tmp;

    @Test
    void aStepFromTheFutureIsNeverJournaled() throws Exception {
        Path live = tmp.resolve("live");
        Path image = tmp.resolve("image");
        String model = "future";
        try (SocketServer a = SnapshotResumeTest.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + a.port())) {
            client.register(ModelSpec.newBuilder().setName(model).addTensors(StandardModel.tensor("w", 4))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD")
                            .setHyperparameters(struct("lr", 0.1))).build(),
                    List.of(TensorData.of(new float[4])));
            try (Trainer t = client.trainer(model, "t")) {
                for (int k = 1; k <= 17; k++) {
                    t.step(List.of(TensorData.of(new float[]{k, 1, 1, 1})), List.of(TensorData.of(new float[4])));
                }
            }
            ManagedChannel channel = SidecarFixture.channelTo(a.port());
            try {
                Status refused = RawStep.openAs(dev.optsidecar.proto.v1.OptimizerGrpc.newStub(channel), model, "t")
                        .chunk(100, 0, 0, StandardModel.le(new float[]{1, 1, 1, 1}, 0, 4))
                        .commit(StepCommit.newBuilder().setStepId(100).setBaseVersion(Long.MIN_VALUE)
                                .setView(View.newBuilder().setKind(ViewKind.VIEW_NONE)).build())
                        .awaitClose();
                assertStatus(Status.Code.INVALID_ARGUMENT, refused, "commit.base_version");
            } finally {
                channel.shutdownNow();
            }
            assertEquals(17, client.describe(model).getVersion());
            a.server().persistence().awaitBackgroundSnapshots();
            SnapshotResumeTest.copyTree(live, image); // the disk as a crash leaves it
        }
        try (SocketServer b = SnapshotResumeTest.start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + b.port())) {
            assertEquals(17, client.describe(model).getVersion());
            ManagedChannel channel = SidecarFixture.channelTo(b.port());
            try {
                RawStep again = RawStep.openAs(dev.optsidecar.proto.v1.OptimizerGrpc.newStub(channel), model, "t")
                        .chunk(100, 0, 0, StandardModel.le(new float[]{1, 1, 1, 1}, 0, 4))
                        .commit(100, ViewKind.VIEW_NONE).halfClose();
                assertEquals(Status.Code.OK, again.awaitClose().getCode());
                var result = again.responses.get(again.responses.size() - 1).getResult();
                assertEquals(18, result.getVersion());
                assertEquals(false, result.getReplayed(), "the refused step was never recorded");
            } finally {
                channel.shutdownNow();
            }
        }
    }
}
